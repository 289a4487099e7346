""""weighted_ensemble": the other strategies' calibrated probabilities weighted by bagged stacking, the mixture
weights that maximise the held-out likelihood of the target labels averaged over Bayesian-bootstrap reweightings
of them. Its weights equal a by-hand computation (scipy's temperature fit, scipy's SLSQP on the simplex for every
reweighting) and each problem's meet the optimum's KKT conditions, the reweightings are Dirichlet(1), each fold
weighs without its own labels, the shipped model is that mixture, report.best ships it beside both nested
estimates, and it is skipped (with why) where it cannot be built."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pytl
from pytl.experiments import ComparisonReport, EnsembleModel, compare_strategies
from pytl.experiments.estimate import Estimate
from pytl.experiments.folds import stratified_folds
from pytl.experiments.weighted_ensemble import (
    MIN_WEIGHT,
    WEIGHTED_ENSEMBLE,
    WeightedEnsemble,
    bagged_stacking_weights,
    bootstrap_row_weights,
    mixture,
    nested_estimate,
    stacking_weights,
    weigh_members,
)

optimize = pytest.importorskip("scipy.optimize")

ORDER = ("a", "b", "c", "d", "ensemble")


def fitted(log_proba: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(min over T of the mean NLL of softmax(log_proba / T), that T) by scipy's bounded scalar minimiser."""
    def nll(log_t: float) -> float:
        z = log_proba / math.exp(log_t)
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))
    r = optimize.minimize_scalar(nll, bounds=(-7, 7), method="bounded", options={"xatol": 1e-10})
    return float(r.fun), math.exp(float(r.x))


def simplex_max(p: np.ndarray, a: np.ndarray | None = None) -> np.ndarray:
    """argmax over the simplex of Σ_i a_i log Σ_s w_s p[i, s] (a: 1/n each by default), by scipy's SLSQP (an
    independent solver)."""
    a = np.full(p.shape[0], 1.0 / p.shape[0]) if a is None else a

    def minus_f(w):
        return -np.sum(a * np.log(p @ w))

    def minus_grad(w):
        return -(a[:, None] * p / (p @ w)[:, None]).sum(0)
    k = p.shape[1]
    w = np.full(k, 1.0 / k)
    for _ in range(5):  # SLSQP sometimes stalls near a flat optimum: it goes on from where it stopped
        r = optimize.minimize(minus_f, w, jac=minus_grad, method="SLSQP", bounds=[(0, 1)] * k,
                              constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                              options={"ftol": 1e-15, "maxiter": 1000})
        w = np.clip(r.x, 0, None) / np.clip(r.x, 0, None).sum()
        if r.success:
            break
    assert r.success, r.message
    return w


def by_hand(log_proba, y, rows):
    """Bagged stacking weights over every strategy but "ensemble", by scipy (temperatures, and the weights of every
    Bayesian-bootstrap reweighting of the labels, averaged), those >= MIN_WEIGHT renormalised, and the
    temperatures."""
    fits = {s: fitted(v.numpy()[rows], y.numpy()[rows]) for s, v in log_proba.items() if s != "ensemble"}
    names = list(fits)
    p = np.stack([torch.softmax(log_proba[s][rows] / fits[s][1], 1).numpy()[np.arange(len(rows)), y.numpy()[rows]]
                  for s in names], 1)
    w = np.mean([simplex_max(p, a) for a in bootstrap_row_weights(len(rows)).numpy()], 0)
    keep = [i for i in range(len(names)) if w[i] >= MIN_WEIGHT]
    return {names[i]: (w[i] / w[keep].sum(), fits[names[i]][1]) for i in keep}


def random_predictions(seed: int, n: int = 40, c: int = 3, spread: float = 0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    out = {}
    for k, s in enumerate(ORDER):  # strategies of about the same quality (spread 0) and different confidence
        logits = rng.normal(size=(n, c))
        logits[np.arange(n), y] += 1.0 - spread * k
        out[s] = torch.log_softmax(torch.as_tensor(logits * (1 + 0.5 * k)), 1)
    return out, torch.as_tensor(y)


def test_weights_and_temperatures_equal_a_by_hand_computation():
    log_proba, y = random_predictions(0)
    members, weights, temps = weigh_members(log_proba, y, ORDER)
    hand = by_hand(log_proba, y, np.arange(len(y)))
    assert set(members) == set(hand) and len(members) >= 2  # close strategies share the weight
    for s, w, t in zip(members, weights, temps):
        assert w == pytest.approx(hand[s][0], abs=1e-4)
        assert t == pytest.approx(hand[s][1], rel=1e-5)
    assert sum(weights) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(4))
