"""The "top_ensemble" strategy: the mean of the calibrated class probabilities of the strategies whose
cross-validated estimates are best. It trains nothing: it averages models the comparison already has.

Why: with a few target labels the estimates of strategies a few points apart overlap, so picking one of
them ships a model up to several points below the best (benchmarks/OUTCOMES.md, the vector regime); the
mean of the best few is about as good as the best of them, and often better, whichever it is.

Its estimate is nested, like every other: for each cross-validation fold the members are ranked, and their
temperatures fitted, on the other folds' labels only, and the fold's rows are scored with the mean of those
members' held-out predictions. The shipped members are ranked on every label. ``report.best`` ships it where
this estimate beats that of the other way to choose, picking one strategy, nested the same way (each fold
scored by the strategy with the lowest calibrated cross-entropy on the other folds): the single strategies'
own estimates are not comparable with it, since the lowest of many noisy estimates is biased low.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pytl.experiments.ensemble import EnsembleModel
from pytl.experiments.estimate import Estimate, calibrated_cross_entropy

__all__ = ["TOP_ENSEMBLE", "TOP_ENSEMBLE_SIZE", "TopEnsemble", "add_top_ensemble", "candidates",
           "mean_probabilities", "nested_estimate", "rank_members"]

TOP_ENSEMBLE = "top_ensemble"
#: how many strategies it averages (benchmarks/OUTCOMES.md: 2 to 5 measured, this size did best)
TOP_ENSEMBLE_SIZE = 3
#: never members: the mean of "mmd" and "scratch" (both are candidates themselves) and the ensemble itself
_NOT_MEMBERS = ("ensemble", TOP_ENSEMBLE)


def candidates(available: Collection[str], order: Sequence[str]) -> list[str]:
    """The strategies of ``available`` that may be members, in ``order`` (the comparison's order: it breaks ties)."""
    return [s for s in order if s in available and s not in _NOT_MEMBERS]


def rank_members(log_proba: Mapping[str, Tensor], y: Tensor, order: Sequence[str], size: int,
                 rows: Tensor | None = None) -> tuple[list[str], list[float]]:
    """The ``size`` strategies with the lowest calibrated cross-entropy on ``rows`` of the labels (all: None),
    ties to the earlier in ``order``, and the temperature of each fitted on the same rows."""
    scored = []
    for i, s in enumerate(candidates(log_proba, order)):
        lp, yy = (log_proba[s], y) if rows is None else (log_proba[s][rows], y[rows])
        loss, temperature = calibrated_cross_entropy(lp, yy)
        scored.append((loss, i, s, temperature))
    scored.sort(key=lambda t: (t[0] != t[0], t[0], t[1]))  # NaN last
    top = scored[:size]
    return [t[2] for t in top], [t[3] for t in top]


def mean_probabilities(log_proba: Sequence[Tensor], temperatures: Sequence[float]) -> Tensor:
    """log of the mean of softmax(log p / T) over the members (float64)."""
    probs = torch.stack([torch.softmax(lp.double() / t, dim=1) for lp, t in zip(log_proba, temperatures)]).mean(0)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def nested_estimate(log_proba: Mapping[str, Tensor], y: Tensor, folds: list[Tensor], order: Sequence[str],
                    size: int = TOP_ENSEMBLE_SIZE) -> tuple[Estimate, list[list[str]]]:
    """The ensemble's cross-validated estimate, each fold's members chosen without the fold's labels, from the
    held-out log class probabilities of every strategy (N, C); and each fold's members."""
    out = torch.zeros(y.shape[0], next(iter(log_proba.values())).shape[1], dtype=torch.float64)
    fold_members = []
    for held in folds:
        train = torch.ones(y.shape[0], dtype=torch.bool)
        train[held] = False
        members, temperatures = rank_members(log_proba, y, order, size, rows=train)
        out[held] = mean_probabilities([log_proba[s][held] for s in members], temperatures)
        fold_members.append(members)
    return Estimate.from_predictions(out, y, folds), fold_members


@dataclass(frozen=True)
class TopEnsemble:
    """How "top_ensemble" was built. members and temperatures: the shipped ones (ranked on every label);
    estimate: its nested cross-validated estimate (also ``report.estimate["top_ensemble"]``); pick_one: the
    nested estimate of choosing one strategy instead; fold_members: each fold's members."""

    members: tuple[str, ...]
    temperatures: tuple[float, ...]
    estimate: Estimate
    pick_one: Estimate
    fold_members: tuple[tuple[str, ...], ...]

    @property
    def better(self) -> bool:
        """Whether averaging measured better than picking one (lower nested calibrated cross-entropy)."""
        return self.estimate.loss < self.pick_one.loss


def add_top_ensemble(estimate: MutableMapping[str, Estimate], y: Tensor, folds: list[Tensor],
                     models: MutableMapping[str, nn.Module], seconds: MutableMapping[str, float],
                     order: Sequence[str], size: int = TOP_ENSEMBLE_SIZE) -> TopEnsemble:
    """Adds "top_ensemble" to a comparison's estimates (nested), models (the members ranked on every label,
    as trained on every label) and seconds (its members' together)."""
    log_proba = {s: e.log_proba for s, e in estimate.items() if e.log_proba is not None and s != TOP_ENSEMBLE}
    nested, fold_members = nested_estimate(log_proba, y, folds, order, size)
    pick_one, _ = nested_estimate(log_proba, y, folds, order, 1)
    members, temperatures = rank_members(log_proba, y, order, size)
    estimate[TOP_ENSEMBLE] = nested
    models[TOP_ENSEMBLE] = EnsembleModel([models[s] for s in members], temperatures)
    seconds[TOP_ENSEMBLE] = sum(seconds[s] for s in members)
    return TopEnsemble(tuple(members), tuple(temperatures), nested, pick_one, tuple(map(tuple, fold_members)))
