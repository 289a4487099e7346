"""λ chosen from the data (compare_strategies' "auto" and grids): the choice equals a brute-force loop over the
grid, each cross-validation fold chooses without its own labels, and bad grids are refused by name."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import pytl
from pytl.experiments import compare_strategies
from pytl.experiments.folds import stratified_folds
from pytl.experiments.lambda_search import LAMBDA_FACTORS, lambda_grid
from pytl.train import TwoStageTrainer
from pytl.validation import CRITERIA

optimize = pytest.importorskip("scipy.optimize")

GRID = [0.05, 1.0, 20.0]
SETTINGS = dict(align_epochs=3, finetune_epochs=2, num_threads=1, batch_size=32)


@pytest.fixture(scope="module")
def shift():
    return pytl.make_domain_shift(0, n_source=160, n_target_unlabeled=160, n_target_labeled=30, n_target_test=100)


def calibrated_nll(log_proba: np.ndarray, y: np.ndarray) -> float:
    """min over T of the mean NLL of softmax(log_proba / T), by scipy's bounded scalar minimiser."""
    def nll(log_t: float) -> float:
        z = log_proba / math.exp(log_t)
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))
    return float(optimize.minimize_scalar(nll, bounds=(-7, 7), method="bounded", options={"xatol": 1e-10}).fun)


def stage1_models(data, grid, seed=0, align_epochs=3):
    """The stage-1 model of each λ, trained as compare_strategies trains it: from the comparison's initial
    model (its default model, built by a λ = 0, 0-epoch comparison of the same data and seed)."""
    init = compare_strategies(**data.as_dict(), folds=None, seed=seed, strategies=["source_only"],
                              **{**SETTINGS, "align_epochs": 0})
    base = init.models["source_only"]
    out = {}
    for lam in grid:
        t = TwoStageTrainer(copy.deepcopy(base), lambda_align=lam, seed=seed, num_classes=2, device="cpu",
                            progress=False, align_epochs=align_epochs, num_threads=1, batch_size=32)
        t.align(data.source, data.target_unlabeled)
        out[lam] = t.model
    return out


def log_proba(model, x):
    with torch.no_grad(), pytl.train.eval_mode(model):
        return torch.log_softmax(model(torch.as_tensor(x, dtype=torch.float32)).double(), 1).numpy()


def test_a_grid_may_be_a_list_a_tuple_or_a_numpy_array():
    for grid in ([0.1, 1.0], (0.1, 1.0), np.array([0.1, 1.0]), torch.tensor([0.1, 1.0])):
        assert lambda_grid("mmd", grid) == pytest.approx((0.1, 1.0))
    assert lambda_grid("mmd", 0.7) == (0.7,)


def test_auto_grid_spans_a_hundredfold_around_each_default():
    for alignment, default in (("mmd", 0.5), ("coral", 1000.0), ("dann", 1.0)):
        grid = lambda_grid(alignment, "auto")
        assert len(grid) == len(LAMBDA_FACTORS) == 5
        assert grid[0] == pytest.approx(0.1 * default) and grid[-1] == pytest.approx(10 * default)
        ratios = [b / a for a, b in zip(grid, grid[1:])]
        assert all(r == pytest.approx(math.sqrt(10), rel=2e-3) for r in ratios)  # geometric (3 digits kept)


def test_chosen_lambda_equals_a_brute_force_loop_and_folds_never_see_their_labels(shift):
    # a grid, seed and budget where the folds disagree (seen before writing the test), so that a choice made
    # with every label would differ from the per-fold choices below
    grid, settings = [0.1, 0.3, 1.0, 3.0], {**SETTINGS, "align_epochs": 8}
    r = compare_strategies(**shift.as_dict(), folds=3, seed=2, strategies=["mmd_only", "mmd"], lambda_mmd=grid,
                           **settings)
    search = r.lambdas["mmd"]
    assert len(set(search.fold_choices)) > 1
    models = stage1_models(shift, grid, seed=2, align_epochs=8)
    xl, yl = shift.target_labeled
    yl = np.asarray(yl)
    lp = {lam: log_proba(m, xl) for lam, m in models.items()}
    # the stage-1 models are those of the comparison, bit for bit
    for lam in grid:
        for (k, a), b in zip(search.models[lam].state_dict().items(), models[lam].state_dict().values()):
            assert torch.equal(a, b), (lam, k)
    # all labels: the λ whose model has the lowest calibrated cross-entropy (scipy's minimiser, not pytl's)
    nll = {lam: calibrated_nll(lp[lam], yl) for lam in grid}
    assert search.chosen == min(grid, key=lambda lam: (nll[lam], lam))
    for lam in grid:
        assert search.scores[lam] == pytest.approx(-nll[lam], abs=1e-7)
    assert r.config["lambda_mmd"] == search.chosen and f"CE + {search.chosen:g}·MMD²" in r.table()
    assert r.models["mmd_only"] is search.models[search.chosen]
    # each fold: the λ chosen on the other folds' labels only
    folds = stratified_folds(torch.as_tensor(yl), 3, 2)
    for k, held in enumerate(folds):
        train = np.ones(len(yl), bool)
        train[held.numpy()] = False
        by_others = {lam: calibrated_nll(lp[lam][train], yl[train]) for lam in grid}
        assert search.fold_choices[k] == min(grid, key=lambda lam: (by_others[lam], lam))
        # and the fold's held-out predictions of mmd_only come from that λ's model
        chosen = search.fold_choices[k]
        correct = lp[chosen][held.numpy()].argmax(1) == yl[held.numpy()]
        assert r.estimate["mmd_only"].correct[held].numpy().tolist() == correct.tolist()