def test_stacking_weights_meet_the_optimums_kkt_conditions(seed):
    """At the maximum of a concave f on the simplex, every member's partial derivative g_s is 1 where w_s > 0
    and at most 1 where w_s = 0 (the Lagrange multiplier of Σ w = 1 is Σ w_s g_s = 1)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 1.0, size=(30, 6))  # four members of about equal quality, right on different rows,
    p[:, 4:] *= [0.3, 0.05]                   # and two that are worse on every row
    w = stacking_weights(torch.as_tensor(p)).numpy()
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)
    g = (p / (p @ w)[:, None]).mean(0)
    assert g.max() <= 1 + 1e-8
    np.testing.assert_allclose(g[w > 1e-3], 1.0, atol=1e-6)
    assert (w < 1e-3).any() and (w > 1e-3).sum() >= 2  # the instance has both kinds of members
    np.testing.assert_allclose(w, simplex_max(p), atol=1e-4)


def test_stacking_weights_of_a_batch_of_reweighted_problems_equal_scipys():
    rng = np.random.default_rng(7)
    p = rng.uniform(0.02, 1.0, size=(25, 5)) ** 2
    a = rng.dirichlet(np.ones(25), size=3)
    w = stacking_weights(torch.as_tensor(p), torch.as_tensor(a)).numpy()
    assert w.shape == (3, 5)
    for wb, ab in zip(w, a):
        np.testing.assert_allclose(wb, simplex_max(p, ab), atol=1e-4)
        g = (ab[:, None] * p / (p @ wb)[:, None]).sum(0)  # the certificate: the duality gap max_s g_s - 1
        assert g.max() - 1 <= 1e-8


@pytest.mark.parametrize("row_weights", [torch.ones(4) / 4, torch.ones(2, 3, 5) / 5,
                                         torch.tensor([0.5, 0.75, -0.25, 0.0, 0.0])])
def test_stacking_weights_row_weights_are_checked(row_weights):
    with pytest.raises(ValueError, match="row_weights must be"):
        stacking_weights(torch.rand(5, 3, dtype=torch.float64), row_weights)


def test_bootstrap_row_weights_are_dirichlet_one_and_reproducible():
    n, draws = 8, 20_000
    torch.manual_seed(123)  # the draws must not depend on the global generator
    a = bootstrap_row_weights(n, draws, seed=5)
    torch.manual_seed(456)
    assert torch.equal(a, bootstrap_row_weights(n, draws, seed=5))
    assert not torch.equal(a, bootstrap_row_weights(n, draws, seed=6))
    torch.testing.assert_close(a.sum(1), torch.ones(draws, dtype=torch.float64))
    # Dirichlet(1, ..., 1): each coordinate Beta(1, n - 1), mean 1/n and variance (n - 1) / (n^2 (n + 1))
    assert a.mean(0).sub(1 / n).abs().max() < 4 * math.sqrt((n - 1) / (n**2 * (n + 1)) / draws)
    assert a.var(0).div((n - 1) / (n**2 * (n + 1))).sub(1).abs().max() < 0.08


def test_bagged_stacking_is_the_mean_of_the_reweighted_problems_and_shares_more_than_one_fit():
    """Member 2 alone predicts rows 0-1, which the others give 0.01; elsewhere it is the worst. One stacking fit
    gives it the weight those two rows ask for; bagging averages over reweightings that weigh them less or more."""
    rng = np.random.default_rng(11)
    p = rng.uniform(0.3, 0.9, size=(40, 3))
    p[:, 2] *= 0.5
    p[:2] = [0.01, 0.01, 0.95]
    expected = np.mean([simplex_max(p, a) for a in bootstrap_row_weights(40, 50, seed=3).numpy()], 0)
    bagged = bagged_stacking_weights(torch.as_tensor(p), draws=50, seed=3).numpy()
    np.testing.assert_allclose(bagged, expected, atol=1e-4)
    np.testing.assert_allclose(stacking_weights(torch.as_tensor(p)).numpy(), simplex_max(p), atol=1e-4)


def test_stacking_weights_closed_form_of_two_members():
    """Two members, member 0 giving each label probability 1 on rows where member 1 gives 0 and the reverse:
    f(w) = a·log w + b·log(1 − w) (fractions a, b of the rows), maximised at w = a."""
    p = torch.tensor([[1.0, 0.0]] * 7 + [[0.0, 1.0]] * 3, dtype=torch.float64)
    torch.testing.assert_close(stacking_weights(p), torch.tensor([0.7, 0.3], dtype=torch.float64), atol=1e-6,
                               rtol=0)


def test_a_clearly_better_strategy_takes_nearly_all_the_weight_and_pick_one_takes_the_lowest_loss():
    log_proba, y = random_predictions(1, spread=0.8)  # "a" far ahead of the rest
    members, weights, _ = weigh_members(log_proba, y, ORDER)
    assert members[int(np.argmax(weights))] == "a" and max(weights) > 0.9
    assert weigh_members(log_proba, y, ORDER, pick_one=True)[:2] == (["a"], [1.0])


def test_nested_estimate_weighs_each_fold_without_its_labels():
    log_proba, y = random_predictions(2)
    folds = [torch.arange(k, len(y), 4) for k in range(4)]
    est, fold_weights = nested_estimate(log_proba, y, folds, ORDER)
    expected = np.zeros((len(y), 3))
    for k, held in enumerate(folds):
        rows = np.setdiff1d(np.arange(len(y)), held.numpy())
        hand = by_hand(log_proba, y, rows)
        assert fold_weights[k] == pytest.approx({s: w for s, (w, _) in hand.items()}, abs=1e-4)
        expected[held.numpy()] = sum(w * torch.softmax(log_proba[s][held] / t, 1).numpy() for s, (w, t) in hand.items())
    np.testing.assert_allclose(est.log_proba.exp().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_a_strategy_that_is_perfect_on_one_fold_alone_gets_no_weight_from_that_fold():
    """Strategy "a" predicts fold 0's labels perfectly and the rest at chance: fold 0 must not see that."""
    rng = np.random.default_rng(3)
    n, c = 40, 2
    y = torch.as_tensor(rng.integers(0, c, n))
    folds = [torch.arange(k, n, 4) for k in range(4)]
    good = torch.full((n, c), math.log(0.5), dtype=torch.float64)
    good[folds[0], :] = math.log(1e-3)
    good[folds[0], y[folds[0]]] = math.log(1 - 1e-3)
    fair = torch.log_softmax(torch.as_tensor(rng.normal(size=(n, c))) + 2.0 * torch.nn.functional.one_hot(y, c), 1)
    _, fold_weights = nested_estimate({"a": good, "b": fair}, y, folds, ("a", "b"))
    assert fold_weights[0] == {"b": 1.0}  # without fold 0's labels, "a" is at chance


