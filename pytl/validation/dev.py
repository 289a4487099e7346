"""Deep embedded validation (DEV): importance-weighted validation with a control variate.

You, Wang, Long & Jordan, "Towards Accurate Model Selection in Deep Unsupervised Domain Adaptation",
ICML 2019. The density ratio w is estimated by a domain classifier on the model's features (its
embedding), and the weighted loss L_i = w_i ℓ_i is corrected by the control variate w, whose
expectation under the source is exactly 1:

    η = −Cov(L, w) / Var(w),   R̂_DEV = mean(L) + η·mean(w) − η,   score = −R̂_DEV  (higher is better),

with the unbiased (n − 1) sample covariance and variance, as in the authors' code. This keeps IWV's
unbiasedness and removes the part of its variance that is explained by the weights' own noise.

Where this follows the paper and where not:
- features: the embedding, ``model.embed(x)`` (``features="input"`` weights the inputs instead).
- held-out density ratio: the paper fits its domain classifier on the *training* source features and
  the target, then weights the validation samples. A criterion here sees only ``source_val``, so by
  default it cross-fits (``folds=2``): each half of source_val is weighted by a classifier trained on
  the other half and all target samples; no sample is weighted by a classifier that saw it.
- classifier: the paper's code picks the weight decay of an MLP by held-out accuracy over a grid; here
  the library's seeded domain classifier ("linear" logistic regression by default, or "mlp") is used
  as it is, so the score is deterministic and cheap.
- ℓ: cross-entropy by default (``loss="zero_one"``: the 0-1 error, the authors' default).
- Var(w) = 0 (every weight equal, e.g. domains the classifier cannot tell apart at all): the control
  variate carries no information and η = 0, so R̂_DEV = mean(L); the paper leaves η undefined there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pytl.inference import EVAL_BATCH
from pytl.validation import ratios

__all__ = ["deep_embedded", "dev_risk"]


def dev_risk(losses: Tensor, weights: Tensor) -> float:
    """R̂_DEV = mean(L) + η·mean(w) − η with L = w·ℓ and η = −Cov(L, w)/Var(w) (unbiased estimates), float64.

    η = 0 when Var(w) is zero up to rounding (below (64·eps·max|w|)²). Needs at least 2 samples."""
    losses, weights = ratios.loss_weight_pair(losses, weights)
    n = losses.numel()
    if n < 2:
        raise ValueError("dev_risk needs at least 2 samples (a covariance and a variance), got 1")
    L = weights * losses
    dw = weights - weights.mean()
    var_w = float((dw * dw).sum()) / (n - 1)
    cov = float(((L - L.mean()) * dw).sum()) / (n - 1)
    tiny = (64 * torch.finfo(torch.float64).eps * float(weights.abs().max())) ** 2
    eta = 0.0 if var_w <= tiny else -cov / var_w
    return float(L.mean()) + eta * float(weights.mean()) - eta


def deep_embedded(model: Any, source_val: Any, target_unlabeled: Any, *, features: str = "embedding",
                  loss: str = "cross_entropy", classifier: str = "linear", folds: int = 2, seed: int = 0,
                  batch_size: int = EVAL_BATCH) -> float:
    """DEV score −R̂_DEV over ``source_val`` (higher is better): see the module docstring.

    model: an nn.Module with ``embed(x)`` (for ``features="embedding"``), evaluated in eval mode without
    gradients, its modes restored after. source_val: labelled (X, y) source samples the model was not
    trained on (arrays, tensors or a DataLoader), at least 2 (and at least ``folds``); target_unlabeled:
    target X (or a DataLoader). classifier, folds, seed: the density-ratio classifier (pytl.validation.ratios)."""
    ell, w = ratios.losses_and_ratios(model, source_val, target_unlabeled, criterion="dev", features=features,
                                      loss=loss, classifier=classifier, folds=folds, seed=seed, batch_size=batch_size)
    return -dev_risk(ell, w)
