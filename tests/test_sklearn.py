"""pytl.sklearn: TransferClassifier passes scikit-learn's own estimator checks, clones, fits with skada's domain
convention to the same model compare_strategies trains, and works in Pipeline + GridSearchCV over λ with
DomainAwareSplit scoring target rows only."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="pytl.sklearn needs scikit-learn (the [sklearn] extra)")

from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils import check_random_state  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import pytl  # noqa: E402
from pytl.sklearn import DomainAwareSplit, TransferClassifier, pack_domains  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(align_epochs=20, finetune_epochs=10, num_threads=1)


@parametrize_with_checks([TransferClassifier(align_epochs=20, num_threads=1, random_state=0)])
def test_scikit_learns_estimator_checks(estimator, check):
    """Every check of scikit-learn's suite (the array-API one skips itself without SCIPY_ARRAY_API: the
    estimator computes in torch, not in the array namespace it is given). The checks call fit(X, y) without
    domains: a plain classifier, which must learn blobs above 83% in 20 epochs."""
    check(estimator)


@pytest.fixture(scope="module")
def packed():
    d = pytl.make_domain_shift(0, n_source=200, n_target_unlabeled=150, n_target_labeled=30, n_target_test=200)
    xs, ys = (np.asarray(a) for a in d.source)
    xt = np.asarray(d.target_unlabeled)
    xl, yl = (np.asarray(a) for a in d.target_labeled)
    X, y, domain = pack_domains(xs, ys, np.concatenate([xt, xl]), np.concatenate([np.full(len(xt), -1), yl]))
    return d, X, y, domain


def test_get_params_set_params_and_clone_round_trip():
    est = TransferClassifier(strategy="mmd", lambda_align=2.0, hidden_sizes=(32,), settings={"warmup": 0.2})
    params = est.get_params()
    assert params["strategy"] == "mmd" and params["lambda_align"] == 2.0 and params["settings"] == {"warmup": 0.2}
    twin = clone(est)
    assert twin is not est and twin.get_params() == params
    twin.set_params(lambda_align=0.1, strategy="cmmd")
    assert (twin.lambda_align, twin.strategy, est.lambda_align) == (0.1, "cmmd", 2.0)


def test_named_strategy_is_the_model_compare_strategies_trains(packed):
    d, X, y, domain = packed
    est = TransferClassifier(strategy="mmd", random_state=0, **FAST).fit(X, y, sample_domain=domain)
    seed = int(check_random_state(0).randint(np.iinfo(np.int32).max))
    ref = pytl.compare_strategies(d.source, np.concatenate([np.asarray(d.target_unlabeled), d.target_labeled[0]]),
                                  target_labeled=d.target_labeled, strategies=["mmd"], folds=None, seed=seed, **FAST)
    xtest, ytest = (np.asarray(a) for a in d.target_test)
    np.testing.assert_allclose(est.predict_proba(xtest), ref.predict_proba("mmd", xtest), rtol=1e-5, atol=1e-6)
    assert est.best_ == "mmd" and list(est.classes_) == [0, 1] and est.n_features_in_ == 2
    assert est.score(xtest, ytest) == pytest.approx(float((ref.predict("mmd", xtest) == ytest).mean()))


def test_auto_keeps_the_comparison_and_its_choice(packed):
    d, X, y, domain = packed
    est = TransferClassifier(random_state=0, folds=3, **FAST).fit(X, y, sample_domain=domain)
    assert est.report_ is not None and est.best_ == est.report_.best
    assert set(est.report_.estimate) >= {"scratch", "mmd"}  # cross-validated over the 30 target labels
    assert est.model_ is est.report_.models[est.best_]
    # without target labels, the label-free ranking chooses among the strategies that need none
    unl = y != -1
    keep = (domain > 0) | ~unl
    est = TransferClassifier(random_state=0, **FAST).fit(X[keep], y[keep], sample_domain=domain[keep])
    assert est.best_ in ("source_only", "mmd_only") and est.report_.criterion == "im"


def test_auto_with_labels_too_few_to_cross_validate_says_so(packed):
    from pytl._checks import DataWarning

    d, X, y, domain = packed
    keep = (domain > 0) | (y != 1)  # the target keeps labels of class 0 only: no fold can hold every class
    with pytest.warns(DataWarning, match="too few target labels"):
        est = TransferClassifier(random_state=0, **FAST).fit(X[keep], y[keep], sample_domain=domain[keep])
    assert est.best_ == "mmd"


def test_score_with_domains_counts_the_labelled_target_rows_only(packed):
    d, X, y, domain = packed
    est = TransferClassifier(strategy="source_only", random_state=0, **FAST).fit(X, y, sample_domain=domain)
    rows = (domain < 0) & (y != -1)
    want = float((est.predict(X[rows]) == y[rows]).mean())
    assert est.score(X, y, sample_domain=domain) == pytest.approx(want)
    assert est.score(X, y) != pytest.approx(want)  # without domains: every row (the -1 rows count as wrong)


def test_grid_search_over_lambda_in_a_pipeline_scores_target_folds(packed):
    d, X, y, domain = packed
    pipe = make_pipeline(StandardScaler(), TransferClassifier(strategy="mmd", random_state=0, **FAST))
    split = DomainAwareSplit(n_splits=3, random_state=0)
    grid = GridSearchCV(pipe, {"transferclassifier__lambda_align": [0.1, 2.0]}, cv=split)
    grid.fit(X, y, groups=domain, transferclassifier__sample_domain=domain)
    assert grid.best_params_["transferclassifier__lambda_align"] in (0.1, 2.0)
    assert grid.best_estimator_[-1].report_.config["lambda_mmd"] == grid.best_params_["transferclassifier__lambda_align"]
    # the first split's score for λ = 2, recomputed by hand
    train, test = next(split.split(X, y, groups=domain))
    assert np.all(domain[test] < 0) and np.all(y[test] != -1)
    by_hand = clone(pipe).set_params(transferclassifier__lambda_align=2.0)
    by_hand.fit(X[train], y[train], transferclassifier__sample_domain=domain[train])
    want = float((by_hand.predict(X[test]) == y[test]).mean())
    assert grid.cv_results_["split0_test_score"][1] == pytest.approx(want)


def test_domain_aware_split_tests_each_labelled_target_row_once(packed):
    _, X, y, domain = packed
    split = DomainAwareSplit(n_splits=5)
    tested = np.concatenate([test for _, test in split.split(X, y, groups=domain)])
    assert sorted(tested) == list(np.flatnonzero((domain < 0) & (y != -1)))
    for train, test in split.split(X, y, groups=domain):
        assert not set(train) & set(test) and len(train) + len(test) == len(y)
    scores = cross_val_score(TransferClassifier(strategy="source_only", random_state=0, **FAST), X, y, groups=domain,
                             cv=DomainAwareSplit(3), params={"sample_domain": domain})
    assert scores.shape == (3,) and np.all((0 <= scores) & (scores <= 1))


@pytest.mark.parametrize("change, exc, words", [
    (dict(sample_domain="zero"), ValueError, "sample_domain holds 0"),
    (dict(sample_domain="short"), ValueError, "sample_domain has"),
    (dict(sample_domain="fraction"), TypeError, "integer domain ids"),
    (dict(strategy="bogus"), ValueError, "strategy='bogus'"),
    (dict(strategy="mmd", no_target_labels=True), ValueError, "needs target labels"),
    (dict(strategy="mmd_only", no_target=True), ValueError, "needs target rows"),
    (dict(source_minus_one=True), ValueError, "source row"),
])
def test_bad_domains_and_strategies_are_refused_before_training(packed, change, exc, words):
    _, X, y, domain = packed
    X, y, domain = X.copy(), y.copy(), domain.copy()
    sd = {"zero": np.zeros_like(domain), "short": domain[:-1], "fraction": domain * 0.5}.get(
        change.get("sample_domain"), domain)
    if change.get("no_target_labels"):
        y[domain < 0] = -1
    if change.get("source_minus_one"):
        y[0] = -1
    kw = {"sample_domain": None} if change.get("no_target") else {"sample_domain": sd}
    with pytest.raises(exc, match=words):
        TransferClassifier(strategy=change.get("strategy", "auto"), align_epochs=1).fit(X, y, **kw)
    with pytest.raises(ValueError, match="groups=sample_domain"):
        next(DomainAwareSplit(3).split(X, y))