def test_the_fine_tuned_strategy_chooses_its_lambda_by_cross_validated_fine_tuning(shift, default_width_64):
    """"mmd" (and the ensemble built on it): every λ's stage-1 model fine-tuned on each fold's other labels and
    scored on the fold; the shipped λ is the lowest calibrated cross-entropy over every label, each fold's over
    the other folds' rows (nested), and the shipped model is that λ's stage-1 model fine-tuned on every label."""
    # a seed and budget where the fine-tuned models prefer another λ than the stage-1 models (seen before writing
    # the test, with the 64-wide default MLP of then), so that starting from the stage-1 choice would fail below
    grid, settings = [0.1, 1.0, 10.0], {**SETTINGS, "align_epochs": 8, "finetune_epochs": 10}
    r = compare_strategies(**shift.as_dict(), folds=3, seed=1, strategies=["scratch", "mmd", "ensemble"],
                           lambda_mmd=grid, **settings)
    search = r.lambdas["mmd"]
    assert search.finetune_chosen != search.chosen
    xl, yl = np.asarray(shift.target_labeled[0]), np.asarray(shift.target_labeled[1])
    folds = [held.numpy() for held in stratified_folds(torch.as_tensor(yl), 3, 1)]

    def finetuned(start, rows):
        t = TwoStageTrainer(copy.deepcopy(start), lambda_align=0.0, seed=1, num_classes=2, device="cpu", progress=False,
                            finetune_epochs=10, num_threads=1, batch_size=32)
        t.finetune((xl[rows], yl[rows]))
        return t.model

    held_out = {lam: np.zeros((len(yl), 2)) for lam in grid}
    for held in folds:
        train = np.ones(len(yl), bool)
        train[held] = False
        for lam in grid:
            held_out[lam][held] = log_proba(finetuned(search.models[lam], train), xl[held])
    nll = {lam: calibrated_nll(held_out[lam], yl) for lam in grid}
    assert search.finetune_chosen == min(grid, key=lambda lam: (nll[lam], lam))
    for lam in grid:
        assert search.finetune_scores[lam] == pytest.approx(-nll[lam], abs=1e-6)
    expected = np.zeros((len(yl), 2))
    for k, held in enumerate(folds):
        train = np.ones(len(yl), bool)
        train[held] = False
        by_others = {lam: calibrated_nll(held_out[lam][train], yl[train]) for lam in grid}
        assert search.finetune_fold_choices[k] == min(grid, key=lambda lam: (by_others[lam], lam))
        expected[held] = held_out[search.finetune_fold_choices[k]][held]
    np.testing.assert_allclose(r.estimate["mmd"].log_proba.numpy(), expected, rtol=1e-5, atol=1e-6)
    mean = (np.exp(expected) + np.exp(r.estimate["scratch"].log_proba.numpy())) / 2  # EnsembleModel's mean
    np.testing.assert_allclose(r.estimate["ensemble"].log_proba.numpy(), np.log(mean), rtol=1e-5, atol=1e-6)
    shipped = finetuned(search.models[search.finetune_chosen], np.ones(len(yl), bool))
    x = shift.target_test[0]
    np.testing.assert_allclose(log_proba(r.models["mmd"], x), log_proba(shipped, x), rtol=1e-5, atol=1e-6)
    assert f"fine-tuned mmd: {search.finetune_chosen:g}, by cross-validated fine-tuning" in r.table()
    assert f"from the stage 1 at λ = {search.finetune_chosen:g} (its own cross-validated choice)" in r.table()
    assert "fine-tuned mmd: each λ's stage-1 model fine-tuned per fold" in search.table()


