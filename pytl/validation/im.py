"""Information maximization (IM): confident predictions that still use every class.

score = H(p̄) − (1/n) Σ_i H(p_i), p̄ = (1/n) Σ_i p_i, H(p) = −Σ_c p_c log p_c (nats); higher is better.
The mutual information between the target inputs and the predicted label under the empirical input
distribution: Gomes, Krause & Perona, "Discriminative Clustering by Regularized Information
Maximization", NIPS 2010; Shi & Sha, "Information-Theoretical Learning of Discriminative Clusters for
Unsupervised Domain Adaptation", ICML 2012; the training objective of SHOT (Liang, Hu & Feng, ICML 2020).

Against prediction entropy it adds the diversity term H(p̄) (at most log C), so collapsing every target
sample into one class no longer scores best. When it fails: it assumes roughly balanced target
classes (H(p̄) prefers a uniform class mix, and penalises a correct model on an imbalanced target),
and, like entropy, it rewards confident predictions whether or not they are correct.
"""

from __future__ import annotations

from typing import Any

import torch

from pytl.inference import EVAL_BATCH
from pytl.validation import outputs

__all__ = ["information_maximization"]


def information_maximization(model: Any, source_val: Any, target_unlabeled: Any, *,
                             batch_size: int = EVAL_BATCH) -> float:
    """H(mean prediction) − mean H(prediction) on the target (higher is better): see the module docstring.

    Uses only ``target_unlabeled``; ``source_val`` may be None (when given, its sample shape is checked)."""
    _, tgt = outputs.read(model, source_val, target_unlabeled, criterion="im", need_source=False,
                          batch_size=batch_size)
    p_bar = outputs.probabilities(tgt.logits).mean(0)
    return float(torch.special.entr(p_bar).sum()) - float(outputs.entropies(tgt.logits).mean())
