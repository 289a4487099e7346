"""What a report and the entry points do with the inputs a new user passes: numpy in, numpy out; a wrong
feature count, one row, a numpy array into a model, meta tensors, a model with the default model's options,
errors named after the function called, and the label-shift estimate a comparison took."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytl
from pytl.experiments import compare_strategies
from pytl.models import default_model

TINY = dict(align_epochs=1, finetune_epochs=2, num_threads=1)


@pytest.fixture(scope="module")
def report():
    d = pytl.make_domain_shift(0, n_source=120, n_target_unlabeled=80, n_target_labeled=20, n_target_test=40)
    return d, compare_strategies(**d.as_dict(), folds=2, seed=0, strategies=["scratch", "naive"], **TINY)


def test_predict_returns_numpy_for_numpy_and_tensors_for_tensors(report):
    d, r = report
    xt = np.asarray(d.target_test[0])
    p = r.predict_proba("naive", xt)
    assert isinstance(p, np.ndarray) and p.shape == (40, 2) and np.allclose(p.sum(1), 1.0, atol=1e-6)
    labels = r.predict("best", xt)
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int64
    t = r.predict("naive", torch.as_tensor(xt))
    assert isinstance(t, torch.Tensor) and t.tolist() == r.predict("naive", xt).tolist()


def test_wrong_feature_counts_and_single_rows_get_a_clear_error(report):
    d, r = report
    with pytest.raises(ValueError, match=r"X has samples of shape 3; the models were trained on samples of shape 2"):
        r.predict("naive", np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"one sample of several features: x.reshape\(1, -1\)"):
        r.predict("naive", np.zeros(2))
    with pytest.raises(ValueError, match=r"one sample\? X.reshape\(1, -1\)"):
        r.predict("naive", np.zeros((2, 1)))  # a column of two values: the two features of one sample?
    with pytest.raises(TypeError, match="TransferModel takes a torch.Tensor, got ndarray"):
        r.best_model(np.zeros((3, 2), dtype=np.float32))


def test_meta_tensors_are_refused_by_name():
    d = pytl.make_domain_shift(0, n_source=40, n_target_unlabeled=20)
    with pytest.raises(ValueError, match="target_unlabeled is a tensor on the meta device"):
        compare_strategies(d.source, torch.empty(20, 2, device="meta"), **TINY)


def test_default_model_options_with_a_model_are_an_error_not_ignored():
    d = pytl.make_domain_shift(0, n_source=40, n_target_unlabeled=20, n_target_labeled=10)
    with pytest.raises(ValueError, match=r"dropout, hidden_sizes shape\(s\) the default model, which model= replaces"):
        compare_strategies(**d.as_dict(), model=default_model(2, 2), hidden_sizes=(8,), dropout=0.1, **TINY)


def test_mmd2_errors_with_default_bandwidths_name_the_function_called():
    with pytest.raises(ValueError, match=r"^pytl.mmd2: x and y must have the same number of features"):
        pytl.mmd2(torch.zeros(3, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"^pytl.class_conditional_mmd2: x and y must have the same number"):
        pytl.class_conditional_mmd2(torch.zeros(3, 3), torch.zeros(4, 2), torch.tensor([0, 1, 0]),
                                    torch.full((4, 2), 0.5))
    with pytest.raises(ValueError, match=r"^pytl.median_heuristic: x and y"):  # called directly: its own name
        pytl.median_heuristic(torch.zeros(3, 3), torch.zeros(4, 2))


def test_the_report_carries_the_label_shift_estimate():
    d = pytl.make_domain_shift(0, n_source=300, n_target_unlabeled=200, n_target_labeled=20)
    r = compare_strategies(**d.as_dict(), folds=None, seed=0, strategies=["source_only", "mmd_only", "mmd"],
                           class_weights="estimated", warmup=0.5, align_epochs=8, finetune_epochs=1, num_threads=1)
    assert set(r.label_shift) == {"source_only", "mmd_only", "mmd"}
    assert r.label_shift["mmd"] is r.label_shift["mmd_only"]  # fine-tuned from that stage 1
    est = r.label_shift["mmd_only"]
    assert est.weights.shape == (2,) and abs(float(est.target_proportions.sum()) - 1.0) < 1e-9


def test_progress_shows_by_default_only_where_someone_watches(monkeypatch, capsys):
    import io

    from pytl._progress import interactive
    from pytl.experiments import resolve_config

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert interactive(Terminal()) and not interactive(io.StringIO())
    monkeypatch.setattr("sys.stderr", Terminal())
    assert resolve_config({})["progress"] is True  # a terminal: a bar per training run
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert resolve_config({})["progress"] is False  # a log or CI: quiet
    assert resolve_config({"progress": True})["progress"] is True  # asked for: always
