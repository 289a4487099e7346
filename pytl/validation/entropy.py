"""Prediction entropy: how confident the model is on the target, as a score.

score = −(1/n) Σ_i H(p_i), H(p) = −Σ_c p_c log p_c (nats), p_i the softmax output on target sample i;
higher (more confident) is better. The entropy-minimisation principle of Grandvalet & Bengio (NIPS
2004), used as a validation criterion by Morerio, Cavazza & Murino (ICLR 2018) and as the baseline of
Saito et al. (ICCV 2021).

When it fails: it rewards over-confidence, correct or not. A model that predicts one class for every
target sample with probability 1 gets the best possible score (0) while it may be no better than
chance; alignment that distorts the features can make predictions sharper and worse at once.
"""

from __future__ import annotations

from typing import Any

from pytl.inference import EVAL_BATCH
from pytl.validation import outputs

__all__ = ["prediction_entropy"]


def prediction_entropy(model: Any, source_val: Any, target_unlabeled: Any, *, batch_size: int = EVAL_BATCH) -> float:
    """−mean entropy of the model's target predictions (higher is better): see the module docstring.

    Uses only ``target_unlabeled``; ``source_val`` may be None (when given, its sample shape is checked)."""
    _, tgt = outputs.read(model, source_val, target_unlabeled, criterion="entropy", need_source=False,
                          batch_size=batch_size)
    return -float(outputs.entropies(tgt.logits).mean())
