"""Density ratios w(x) = p_T(x) / p_S(x) from a domain classifier, and the (loss, weight) pairs of IWV and DEV.

A probabilistic classifier that tells source (label 0) from target (label 1) samples estimates
P(T | x) / P(S | x) = (n_t / n_s) · p_T(x) / p_S(x) when it is trained on n_s source and n_t target
samples (Bayes' rule with the class priors n_s/(n_s+n_t), n_t/(n_s+n_t)), so

    w(x) = (n_s / n_t) · P(T | x) / P(S | x) = (n_s / n_t) · exp(logit(x)),

computed from the logit itself (never from a division of two probabilities that may underflow). This
is the estimator of Bickel et al. (2007) that DEV (You et al., ICML 2019) uses on deep features. The
classifier is the one the proxy A-distance trains (pytl.diagnostics.domain_classifier: "linear",
L2-regularised logistic regression fitted by L-BFGS, or "mlp", one hidden layer of 64), on features
standardised with the statistics of its training rows, seeded: the same inputs give the same ratios.

``folds`` = k ≥ 2 cross-fits: the source rows are dealt into k seeded folds, and the ratio of a row
comes from a classifier trained on the other k − 1 folds and every target row, so no weight is
computed by a classifier that saw its own sample (DEV trains its density-ratio model on samples other
than the validation samples it weights). ``folds`` = 1 fits one classifier on everything (in-sample),
as density-ratio estimation for IWV usually does.

``density_ratios`` is the one function that computes w: IWV and DEV call it through this module, so a
test may replace it (``monkeypatch.setattr(pytl.validation.ratios, "density_ratios", ...)``) to feed
known ratios to both criteria and check their formulas exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pytl._samples import check_same_features
from pytl._checks import check_choice, check_int
from pytl.diagnostics.domain_classifier import CLASSIFIERS, train_domain_classifier
from pytl.validation import outputs
from pytl.validation.outputs import LOSSES, per_sample_loss

__all__ = ["density_ratios", "loss_weight_pair", "losses_and_ratios"]


def density_ratios(source: Tensor, target: Tensor, *, classifier: str = "linear", folds: int = 1,
                   seed: int = 0) -> Tensor:
    """w(x_i) = p_T(x_i) / p_S(x_i) for every source row, float64 (n_s,), from a seeded domain classifier.

    source (n_s, d), target (n_t, d): features (any floating dtype). classifier: "linear" or "mlp".
    folds: 1 (one classifier on all rows, in-sample ratios) or k ≥ 2 (cross-fitted, out-of-sample)."""
    check_choice(classifier, "classifier", CLASSIFIERS)
    folds = check_int(folds, "folds", 1)
    seed = check_int(seed, "seed", 0)
    xs, xt = source.detach().cpu().double(), target.detach().cpu().double()
    check_same_features(xs, xt, ("source features", "target features"))
    n_s, n_t = xs.shape[0], xt.shape[0]
    if n_s < max(2, folds) or n_t < 2:
        raise ValueError(f"the density ratio needs at least 2 source and 2 target samples (and at least folds={folds} "
                         f"source samples), got {n_s} source and {n_t} target samples")
    fold_of = torch.empty(n_s, dtype=torch.int64)
    fold_of[torch.randperm(n_s, generator=torch.Generator().manual_seed(seed))] = torch.arange(n_s) % folds
    log_w = torch.empty(n_s, dtype=torch.float64)
    for f in range(folds):
        held = fold_of == f if folds > 1 else torch.ones(n_s, dtype=torch.bool)
        fit = ~held if folds > 1 else held
        log_w[held] = _log_ratios(xs[fit], xt, xs[held], classifier, seed)
    return log_w.exp()


def _log_ratios(fit_source: Tensor, target: Tensor, query: Tensor, classifier: str, seed: int) -> Tensor:
    """log w at ``query`` from a classifier trained on ``fit_source`` (label 0) against ``target`` (label 1)."""
    X = torch.cat([fit_source, target])
    labels = torch.cat([torch.zeros(fit_source.shape[0]), torch.ones(target.shape[0])]).double()
    # Standardised with the statistics of every row, the query rows included (no domain label is used):
    # a feature that is rare on the training rows but large at a query row is then scaled by its real
    # spread, not blown up by a near-zero one into an input far outside what the classifier was fitted on.
    pooled = torch.cat([X, query]) if query is not fit_source else X
    mean, std = pooled.mean(0), pooled.std(0).nan_to_num(0.0)
    # Features constant on the training rows (a ReLU unit that never fires) say nothing about the domain;
    # standardised by a ~0 std they would turn any other value at a query row into an enormous input.
    keep = std > 1e-12 * max(1.0, float(mean.abs().max()))
    if not bool(keep.any()):  # nothing varies: the classifier can only learn the prior, w = 1 everywhere
        return torch.zeros(query.shape[0], dtype=torch.float64)
    mean, std = mean[keep], std[keep]
    model = train_domain_classifier((X[:, keep] - mean) / std, labels, classifier, seed)
    with torch.no_grad():
        logit = model((query[:, keep] - mean) / std)[:, 0]
    # the prior correction n_s / n_t, with the counts the classifier was trained on
    return logit + torch.log(torch.tensor(fit_source.shape[0] / target.shape[0], dtype=torch.float64))


def losses_and_ratios(model: Any, source_val: Any, target_unlabeled: Any, *, criterion: str, features: str,
                      loss: str, classifier: str, folds: int, seed: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """The per-sample losses ℓ_i of the model on ``source_val`` and the density ratios w_i of those samples
    (float64, (n,) each): what IWV and DEV combine. Every argument is checked before the model runs."""
    check_choice(loss, "loss", LOSSES)
    check_choice(classifier, "classifier", CLASSIFIERS)
    check_int(folds, "folds", 1)
    check_int(seed, "seed", 0)
    src, tgt = outputs.read(model, source_val, target_unlabeled, criterion=criterion, need_source=True,
                            features=features, batch_size=batch_size)
    assert src is not None and src.features is not None and tgt.features is not None
    w = density_ratios(src.features, tgt.features, classifier=classifier, folds=folds, seed=seed)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("the density ratios overflowed (the domain classifier separates the domains with logits "
                         "beyond ±700): the domains do not overlap in this feature space")
    return per_sample_loss(src, loss), w


def loss_weight_pair(losses: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample losses and weights as two float64 vectors of one length (the inputs of iwv_risk, dev_risk)."""
    if not isinstance(losses, Tensor) or not isinstance(weights, Tensor):
        raise TypeError(f"losses and weights must be tensors, got {type(losses).__name__} and {type(weights).__name__}")
    losses, weights = losses.detach().double().reshape(-1), weights.detach().double().reshape(-1)
    if losses.shape != weights.shape or losses.numel() == 0:
        raise ValueError(f"losses and weights must be two non-empty vectors of one length, got {tuple(losses.shape)} "
                         f"and {tuple(weights.shape)}")
    return losses, weights