def test_without_cross_validation_the_fine_tuned_lambda_is_still_cross_validated(shift):
    """folds=None skips the estimates, not the fine-tuned strategy's λ: it is chosen by fine-tuning every λ's
    stage-1 model on up to 5 stratified folds (as many as the rarest class allows), by a brute-force loop here;
    with a class of one label no fold can be built and the stage-1 choice stays."""
    grid, settings = [0.1, 1.0, 10.0], {**SETTINGS, "align_epochs": 8, "finetune_epochs": 10}
    r = compare_strategies(**shift.as_dict(), folds=None, seed=1, strategies=["mmd"], lambda_mmd=grid, **settings)
    search = r.lambdas["mmd"]
    assert r.estimate == {} and search.fold_choices == ()
    xl, yl = np.asarray(shift.target_labeled[0]), np.asarray(shift.target_labeled[1])
    assert np.bincount(yl).min() >= 5  # so 5 folds
    folds = [held.numpy() for held in stratified_folds(torch.as_tensor(yl), 5, 1)]

    held_out = {lam: np.zeros((len(yl), 2)) for lam in grid}
    for held in folds:
        train = np.ones(len(yl), bool)
        train[held] = False
        for lam in grid:
            held_out[lam][held] = log_proba(finetuned_on(search.models[lam], xl[train], yl[train]), xl[held])
    nll = {lam: calibrated_nll(held_out[lam], yl) for lam in grid}
    assert search.finetune_chosen == min(grid, key=lambda lam: (nll[lam], lam))
    shipped = finetuned_on(search.models[search.finetune_chosen], xl, yl)
    x = shift.target_test[0]
    np.testing.assert_allclose(log_proba(r.models["mmd"], x), log_proba(shipped, x), rtol=1e-5, atol=1e-6)

    one = np.flatnonzero(yl == 1)[0]  # class 1 keeps one label: no stratified fold
    keep = np.concatenate([np.flatnonzero(yl == 0), [one]])
    few = compare_strategies(shift.source, shift.target_unlabeled, shift.target_test, (xl[keep], yl[keep]),
                             folds=None, seed=1, strategies=["mmd"], lambda_mmd=grid, **settings)
    search = few.lambdas["mmd"]
    assert search.finetune_chosen is None
    np.testing.assert_allclose(log_proba(few.models["mmd"], x),
                               log_proba(finetuned_on(search.models[search.chosen], xl[keep], yl[keep]), x),
                               rtol=1e-5, atol=1e-6)


def finetuned_on(start, x, y):
    """``start`` fine-tuned as the comparisons above fine-tune (seed 1, 10 epochs)."""
    t = TwoStageTrainer(copy.deepcopy(start), lambda_align=0.0, seed=1, num_classes=2, device="cpu", progress=False,
                        finetune_epochs=10, num_threads=1, batch_size=32)
    t.finetune((x, y))
    return t.model


def test_without_labels_the_criterion_chooses(shift):
    r = compare_strategies(shift.source, shift.target_unlabeled, shift.target_test, folds=None, seed=0,
                           strategies=["mmd_only"], lambda_mmd=GRID, criterion="entropy", **SETTINGS)
    search = r.lambdas["mmd"]
    assert search.noise is None and "entropy" in search.by and search.fold_choices == ()
    scores = {lam: search.scores[lam] for lam in GRID}
    assert search.chosen == max(GRID, key=lambda lam: (scores[lam], -lam))
    xt = torch.as_tensor(shift.target_unlabeled, dtype=torch.float32)
    for lam, m in search.models.items():  # prediction entropy needs no source rows: check it independently
        with torch.no_grad():
            p = torch.softmax(m(xt).double(), 1)
        assert scores[lam] == pytest.approx(float((p * p.log()).sum(1).mean()), rel=1e-6)


def test_without_labels_auto_keeps_the_default_and_says_why(shift):
    """No label-free criterion chose λ reliably better than the defaults on real pairs, so "auto" (the default)
    searches only with target labels; without, each alignment trains its declared default, and the table says so.
    A grid of one's own is still searched by the criterion (above)."""
    d = dict(source=shift.source, target_unlabeled=shift.target_unlabeled, target_test=shift.target_test)
    r = compare_strategies(**d, folds=None, seed=0, strategies=["source_only", "mmd_only", "coral_only"], **SETTINGS)
    assert r.lambdas == {} and r.config["lambda_mmd"] == 0.5 and r.config["lambda_coral"] == 1000.0
    fixed = compare_strategies(**d, folds=None, seed=0, strategies=["mmd_only"], lambda_mmd=0.5, **SETTINGS)
    assert all(torch.equal(a, b) for a, b in zip(r.models["mmd_only"].parameters(),
                                                 fixed.models["mmd_only"].parameters()))
    table = r.table()
    assert ('"auto" without target labels keeps each alignment\'s default (lambda_mmd 0.5, lambda_coral 1000)'
            in table) and "CE + 0.5·MMD²" in table
    assert "keeps each alignment's default" not in fixed.table()
    labelled = compare_strategies(**shift.as_dict(), folds=None, seed=0, strategies=["mmd_only"], **SETTINGS)
    assert labelled.lambdas["mmd"].grid == lambda_grid("mmd", "auto") and "keeps" not in labelled.table()


