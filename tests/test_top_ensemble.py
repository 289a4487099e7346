""""top_ensemble": the mean of the calibrated probabilities of the strategies with the best cross-validated
estimates. Its members equal a by-hand ranking (scipy's temperature fit), each fold chooses its members without
its own labels, the shipped model is the members' calibrated mean, and it is skipped (with why) where it cannot
be built."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pytl
from pytl.experiments import EnsembleModel, compare_strategies
from pytl.experiments.top_ensemble import TOP_ENSEMBLE, mean_probabilities, nested_estimate, rank_members

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


def random_predictions(seed: int, n: int = 40, c: int = 3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    out = {}
    for k, s in enumerate(ORDER):  # strategies of different quality and confidence
        logits = rng.normal(size=(n, c)) * (1 + k)
        logits[np.arange(n), y] += 2.5 - 0.5 * k
        out[s] = torch.log_softmax(torch.as_tensor(logits), 1)
    return out, torch.as_tensor(y)


def by_hand(log_proba, y, rows, size):
    """The members (lowest fitted NLL on ``rows``, never "ensemble") and their temperatures, by scipy."""
    lp = {s: v.numpy()[rows] for s, v in log_proba.items() if s != "ensemble"}
    fits = {s: fitted(v, y.numpy()[rows]) for s, v in lp.items()}
    members = sorted(fits, key=lambda s: fits[s][0])[:size]
    return members, [fits[s][1] for s in members]


def test_members_and_temperatures_equal_a_by_hand_ranking():
    log_proba, y = random_predictions(0)
    members, temps = rank_members(log_proba, y, ORDER, 2)
    hand_members, hand_temps = by_hand(log_proba, y, np.arange(len(y)), 2)
    assert members == hand_members
    np.testing.assert_allclose(temps, hand_temps, rtol=1e-6)


def test_nested_estimate_chooses_each_folds_members_without_its_labels():
    log_proba, y = random_predictions(1)
    folds = [torch.arange(k, len(y), 4) for k in range(4)]
    est, fold_members = nested_estimate(log_proba, y, folds, ORDER, size=2)
    expected = np.zeros((len(y), 3))
    for k, held in enumerate(folds):
        rows = np.setdiff1d(np.arange(len(y)), held.numpy())
        members, temps = by_hand(log_proba, y, rows, 2)
        assert fold_members[k] == members
        probs = [torch.softmax(log_proba[s][held] / t, 1).numpy() for s, t in zip(members, temps)]
        expected[held.numpy()] = np.mean(probs, 0)
    np.testing.assert_allclose(est.log_proba.exp().numpy(), expected, rtol=1e-6)
    assert est.mean == pytest.approx(np.mean([(expected[f.numpy()].argmax(1) == y.numpy()[f.numpy()]).mean()
                                              for f in folds]))


def test_a_strategy_that_is_perfect_on_one_fold_alone_is_not_chosen_by_that_fold():
    """Strategy "a" predicts fold 0's labels perfectly and the rest at chance: fold 0 must not see that."""
    rng = np.random.default_rng(2)
    n, c = 40, 2
    y = torch.as_tensor(rng.integers(0, c, n))
    folds = [torch.arange(k, n, 4) for k in range(4)]
    good = torch.full((n, c), math.log(0.5), dtype=torch.float64)
    good[folds[0], :] = math.log(1e-3)
    good[folds[0], y[folds[0]]] = math.log(1 - 1e-3)
    fair = torch.log_softmax(torch.as_tensor(rng.normal(size=(n, c))) + 1.5 * torch.nn.functional.one_hot(y, c), 1)
    log_proba = {"a": good, "b": fair}
    _, fold_members = nested_estimate(log_proba, y, folds, ("a", "b"), size=1)
    assert fold_members[0] == ["b"]  # without fold 0's labels, "a" is at chance


def test_mean_probabilities_of_one_member_at_temperature_one_is_that_member():
    lp = torch.log_softmax(torch.randn(5, 3, dtype=torch.float64), 1)
    torch.testing.assert_close(mean_probabilities([lp], [1.0]), lp)


@pytest.fixture(scope="module")
def shift():
    return pytl.make_domain_shift(0, n_source=160, n_target_unlabeled=160, n_target_labeled=30, n_target_test=100)


SETTINGS = dict(align_epochs=3, finetune_epochs=2, num_threads=1, batch_size=32, progress=False)


