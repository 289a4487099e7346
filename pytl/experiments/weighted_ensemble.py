"""The "weighted_ensemble" strategy: the other strategies' temperature-calibrated class probabilities, each
weighted by how well it predicted the held-out target labels. It trains nothing: it averages models the
comparison already has.

The weights are pseudo-Bayesian model averaging (Yao et al. 2018, "Using stacking to average Bayesian
predictive distributions"): w_s ∝ exp(Σ_i log p_s(y_i)), the held-out log-likelihood of the labels under
strategy s after its temperature (so w_s ∝ exp(−n · calibrated cross-entropy_s)). With 50 labels a strategy
0.1 nats per label behind the best weighs e^−5 ≈ 0.7% of it: where one strategy is clearly better the
ensemble is that strategy, and where several are within noise of each other it averages them. That is the
case picking one gets wrong: strategies a few points apart cannot be told apart by 50 labels, and picking one
shipped 2-6 points below the best on real pairs (benchmarks/OUTCOMES.md, the vector regime), where averaging
equal thirds of the best three lost up to 6 points when one strategy was clearly ahead.

Its estimate is nested, like every other: for each cross-validation fold the weights and temperatures come
from the other folds' labels only, and the fold's rows are scored with that mixture of the held-out
predictions. The shipped weights come from every label. ``report.best`` ships it where this estimate beats
that of the other way to choose, picking one strategy, nested the same way (each fold scored by the strategy
with the lowest calibrated cross-entropy on the other folds): the single strategies' own estimates are not
comparable with it, since the lowest of many noisy estimates is biased low.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pytl.experiments.ensemble import EnsembleModel
from pytl.experiments.estimate import Estimate, calibrated_cross_entropy

__all__ = ["MIN_WEIGHT", "WEIGHTED_ENSEMBLE", "WeightedEnsemble", "add_weighted_ensemble", "candidates",
           "mixture", "nested_estimate", "weigh_members"]

WEIGHTED_ENSEMBLE = "weighted_ensemble"
#: members below this weight are dropped (and the rest renormalised): they can only move a prediction whose two
#: top classes are within 0.001 of each other, and the shipped model would carry them for little
MIN_WEIGHT = 1e-3
#: never members: the mean of "mmd" and "scratch" (both are candidates themselves) and the ensemble itself
_NOT_MEMBERS = ("ensemble", WEIGHTED_ENSEMBLE)


def candidates(available: Collection[str], order: Sequence[str]) -> list[str]:
    """The strategies of ``available`` that may be members, in ``order`` (the comparison's order)."""
    return [s for s in order if s in available and s not in _NOT_MEMBERS]


def weigh_members(log_proba: Mapping[str, Tensor], y: Tensor, order: Sequence[str], rows: Tensor | None = None,
                  pick_one: bool = False) -> tuple[list[str], list[float], list[float]]:
    """Members, weights and temperatures from ``rows`` of the labels (all: None): each candidate's temperature
    and calibrated cross-entropy fitted there, weights ∝ exp(−rows · cross-entropy), members below MIN_WEIGHT
    dropped. ``pick_one``: the lowest cross-entropy alone (ties to the earlier in ``order``), weight 1."""
    names, losses, temperatures = [], [], []
    for s in candidates(log_proba, order):
        lp, yy = (log_proba[s], y) if rows is None else (log_proba[s][rows], y[rows])
        loss, temperature = calibrated_cross_entropy(lp, yy)
        if loss == loss:  # a NaN prediction (a diverged run) is no member
            names.append(s)
            losses.append(loss)
            temperatures.append(temperature)
    if not names:
        raise ValueError("no strategy has finite held-out predictions to weigh")
    n = int(y.shape[0] if rows is None else rows.sum())
    if pick_one:
        k = min(range(len(names)), key=lambda i: (losses[i], i))
        return [names[k]], [1.0], [temperatures[k]]
    w = torch.softmax(-n * torch.tensor(losses, dtype=torch.float64), 0)
    keep = [i for i in range(len(names)) if w[i] >= MIN_WEIGHT]
    total = float(w[keep].sum())
    return [names[i] for i in keep], [float(w[i]) / total for i in keep], [temperatures[i] for i in keep]


def mixture(log_proba: Sequence[Tensor], weights: Sequence[float], temperatures: Sequence[float]) -> Tensor:
    """log of Σ_s w_s softmax(log p_s / T_s) (float64)."""
    probs = sum(w * torch.softmax(lp.double() / t, dim=1) for lp, w, t in zip(log_proba, weights, temperatures))
    return probs.clamp_min(torch.finfo(torch.float64).tiny).log()


def nested_estimate(log_proba: Mapping[str, Tensor], y: Tensor, folds: list[Tensor], order: Sequence[str],
                    pick_one: bool = False) -> tuple[Estimate, list[dict[str, float]]]:
    """The cross-validated estimate of the weighted ensemble (or of picking one strategy), each fold's
    weights chosen without the fold's labels, from the held-out log class probabilities of every strategy
    (N, C); and each fold's weights."""
    out = torch.zeros(y.shape[0], next(iter(log_proba.values())).shape[1], dtype=torch.float64)
    fold_weights = []
    for held in folds:
        train = torch.ones(y.shape[0], dtype=torch.bool)
        train[held] = False
        members, weights, temperatures = weigh_members(log_proba, y, order, rows=train, pick_one=pick_one)
        out[held] = mixture([log_proba[s][held] for s in members], weights, temperatures)
        fold_weights.append(dict(zip(members, weights)))
    return Estimate.from_predictions(out, y, folds), fold_weights


@dataclass(frozen=True)
class WeightedEnsemble:
    """How "weighted_ensemble" was built. members, weights, temperatures: the shipped ones (from every label);
    estimate: its nested cross-validated estimate (also ``report.estimate["weighted_ensemble"]``); pick_one:
    the nested estimate of choosing one strategy instead; fold_weights: each fold's members and weights."""

    members: tuple[str, ...]
    weights: tuple[float, ...]
    temperatures: tuple[float, ...]
    estimate: Estimate
    pick_one: Estimate
    fold_weights: tuple[dict[str, float], ...]

    @property
    def better(self) -> bool:
        """Whether averaging measured better than picking one (lower nested calibrated cross-entropy)."""
        return self.estimate.loss < self.pick_one.loss

    def describe(self) -> str:
        """The members and their weights, heaviest first."""
        return ", ".join(f"{s} {w:.2f}" for w, s in sorted(zip(self.weights, self.members), key=lambda t: (-t[0], t[1])))


def add_weighted_ensemble(estimate: MutableMapping[str, Estimate], y: Tensor, folds: list[Tensor],
                          models: MutableMapping[str, nn.Module], seconds: MutableMapping[str, float],
                          order: Sequence[str]) -> WeightedEnsemble:
    """Adds "weighted_ensemble" to a comparison's estimates (nested), models (its members as trained on every
    label, weighted from every label) and seconds (its members' together)."""
    log_proba = {s: e.log_proba for s, e in estimate.items() if e.log_proba is not None}
    nested, fold_weights = nested_estimate(log_proba, y, folds, order)
    pick_one, _ = nested_estimate(log_proba, y, folds, order, pick_one=True)
    members, weights, temperatures = weigh_members(log_proba, y, order)
    estimate[WEIGHTED_ENSEMBLE] = nested
    models[WEIGHTED_ENSEMBLE] = EnsembleModel([models[s] for s in members], temperatures, weights)
    seconds[WEIGHTED_ENSEMBLE] = sum(seconds[s] for s in members)
    return WeightedEnsemble(tuple(members), tuple(weights), tuple(temperatures), nested, pick_one,
                            tuple(fold_weights))
