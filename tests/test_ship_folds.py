"""ship="folds": each label-using strategy ships the mean of its cross-validation fold models, so the held-out
predictions that estimate and weigh it are its own members' predictions. Checked against each member evaluated
again on its own held-out fold, the committee's probabilities averaged by hand, and the same comparison
under ship="refit" (the cross-validation does not depend on what ships)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytl
from pytl.experiments import compare_strategies
from pytl.experiments.ensemble import EnsembleModel
from pytl.experiments.folds import stratified_folds

SETTINGS = dict(align_epochs=3, finetune_epochs=2, num_threads=1, batch_size=32, lambda_mmd=[0.05, 1.0, 20.0])
STRATEGIES = ["source_only", "mmd_only", "scratch", "naive", "mmd", "ensemble", "coral", "ssl_mmd",
              "weighted_ensemble"]
FOLDS = 3


@pytest.fixture(scope="module")
def shift():
    return pytl.make_domain_shift(1, n_source=160, n_target_unlabeled=160, n_target_labeled=30, n_target_test=100)


@pytest.fixture(scope="module")
def reports(shift):
    """Both ways to ship with mmd's λ searched, and ship="folds" at one λ (no search: the ensemble of each fold
    is built beside its mmd, not after the folds choose mmd's λ)."""
    out = {ship: compare_strategies(**shift.as_dict(), folds=FOLDS, seed=0, strategies=STRATEGIES, ship=ship,
                                    **SETTINGS) for ship in ("folds", "refit")}
    out["one λ"] = compare_strategies(**shift.as_dict(), folds=FOLDS, seed=0, strategies=STRATEGIES, ship="folds",
                                      **{**SETTINGS, "lambda_mmd": 0.5})
    return out


def log_proba(model, x):
    with torch.no_grad(), pytl.train.eval_mode(model):
        return torch.log_softmax(model(torch.as_tensor(x, dtype=torch.float32)).double(), 1)


@pytest.mark.parametrize("which", ["folds", "one λ"])
def test_each_fold_model_made_its_folds_held_out_predictions(shift, reports, which):
    r = reports[which]
    x, y = (torch.as_tensor(a) for a in shift.target_labeled)
    folds = stratified_folds(y, FOLDS, 0)
    for s in ["scratch", "naive", "mmd", "ensemble", "coral", "ssl_mmd"]:
        members = r.models[s].members
        assert isinstance(r.models[s], EnsembleModel) and len(members) == FOLDS, s
        for member, held in zip(members, folds):
            torch.testing.assert_close(log_proba(member, x[held]), r.estimate[s].log_proba[held], atol=1e-6, rtol=0,
                                       msg=s)


def test_the_shipped_committee_is_the_mean_of_its_members_probabilities(shift, reports):
    r = reports["folds"]
    xt = shift.target_test[0]
    for s in ["scratch", "mmd", "ssl_mmd"]:
        by_hand = np.mean([log_proba(m, xt).exp().numpy() for m in r.models[s].members], axis=0)
        np.testing.assert_allclose(r.predict_proba(s, xt), by_hand, atol=1e-6)


def test_a_searched_label_free_strategy_ships_what_its_folds_chose(shift, reports):
    """mmd_only's held-out predictions come from the λ each fold chose from the other folds' labels: it ships
    those stage-1 models, each weighted by the folds that chose it."""
    r = reports["folds"]
    search = r.lambdas["mmd"]
    x, y = (torch.as_tensor(a) for a in shift.target_labeled)
    xt = torch.as_tensor(shift.target_test[0])
    for lam, held in zip(search.fold_choices, stratified_folds(y, FOLDS, 0)):
        torch.testing.assert_close(log_proba(search.models[lam], x[held]), r.estimate["mmd_only"].log_proba[held])
    by_hand = np.mean([log_proba(search.models[lam], xt).exp().numpy() for lam in search.fold_choices], axis=0)
    np.testing.assert_allclose(r.predict_proba("mmd_only", xt), by_hand, atol=1e-6)


def test_what_ships_does_not_change_the_cross_validation(shift, reports):
    folds, refit = reports["folds"], reports["refit"]
    assert set(folds.estimate) == set(refit.estimate)
    for s, e in refit.estimate.items():
        torch.testing.assert_close(folds.estimate[s].log_proba, e.log_proba, msg=s)
    assert not isinstance(refit.models["mmd"], EnsembleModel)  # refit: one model trained on every label
    xt, yt = shift.target_test
    for s in ["mmd", "weighted_ensemble"]:  # the reported accuracy is the shipped committee's
        assert folds.accuracy[s] == pytest.approx(float((folds.predict_proba(s, xt).argmax(1) == yt).mean()))


@pytest.mark.parametrize("ship, folds, words", [("bogus", 3, "ship must be one of"),
                                                 ("folds", None, "ship='folds'")])
def test_bad_ship_settings_are_refused_before_training(shift, ship, folds, words):
    with pytest.raises(ValueError, match=words):
        compare_strategies(**shift.as_dict(), folds=folds, seed=0, strategies=["scratch"], ship=ship,
                           **{**SETTINGS, "align_epochs": 10**6})