def test_compare_ships_the_members_calibrated_mean(shift):
    r = compare_strategies(**shift.as_dict(), strategies=["source_only", "scratch", "naive", "mmd", TOP_ENSEMBLE],
                           folds=3, **SETTINGS)
    members = r.config["top_ensemble_members"]
    log_proba = {s: r.estimate[s].log_proba for s in ("source_only", "scratch", "naive", "mmd")}
    assert members == by_hand(log_proba, torch.as_tensor(shift.target_labeled[1]), np.arange(30), 3)[0]
    model = r.models[TOP_ENSEMBLE]
    assert isinstance(model, EnsembleModel) and len(model.members) == 3
    assert all(m is r.models[s] for m, s in zip(model.members, members))
    x = shift.target_test[0]
    expected = np.mean([torch.softmax(torch.log(torch.as_tensor(r.predict_proba(s, x))) / t, 1).numpy()
                        for s, t in zip(members, model.temperatures)], 0)
    np.testing.assert_allclose(r.predict_proba(TOP_ENSEMBLE, x), expected, rtol=1e-4, atol=1e-6)
    assert TOP_ENSEMBLE in r.accuracy and TOP_ENSEMBLE in r.estimate
    assert ", ".join(members) in r.table()


def test_skipped_with_why_without_folds_or_with_one_other_strategy(shift):
    r = compare_strategies(**shift.as_dict(), strategies=["scratch", "naive", TOP_ENSEMBLE], folds=None, **SETTINGS)
    assert TOP_ENSEMBLE not in r.models and "folds" in r.skipped[TOP_ENSEMBLE]
    r = compare_strategies(**shift.as_dict(), strategies=["scratch", TOP_ENSEMBLE], folds=3, **SETTINGS)
    assert TOP_ENSEMBLE not in r.models and "at least two" in r.skipped[TOP_ENSEMBLE]


@pytest.mark.parametrize("temps, words", [([1.0], "one positive number per member"),
                                          ([1.0, 0.0], "one positive number per member")])
def test_ensemble_temperatures_are_checked(temps, words):
    with pytest.raises(ValueError, match=words):
        EnsembleModel([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)], temps)


def test_best_weighs_the_ensemble_against_picking_one_both_nested(shift):
    r = compare_strategies(**shift.as_dict(), strategies=["source_only", "scratch", "naive", "mmd", TOP_ENSEMBLE],
                           folds=3, **SETTINGS)
    y = torch.as_tensor(shift.target_labeled[1])
    log_proba = {s: r.estimate[s].log_proba for s in ("source_only", "scratch", "naive", "mmd")}
    folds = _folds_of(r, y)
    # picking one, nested by hand: each fold scored by the strategy scipy ranks first on the other folds
    expected = torch.zeros(30, 2, dtype=torch.float64)
    for held in folds:
        rows = np.setdiff1d(np.arange(30), held.numpy())
        (one,), _ = by_hand(log_proba, y, rows, 1)
        expected[held] = torch.log_softmax(log_proba[one][held] / fitted(log_proba[one].numpy()[rows], y.numpy()[rows])[1], 1)
    torch.testing.assert_close(r.top_ensemble.pick_one.log_proba, expected, rtol=1e-5, atol=1e-6)
    assert r.top_ensemble.estimate is r.estimate[TOP_ENSEMBLE]
    usual = min(("source_only", "scratch", "naive", "mmd"), key=lambda s: r.estimate[s].rank_key())
    assert r.best == (TOP_ENSEMBLE if r.top_ensemble.estimate.loss < r.top_ensemble.pick_one.loss else usual)


def _folds_of(report, y):
    """The comparison's folds: stratified_folds of its labels, fold count and seed."""
    from pytl.experiments.folds import stratified_folds
    return stratified_folds(y, len(report.estimate["scratch"].folds), report.seed)


@pytest.mark.parametrize("better", [True, False])
def test_best_is_the_ensemble_exactly_when_it_measured_better(better):
    from pytl.experiments import ComparisonReport
    from pytl.experiments.estimate import Estimate
    from pytl.experiments.top_ensemble import TopEnsemble

    def est(loss):
        return Estimate(0.5, 0.1, (0.5,), torch.ones(4, dtype=torch.bool), loss)
    estimate = {"scratch": est(0.7), "naive": est(0.6), TOP_ENSEMBLE: est(0.65)}
    te = TopEnsemble(("naive", "scratch"), (1.0, 1.0), estimate[TOP_ENSEMBLE], est(0.8 if better else 0.6), ())
    r = ComparisonReport(accuracy={}, embedding_mmd2={}, seconds={}, skipped={}, models={}, histories={}, config={},
                         estimate=estimate, top_ensemble=te)
    assert r.best == (TOP_ENSEMBLE if better else "naive")  # not by its own loss against the singles' (0.65 > 0.6)
