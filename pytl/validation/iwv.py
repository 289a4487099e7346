"""Importance-weighted validation (IWV): the source validation risk, reweighted to the target domain.

Sugiyama, Krauledat & Müller, "Covariate shift adaptation by importance weighted cross validation",
JMLR 8 (2007). Under covariate shift (p(y | x) shared, p(x) moved) the target risk is a source
expectation, R_T = E_S[w(x) ℓ(x, y)] with w = p_T / p_S, so its estimate on n labelled source
validation samples is

    R̂_IWV = (1/n) Σ_i w_i ℓ_i,        score = −R̂_IWV  (higher is better).

w comes from a seeded domain classifier (pytl.validation.ratios); by default on the model's embedding
(``features="embedding"``, as DEV does; Sugiyama et al. weight the inputs, ``features="input"``), in
sample (``folds=1``). ℓ is the model's per-sample cross-entropy (``loss="cross_entropy"``) or its 0-1
error (``loss="zero_one"``). Unbiased when w is exact, but its variance grows with the spread of w:
under a strong shift a few source samples that look like the target carry most of the weight.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pytl.inference import EVAL_BATCH
from pytl.validation import ratios

__all__ = ["importance_weighted", "iwv_risk"]


def iwv_risk(losses: Tensor, weights: Tensor) -> float:
    """R̂_IWV = mean_i w_i ℓ_i, in float64 (losses ℓ and density ratios w: (n,) each)."""
    losses, weights = ratios.loss_weight_pair(losses, weights)
    return float((weights * losses).mean())


def importance_weighted(model: Any, source_val: Any, target_unlabeled: Any, *, features: str = "embedding",
                        loss: str = "cross_entropy", classifier: str = "linear", folds: int = 1, seed: int = 0,
                        batch_size: int = EVAL_BATCH) -> float:
    """IWV score −mean_i w_i ℓ_i over ``source_val`` (higher is better): see the module docstring.

    model: an nn.Module (with ``embed(x)`` for ``features="embedding"``), evaluated in eval mode without
    gradients, its modes restored after. source_val: labelled (X, y) source samples the model was not
    trained on (arrays, tensors or a DataLoader); target_unlabeled: target X (or a DataLoader).
    classifier ("linear" | "mlp"), folds, seed: the density-ratio classifier (pytl.validation.ratios)."""
    ell, w = ratios.losses_and_ratios(model, source_val, target_unlabeled, criterion="iwv", features=features,
                                      loss=loss, classifier=classifier, folds=folds, seed=seed, batch_size=batch_size)
    return -iwv_risk(ell, w)