def test_select_lambda_and_compare_choose_alike(shift):
    sel = pytl.select_lambda(shift.source, shift.target_unlabeled, lambdas=GRID, criterion="im", **SETTINGS)
    assert sel.best == max(GRID, key=lambda lam: (sel.scores[lam], -lam))
    for lam, m in sel.models.items():
        assert sel.scores[lam] == CRITERIA["im"](m, None, shift.target_unlabeled)


@pytest.mark.parametrize("value, exc, words", [
    ("automatic", ValueError, r"lambda_mmd must be a number >= 0, 'auto' or a sequence"),
    ([], ValueError, "lambda_mmd is an empty grid"),
    ([0.5, -1.0], ValueError, r"lambda_mmd\[1\] must be a finite number >= 0"),
    ([1.0, 1.0], ValueError, "lambda_mmd must hold distinct values"),
    (True, TypeError, "lambda_mmd must be a number >= 0, 'auto' or a sequence"),
    ({"a": 1}, TypeError, "lambda_mmd must be a number >= 0, 'auto' or a sequence"),
    (float("nan"), ValueError, "lambda_mmd must be a finite number"),
])
def test_bad_grids_are_refused_before_training(shift, monkeypatch, value, exc, words):
    monkeypatch.setattr(TwoStageTrainer, "align", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(exc, match=words):
        compare_strategies(**shift.as_dict(), lambda_mmd=value, **SETTINGS)


def test_another_alignment_searches_its_own_option(shift):
    with pytest.raises(ValueError, match=r"lambda_coral\[0\]"):
        compare_strategies(**shift.as_dict(), strategies=["coral_only"], lambda_coral=[-5], **SETTINGS)


def test_a_seed_summary_names_each_seeds_lambda(shift):
    """Over seeds, "uses" names λ where every seed chose the same one and says "λ" where they differ; a note
    counts each seed's choice."""
    import dataclasses

    from pytl.experiments import summarize

    r = compare_strategies(**shift.as_dict(), folds=None, seed=0, strategies=["mmd_only"], lambda_mmd=GRID, **SETTINGS)
    chosen = r.lambdas["mmd"].chosen
    same = summarize([r, r]).table()
    assert f"CE + {chosen:g}·MMD²" in same and f"lambda_mmd, per seed: {chosen:g} (2 seeds)" in same
    other = next(lam for lam in GRID if lam != chosen)
    r2 = dataclasses.replace(r, seed=1, lambdas={"mmd": dataclasses.replace(r.lambdas["mmd"], chosen=other)},
                             config={**r.config, "lambda_mmd": other})
    mixed = summarize([r, r2, r]).table()
    assert "CE + λ·MMD²" in mixed
    low, high = sorted([chosen, other])
    counts = {chosen: 2, other: 1}
    assert (f"lambda_mmd, per seed: {low:g} ({counts[low]} seed{'s' * (counts[low] > 1)}), "
            f"{high:g} ({counts[high]} seed{'s' * (counts[high] > 1)})") in mixed


def test_fixed_lambdas_train_one_stage_1_per_alignment(shift):
    """fixed_lambdas(): each alignment's λ option at its declared default, the centre of its "auto" grid; passed
    to compare_strategies no λ is searched and the models are those of that λ given alone."""
    from pytl.experiments import fixed_lambdas
    from pytl.train import ALIGNMENTS

    fixed = fixed_lambdas()
    assert fixed == {"lambda_mmd": 0.5, "lambda_cmmd": 0.5, "lambda_coral": 1000.0, "lambda_dann": 1.0,
                     "lambda_mme": 0.1}
    for a, cls in ALIGNMENTS.items():
        assert fixed[cls.lambda_option] in lambda_grid(a, "auto")
    r = compare_strategies(**shift.as_dict(), folds=None, seed=0, strategies=["mmd_only"], **fixed, **SETTINGS)
    assert r.lambdas == {} and r.config["lambda_mmd"] == 0.5
    alone = compare_strategies(**shift.as_dict(), folds=None, seed=0, strategies=["mmd_only"], lambda_mmd=0.5,
                               **SETTINGS)
    assert all(torch.equal(a, b) for a, b in zip(r.models["mmd_only"].parameters(),
                                                 alone.models["mmd_only"].parameters()))
