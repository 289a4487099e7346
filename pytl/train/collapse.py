"""Stage 1's collapse: the alignment term takes over and the model stops classifying the source, or it maps
the target onto one class.

With too large a λ the alignment term can win against the source cross-entropy partway through stage 1: the
features shrink until both domains match trivially, and the source accuracy, 100% a few epochs before, falls
toward chance and stays there (Deep CORAL at its default λ = 1000 on 2,352-wide pixels, MNIST→MNIST-M: 1.00
at epoch 50, 0.20-0.30 from epoch 60 on, 11.8% on the target; benchmarks/OUTCOMES.md). Nothing fails and the
loss stays finite, so without this warning the user ships a collapsed model, or ranks one, unawares. (What is
left may still score on a target by chance: 86% on the 2-class toy of tests/test_collapse.py.)

The other way an alignment fails in plain sight: the source stays classified, but the target's embeddings are
matched to the source's by sending most of them to one class (Deep CORAL and MME on MNIST→digits pixels seed 1:
71% and 100% of the target in one class, 13.3% and 9.9% accurate, where source-only gives 31.4%). Stage 1's last
epoch counts the classes the model gives the unlabelled target rows it aligns (no extra pass over the data); a
largest share at least halfway from the source's largest class share to 1 is warned about. A target that truly
is that unbalanced (a label shift) warns too, which the message says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from pytl._checks import warn_user

__all__ = ["COLLAPSE_DROP", "LAST_EPOCHS", "ClassCounts", "TrainingWarning", "class_share_message",
           "collapse_message", "warn_if_collapsed"]

#: the fall of the source training accuracy, from its best epoch to the median of the last epochs, that counts
#: as a collapse: the 5 alignments at their default λ on the real pairs' vectors (benchmarks/collapse_check.py,
#: 3 pairs × 2 seeds × 2 regimes) ended within a point of their best in every run but CORAL's collapses (1.00 →
#: 0.20-0.28); a collapse is tens of points
COLLAPSE_DROP = 0.25
#: the last epochs, of which the median: one bad epoch that recovers is not a collapse
LAST_EPOCHS = 3


class TrainingWarning(UserWarning):
    """A training run that finished but went wrong in a way its own numbers show (stage 1's collapse, or most of
    the target given one class)."""


def collapse_message(records: Sequence[dict[str, Any]], what: str, lambda_option: str) -> str | None:
    """Why stage 1's ``records`` (its history) look collapsed, or None: the source training accuracy of the last
    epochs (their median) fell at least ``COLLAPSE_DROP`` below its best epoch's. ``what`` names the run and its
    alignment; ``lambda_option``: compare_strategies' option for the alignment's λ."""
    kept = [(r.get("epoch", k), r["train_acc"]) for k, r in enumerate(records) if r.get("train_acc") is not None]
    if len(kept) <= LAST_EPOCHS:
        return None
    epoch, best = max(kept, key=lambda e: e[1])  # the first best epoch
    last = sorted(a for _, a in kept[-LAST_EPOCHS:])[LAST_EPOCHS // 2]
    if best - last < COLLAPSE_DROP:
        return None
    return (f"{what}: stage 1 collapsed: the source training accuracy fell from {best:.2f} (epoch {epoch}) to "
            f"{last:.2f} (median of the last {LAST_EPOCHS} epochs): the alignment term took over from the "
            "classification, and nothing ties the model's predictions to the classes any more. Do not ship it "
            f"unchecked; {_smaller_lambda(lambda_option)}")


class ClassCounts:
    """The classes of one epoch: the source labels, and the model's predictions of the unlabelled target rows.
    Counted on the batches' device with index_add_ (bincount and .cpu() would wait for the device every step);
    read once, at the end of the stage."""

    def __init__(self, num_classes: int) -> None:
        self.source = torch.zeros(num_classes, dtype=torch.long)
        self.target = torch.zeros(num_classes, dtype=torch.long)

    def add(self, source_labels: Tensor, target_logits: Tensor) -> None:
        # labels and logits were checked against the classes before training
        self.source = self.source.to(source_labels.device).index_add_(0, source_labels,
                                                                      torch.ones_like(source_labels))
        predicted = target_logits.argmax(1)
        self.target = self.target.to(predicted.device).index_add_(0, predicted, torch.ones_like(predicted))


def class_share_message(counts: ClassCounts, source_accuracy: float, what: str, lambda_option: str) -> str | None:
    """Why the target's predicted classes look collapsed onto one, or None: its largest class's share at least
    halfway from the source's largest class share to 1, by a model that classifies the source (its accuracy in
    the last epoch as far above that share: a model still learning the source, a few epochs in, predicts few
    classes everywhere, which is not what this is about)."""
    target, source = counts.target.cpu(), counts.source.cpu()  # the one read of the counts
    if target.sum() == 0 or source.sum() == 0:
        return None
    top = int(target.argmax())
    share = float(target[top] / target.sum())
    source_share = float(source.max() / source.sum())
    halfway = source_share + (1 - source_share) / 2
    if share < halfway or source_accuracy < halfway:
        return None
    return (f"{what}: stage 1 gives {share:.0%} of the unlabelled target rows one class ({top}) in its last epoch, "
            f"where the source's largest class is {source_share:.0%} of its rows: the aligned model maps the target "
            "onto one class. Unless the target really is this unbalanced (then class_weights=\"estimated\" corrects "
            f"the shift), do not ship it unchecked: compare it with source_only, or {_smaller_lambda(lambda_option)}")


def _smaller_lambda(lambda_option: str) -> str:
    """The remedy both messages give: a smaller λ, and where to set it (an "auto" search may have chosen this one)."""
    return (f"use a smaller λ: compare_strategies' {lambda_option} takes a number or a grid of your own (its "
            "default \"auto\" searches a grid around the alignment's default), as does pytl.select_lambda")


def warn_if_collapsed(records: Sequence[dict[str, Any]], counts: ClassCounts | None, what: str,
                      lambda_option: str) -> None:
    """A TrainingWarning where ``collapse_message`` finds one, or else ``class_share_message`` (``counts``: the
    last epoch's, None when it had no alignment term)."""
    message = collapse_message(records, what, lambda_option)
    if message is None and counts is not None and records and records[-1].get("train_acc") is not None:
        message = class_share_message(counts, records[-1]["train_acc"], what, lambda_option)
    if message is not None:
        warn_user(message, TrainingWarning)