def test_mixture_of_one_member_at_temperature_one_is_that_member():
    lp = torch.log_softmax(torch.randn(5, 3, dtype=torch.float64), 1)
    torch.testing.assert_close(mixture([lp], [1.0], [1.0]), lp)


@pytest.fixture(scope="module")
def shift():
    return pytl.make_domain_shift(0, n_source=160, n_target_unlabeled=160, n_target_labeled=30, n_target_test=100)


SETTINGS = dict(align_epochs=3, finetune_epochs=2, num_threads=1, batch_size=32, progress=False)
OTHERS = ("source_only", "scratch", "naive", "mmd")


@pytest.fixture(scope="module")
def report(shift):
    return compare_strategies(**shift.as_dict(), strategies=[*OTHERS, WEIGHTED_ENSEMBLE], folds=3, **SETTINGS)


def test_compare_ships_the_weighted_mixture_of_the_members(shift, report):
    r = report
    we = r.weighted_ensemble
    log_proba = {s: r.estimate[s].log_proba for s in OTHERS}
    hand = by_hand(log_proba, torch.as_tensor(shift.target_labeled[1]), np.arange(30))
    assert set(we.members) == set(hand)
    model = r.models[WEIGHTED_ENSEMBLE]
    assert isinstance(model, EnsembleModel) and all(m is r.models[s] for m, s in zip(model.members, we.members))
    x = shift.target_test[0]
    expected = sum(hand[s][0] * torch.softmax(torch.log(torch.as_tensor(r.predict_proba(s, x))) / hand[s][1], 1).numpy()
                   for s in we.members)
    np.testing.assert_allclose(r.predict_proba(WEIGHTED_ENSEMBLE, x), expected, rtol=1e-4, atol=1e-4)
    assert WEIGHTED_ENSEMBLE in r.accuracy and r.estimate[WEIGHTED_ENSEMBLE] is we.estimate
    assert we.describe() in r.table()


