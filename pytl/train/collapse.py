"""Stage 1's collapse: the alignment term takes over and the model stops classifying the source.

With too large a λ the alignment term can win against the source cross-entropy partway through stage 1: the
features shrink until both domains match trivially, and the source accuracy, 100% a few epochs before, falls
toward chance and stays there (Deep CORAL at its default λ = 1000 on 2,352-wide pixels, MNIST→MNIST-M: 1.00
at epoch 50, 0.20-0.30 from epoch 60 on, 11.8% on the target; benchmarks/OUTCOMES.md). Nothing fails and the
loss stays finite, so without this warning the user ships a collapsed model, or ranks one, unawares. (What is
left may still score on a target by chance: 86% on the 2-class toy of tests/test_collapse.py.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytl._checks import warn_user

__all__ = ["COLLAPSE_DROP", "TrainingWarning", "collapse_message", "warn_if_collapsed"]

#: the fall of the source training accuracy, from its best epoch to the median of the last epochs, that counts
#: as a collapse: epoch-to-epoch noise with a working alignment is a few points (every alignment's history in
#: the saved comparisons); a collapse is tens of points
COLLAPSE_DROP = 0.25
#: the last epochs, of which the median: one bad epoch that recovers is not a collapse
LAST_EPOCHS = 3


class TrainingWarning(UserWarning):
    """A training run that finished but went wrong in a way its numbers show (stage 1's collapse)."""


def collapse_message(records: Sequence[dict[str, Any]], what: str, lambda_option: str) -> str | None:
    """Why stage 1's ``records`` (its history) look collapsed, or None: the source training accuracy of the last
    epochs (their median) fell at least ``COLLAPSE_DROP`` below its best epoch's. ``what`` names the run and its
    alignment; ``lambda_option``: compare_strategies' option for the alignment's λ."""
    acc = [r["train_acc"] for r in records if r.get("train_acc") is not None]
    if len(acc) <= LAST_EPOCHS:
        return None
    best = max(range(len(acc)), key=acc.__getitem__)
    last = sorted(acc[-LAST_EPOCHS:])[LAST_EPOCHS // 2]
    if acc[best] - last < COLLAPSE_DROP:
        return None
    return (f"{what}: stage 1 collapsed: the source training accuracy fell from {acc[best]:.2f} (epoch {best}) to "
            f"{last:.2f} (median of the last {LAST_EPOCHS} epochs): the alignment term took over from the "
            "classification, and nothing ties the model's predictions to the classes any more. Do not ship it "
            "unchecked; use a smaller λ, or let the data choose it "
            f"({lambda_option}=\"auto\" in compare_strategies, or pytl.select_lambda)")


def warn_if_collapsed(records: Sequence[dict[str, Any]], what: str, lambda_option: str) -> None:
    """A TrainingWarning where ``collapse_message`` finds one."""
    message = collapse_message(records, what, lambda_option)
    if message is not None:
        warn_user(message, TrainingWarning)
