"""The "weighted_ensemble" strategy: the other strategies' temperature-calibrated class probabilities, each
weighted by how well it predicted the held-out target labels. It trains nothing: it averages models the
comparison already has.

The weights are bagged stacking of predictive distributions. Stacking (Yao et al. 2018, "Using stacking to average
Bayesian predictive distributions") takes the weights on the simplex that maximise the held-out log-likelihood of
the mixture, Σ_i log Σ_s w_s p_s(y_i), where p_s(y_i) is strategy s's probability of label i after its temperature.
Where one strategy is clearly better the mixture is nearly that strategy; where several predict different labels
right, the mixture takes the ones that add to each other, not only the one with the best likelihood alone. Bagging
(Breiman 1996) averages those weights over 200 Bayesian-bootstrap reweightings of the labels (Rubin 1981): with 50
labels one fit's weights swing with a few rows, and the average spreads the weight over the strategies that predict
well under most reweightings, not only under the labels the team happened to get. Measured on 57 real runs
(benchmarks/OUTCOMES.md, tenth and eleventh sessions): stacking replaced pseudo-Bayesian model averaging (w_s ∝
exp(Σ_i log p_s(y_i)), the same paper's first rule), which gave nearly all the weight to the single best-scoring
strategy and so inherited picking one's noise, and bagging moved the mean gap to the test set's best from −1.0 to
−0.2 points on nine 28×28 pixel runs (equal within noise elsewhere). Picking one alone was within 2 points of the
test set's best in 34 of the 57 runs, the bagged ensemble in 46.

Its estimate is nested, like every other: for each cross-validation fold the weights and temperatures come
from the other folds' labels only, and the fold's rows are scored with that mixture of the held-out
predictions. The shipped weights come from every label. Beside it, the nested estimate of the other way to
choose, picking one strategy (each fold scored by the strategy with the lowest calibrated cross-entropy on the
other folds; ``WeightedEnsemble.one`` is that rule's pick from every label): the single strategies' own
estimates are not comparable with the ensemble's, since the lowest of many noisy estimates is biased low.
``report.best`` ships the ensemble whichever of the two measured better: until the eleventh session it shipped
``one`` where picking one's nested estimate won, and on 57 real runs that comparison did not tell when the
single pick would be more accurate on the test set (shipping the ensemble always: 46 runs within 2 points
against 43; with 2 or 3 labels per class it was ahead of or level with the guarded rule in every image and
embedding regime).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from pytl.experiments.ensemble import EnsembleModel
from pytl.experiments.estimate import Estimate, calibrated_cross_entropy
from pytl.experiments.folds import training_rows
from pytl.train.threads import using_threads

__all__ = ["Fit", "MIN_WEIGHT", "WEIGHTED_ENSEMBLE", "WeightedEnsemble", "add_weighted_ensemble",
           "bagged_stacking_weights", "bootstrap_row_weights", "candidates", "fits", "keep_members", "mixture",
           "nested_estimate", "stacking_weights", "weigh", "weigh_members"]

WEIGHTED_ENSEMBLE = "weighted_ensemble"
#: members below this weight are dropped (and the rest renormalised): they can only move a prediction whose two
#: top classes are within 0.001 of each other, and the shipped model would carry them for little
MIN_WEIGHT = 1e-3
#: stacking's solver stops once its weights are certified this close to the best mean log-likelihood (nats per
#: label; the duality gap below), or after STACKING_MAX_STEPS Newton steps
STACKING_TOLERANCE = 1e-9
STACKING_MAX_STEPS = 500
#: bagged stacking: Bayesian-bootstrap draws of the labels whose stacking weights are averaged, and their seed
BAG_DRAWS = 200
BAG_SEED = 0
#: never members: the mean of "mmd" and "scratch" (both are candidates themselves) and the ensemble itself
_NOT_MEMBERS = ("ensemble", WEIGHTED_ENSEMBLE)


def candidates(available: Collection[str], order: Sequence[str]) -> list[str]:
    """The strategies of ``available`` that may be members, in ``order`` (the comparison's order)."""
    return [s for s in order if s in available and s not in _NOT_MEMBERS]


class Fit(NamedTuple):
    """One candidate fitted on some labels: its calibrated cross-entropy and temperature there, and each of
    those labels' probability under it after that temperature (what stacking weighs)."""

    strategy: str
    loss: float
    temperature: float
    label_proba: Tensor


def fits(log_proba: Mapping[str, Tensor], y: Tensor, order: Sequence[str], rows: Tensor | None) -> list[Fit]:
    """Every candidate fitted on ``rows`` of the labels (all: None), in ``order``; a NaN prediction (a diverged
    run) is no member."""
    out = []
    for s in candidates(log_proba, order):
        lp, yy = (log_proba[s], y) if rows is None else (log_proba[s][rows], y[rows])
        loss, temperature = calibrated_cross_entropy(lp, yy)
        if loss == loss:
            out.append(Fit(s, loss, temperature,
                           torch.softmax(lp.double() / temperature, 1).gather(1, yy[:, None])[:, 0]))
    if not out:
        raise ValueError("no strategy has finite held-out predictions to weigh")
    return out


def stacking_weights(label_proba: Tensor, row_weights: Tensor | None = None) -> Tensor:
    """The weights w on the simplex that maximise the weighted mean log-likelihood f(w) = Σ_i a_i log Σ_s w_s P[i, s]
    of a mixture, P (n labels, S members): each label's probability under each member (float64). row_weights:
    a (n,) or (B, n) batch of row weights a, each summing to 1 (None: 1/n each); the weights come back (S,) or
    (B, S), one problem per row of the batch.

    f is concave, and for any w on the simplex, with g = ∇f(w) (so Σ_s w_s g_s = 1), concavity bounds the distance
    to the optimum by max_s g_s − 1: the duality gap, the certificate every problem must meet (STACKING_TOLERANCE)
    before it stops. The solver is a log-barrier interior-point method (maximise f + μ Σ_s log w_s on Σ_s w_s = 1 by
    damped Newton steps, μ divided by 10 once a step's Newton decrement is under μ): a few dozen steps whatever
    the problem, where EM, the textbook update for mixing proportions, took up to 20,000 on a few of the
    Bayesian-bootstrap draws (its tail is linear with a rate near 1 when a member is nearly useless)."""
    n = label_proba.shape[0]
    if row_weights is not None and (row_weights.dim() not in (1, 2) or row_weights.shape[-1] != n
                                    or bool((row_weights < 0).any())):
        raise ValueError(f"row_weights must be (n,) or (B, n) non-negative weights with n = {n}, label_proba's "
                         f"rows; got shape {tuple(row_weights.shape)}")
    with using_threads(1):  # problems this small: on a busy 2-core machine two threads took 10x as long
        return _interior_point(label_proba, row_weights)


def _interior_point(label_proba: Tensor, row_weights: Tensor | None) -> Tensor:
    """stacking_weights' solver (see there)."""
    p = label_proba.double().clamp_min(torch.finfo(torch.float64).tiny)
    a = torch.full((p.shape[0],), 1.0 / p.shape[0], dtype=torch.float64) if row_weights is None else row_weights
    batch = a.double().reshape(-1, p.shape[0])
    w = torch.full((batch.shape[0], p.shape[1]), 1.0 / p.shape[1], dtype=torch.float64)
    mu = torch.full((batch.shape[0], 1), 0.1 / p.shape[1], dtype=torch.float64)
    for _ in range(STACKING_MAX_STEPS):
        q = w @ p.T
        g = (batch / q) @ p
        todo = g.max(1).values - 1.0 > STACKING_TOLERANCE
        if not bool(todo.any()):
            break
        grad = g + mu / w
        hess = -((batch / q**2)[:, :, None] * p).transpose(1, 2) @ p - torch.diag_embed(mu / w**2)
        u, v = torch.linalg.solve(hess, torch.stack([grad, torch.ones_like(grad)], 2)).unbind(2)
        step = -(u - (u.sum(1, keepdim=True) / v.sum(1, keepdim=True)) * v)  # Newton's step on Σ_s w_s = 1
        decrement = (grad * step).sum(1, keepdim=True)  # how much the step should gain: > 0 but for rounding
        moving = todo[:, None] & (decrement > 0)
        shrink = torch.where(step < 0, -w / step, torch.inf).min(1, keepdim=True).values
        t = torch.clamp(0.99 * shrink, max=1.0)
        before = _barrier_objective(w, p, batch, mu)
        for _ in range(60):  # backtrack until the step gains (Armijo), per problem
            gained = (_barrier_objective(w + t * step, p, batch, mu) >= before + 0.25 * t * decrement) | ~moving
            if bool(gained.all()):
                break
            t = torch.where(gained, t, t / 2)
        w = torch.where(moving, w + t * step, w)
        mu = torch.where(decrement < mu, mu / 10, mu)  # centred enough: on towards the boundary
    w = w / w.sum(1, keepdim=True)  # only rounding moves the sums off 1
    return w if a.dim() == 2 else w[0]


def _barrier_objective(w: Tensor, p: Tensor, a: Tensor, mu: Tensor) -> Tensor:
    """f(w) + μ Σ_s log w_s per problem (B, 1); −inf outside the simplex's interior."""
    inside = (w > 0).all(1, keepdim=True)
    positive = w.clamp_min(torch.finfo(torch.float64).tiny)
    value = (a * (positive @ p.T).log()).sum(1, keepdim=True) + mu * positive.log().sum(1, keepdim=True)
    return torch.where(inside, value, -torch.inf)


def bootstrap_row_weights(n: int, draws: int = BAG_DRAWS, seed: int = BAG_SEED) -> Tensor:
    """``draws`` Bayesian-bootstrap reweightings of n rows (Rubin 1981): Dirichlet(1, ..., 1) row weights, (draws, n),
    from their own generator (the same for a given seed, whatever the global one)."""
    e = -torch.rand(draws, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).log()
    return e / e.sum(1, keepdim=True)


def bagged_stacking_weights(label_proba: Tensor, draws: int = BAG_DRAWS, seed: int = BAG_SEED) -> Tensor:
    """The stacking weights averaged over ``draws`` Bayesian-bootstrap reweightings of the labels (bagging the
    stacking, Breiman 1996; see the module's docstring). (S,) weights on the simplex."""
    return stacking_weights(label_proba, bootstrap_row_weights(label_proba.shape[0], draws, seed)).mean(0)


def keep_members(fitted: list[Fit], w: Tensor) -> tuple[list[str], list[float], list[float]]:
    """The candidates of ``fitted`` whose weight in ``w`` is at least MIN_WEIGHT, their weights renormalised, and
    their temperatures."""
    keep = [i for i in range(len(fitted)) if w[i] >= MIN_WEIGHT]
    total = float(w[keep].sum())
    return ([fitted[i].strategy for i in keep], [float(w[i]) / total for i in keep],
            [fitted[i].temperature for i in keep])


def _choose(fitted: list[Fit], pick_one: bool) -> tuple[list[str], list[float], list[float]]:
    """Members, weights and temperatures from ``fitted`` (see weigh_members)."""
    if pick_one:
        f = min(fitted, key=lambda f: f.loss)  # ties to the earlier in order
        return [f.strategy], [1.0], [f.temperature]
    return keep_members(fitted, bagged_stacking_weights(torch.stack([f.label_proba for f in fitted], 1)))


def weigh_members(log_proba: Mapping[str, Tensor], y: Tensor, order: Sequence[str], rows: Tensor | None = None,
                  pick_one: bool = False) -> tuple[list[str], list[float], list[float]]:
    """Members, weights and temperatures from ``rows`` of the labels (all: None): each candidate's temperature
    fitted there, the bagged stacking weights of the calibrated candidates (``bagged_stacking_weights``), members below
    MIN_WEIGHT dropped and the rest renormalised. ``pick_one``: the lowest calibrated cross-entropy alone (ties to
    the earlier in ``order``), weight 1."""
    return _choose(fits(log_proba, y, order, rows), pick_one)


def mixture(log_proba: Sequence[Tensor], weights: Sequence[float], temperatures: Sequence[float]) -> Tensor:
    """log of Σ_s w_s softmax(log p_s / T_s) (float64)."""
    probs = sum(w * torch.softmax(lp.double() / t, dim=1) for lp, w, t in zip(log_proba, weights, temperatures))
    return probs.clamp_min(torch.finfo(torch.float64).tiny).log()


def _nested(log_proba: Mapping[str, Tensor], y: Tensor, folds: list[Tensor], order: Sequence[str]
            ) -> tuple[Estimate, list[dict[str, float]], Estimate]:
    """Both nested estimates from one fit of every candidate per fold: the weighted ensemble's (and each
    fold's weights) and picking one strategy's."""
    shape = (y.shape[0], next(iter(log_proba.values())).shape[1])
    out = {False: torch.zeros(shape, dtype=torch.float64), True: torch.zeros(shape, dtype=torch.float64)}
    fold_weights = []
    for held in folds:
        train = training_rows(y.shape[0], held)
        fitted = fits(log_proba, y, order, train)
        for pick_one, o in out.items():
            members, weights, temperatures = _choose(fitted, pick_one)
            o[held] = mixture([log_proba[s][held] for s in members], weights, temperatures)
            if not pick_one:
                fold_weights.append(dict(zip(members, weights)))
    return Estimate.from_predictions(out[False], y, folds), fold_weights, Estimate.from_predictions(out[True], y, folds)


def nested_estimate(log_proba: Mapping[str, Tensor], y: Tensor, folds: list[Tensor], order: Sequence[str],
                    pick_one: bool = False) -> tuple[Estimate, list[dict[str, float]]]:
    """The cross-validated estimate of the weighted ensemble (or of picking one strategy), each fold's
    weights chosen without the fold's labels, from the held-out log class probabilities of every strategy
    (N, C); and each fold's weights (of the ensemble)."""
    ensemble, fold_weights, one = _nested(log_proba, y, folds, order)
    return (one if pick_one else ensemble), fold_weights


@dataclass(frozen=True)
class WeightedEnsemble:
    """How "weighted_ensemble" was built. members, weights, temperatures: the shipped ones (from every label);
    estimate: its nested cross-validated estimate (also ``report.estimate["weighted_ensemble"]``); pick_one:
    the nested estimate of choosing one strategy instead; fold_weights: each fold's members and weights; one: the
    strategy that rule picks from every label (the single model to ship for those who want one)."""

    members: tuple[str, ...]
    weights: tuple[float, ...]
    temperatures: tuple[float, ...]
    estimate: Estimate
    pick_one: Estimate
    fold_weights: tuple[dict[str, float], ...]
    one: str

    @property
    def better(self) -> bool:
        """Whether averaging measured better than picking one (lower nested calibrated cross-entropy); reported,
        not acted on (see the module's docstring)."""
        return self.estimate.loss < self.pick_one.loss

    def describe(self) -> str:
        """The members and their weights, heaviest first."""
        heaviest_first = sorted(zip(self.weights, self.members), key=lambda t: (-t[0], t[1]))
        return ", ".join(f"{s} {w:.2f}" for w, s in heaviest_first)


def weigh(log_proba: Mapping[str, Tensor], y: Tensor, folds: list[Tensor], order: Sequence[str]) -> WeightedEnsemble:
    """The weighted ensemble of the strategies whose held-out log class probabilities (N, C) are given: its
    shipped members and weights (from every label) and both nested estimates."""
    nested, fold_weights, pick_one = _nested(log_proba, y, folds, order)
    fitted = fits(log_proba, y, order, None)
    members, weights, temperatures = _choose(fitted, False)
    one = _choose(fitted, True)[0][0]
    return WeightedEnsemble(tuple(members), tuple(weights), tuple(temperatures), nested, pick_one,
                            tuple(fold_weights), one)


def add_weighted_ensemble(estimate: MutableMapping[str, Estimate], y: Tensor, folds: list[Tensor],
                          models: MutableMapping[str, nn.Module], seconds: MutableMapping[str, float],
                          order: Sequence[str]) -> WeightedEnsemble:
    """Adds "weighted_ensemble" to a comparison's estimates (nested), models (its members as trained on every
    label, weighted from every label) and seconds (its members' together)."""
    we = weigh({s: e.log_proba for s, e in estimate.items() if e.log_proba is not None}, y, folds, order)
    estimate[WEIGHTED_ENSEMBLE] = we.estimate
    models[WEIGHTED_ENSEMBLE] = EnsembleModel([models[s] for s in we.members], we.temperatures, we.weights)
    seconds[WEIGHTED_ENSEMBLE] = sum(seconds[s] for s in we.members)
    return we