def test_both_nested_estimates_and_best_ships_the_ensemble(shift, report):
    r = report
    y = torch.as_tensor(shift.target_labeled[1])
    log_proba = {s: r.estimate[s].log_proba for s in OTHERS}
    expected = torch.zeros(30, 2, dtype=torch.float64)
    for held in stratified_folds(y, 3, r.seed):  # picking one, nested by hand with scipy's fits
        rows = np.setdiff1d(np.arange(30), held.numpy())
        fits = {s: fitted(v.numpy()[rows], y.numpy()[rows]) for s, v in log_proba.items()}
        one = min(fits, key=lambda s: fits[s][0])
        expected[held] = torch.log_softmax(log_proba[one][held] / fits[one][1], 1)
    torch.testing.assert_close(r.weighted_ensemble.pick_one.log_proba, expected, rtol=1e-5, atol=1e-6)
    usual = min(OTHERS, key=lambda s: r.estimate[s].rank_key())
    assert r.weighted_ensemble.one == usual
    assert r.best == WEIGHTED_ENSEMBLE and r.best_model is r.models[WEIGHTED_ENSEMBLE]


@pytest.mark.parametrize("better", [True, False])
def test_best_is_the_ensemble_whichever_way_the_nested_comparison_went_and_explain_says_which(better):
    def est(loss):
        return Estimate(0.5, 0.1, (0.5,), torch.ones(4, dtype=torch.bool), loss)
    # "ensemble" (mmd + scratch) has the lowest loss of all: report.best's usual ranking would ship it
    estimate = {"scratch": est(0.7), "naive": est(0.6), "ensemble": est(0.55), WEIGHTED_ENSEMBLE: est(0.65)}
    we = WeightedEnsemble(("naive", "scratch"), (0.5, 0.5), (1.0, 1.0), estimate[WEIGHTED_ENSEMBLE],
                          est(0.8 if better else 0.6), (), one="naive")
    r = ComparisonReport(accuracy={}, embedding_mmd2={}, seconds={}, skipped={}, models={}, histories={}, config={},
                         estimate=estimate, weighted_ensemble=we)
    # not ranked by its own loss against the singles' (0.65), nor replaced where picking one measured better
    assert r.best == WEIGHTED_ENSEMBLE
    assert "The model to ship: weighted_ensemble (naive 0.50, scratch 0.50)" in r.explain()
    nested = f"cross-entropy 0.650) against picking one strategy, nested the same way ({0.8 if better else 0.6:.3f})"
    assert nested in r.explain()
    if better:
        assert "the mixture measured better." in r.explain()
    else:
        assert "picking one measured better" in r.explain() and "report.models['naive'] is that pick" in r.explain()


def test_skipped_with_why_without_folds_or_with_one_other_strategy(shift):
    r = compare_strategies(**shift.as_dict(), strategies=["scratch", "naive", WEIGHTED_ENSEMBLE], folds=None,
                           **SETTINGS)
    assert WEIGHTED_ENSEMBLE not in r.models and "folds" in r.skipped[WEIGHTED_ENSEMBLE]
    r = compare_strategies(**shift.as_dict(), strategies=["scratch", WEIGHTED_ENSEMBLE], folds=3, **SETTINGS)
    assert WEIGHTED_ENSEMBLE not in r.models and "at least two" in r.skipped[WEIGHTED_ENSEMBLE]


@pytest.mark.parametrize("kwargs, words", [
    (dict(temperatures=[1.0]), "temperatures must be one positive number per member"),
    (dict(temperatures=[1.0, 0.0]), "temperatures must be one positive number per member"),
    (dict(weights=[0.5, 0.6]), "weights must be one number >= 0 per member"),
    (dict(weights=[1.5, -0.5]), "weights must be one number >= 0 per member"),
])
def test_ensemble_temperatures_and_weights_are_checked(kwargs, words):
    with pytest.raises(ValueError, match=words):
        EnsembleModel([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)], **kwargs)


def test_weighted_ensemble_model_against_a_by_hand_mixture():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    x = torch.randn(6, 3)
    m = EnsembleModel([a, b], [2.0, 0.5], [0.25, 0.75])
    expected = 0.25 * torch.softmax(a(x) / 2.0, 1) + 0.75 * torch.softmax(b(x) / 0.5, 1)
    torch.testing.assert_close(m(x).exp(), expected)
