"""Label spaces that used to pass silently into training: 1-based source labels, target classes the source
lacks, and a shuffling DataLoader of target labels whose order changed the cross-validated estimate."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pytl
from pytl._checks import DataWarning
from pytl.experiments import compare_strategies
from pytl.train import TwoStageTrainer

TINY = dict(align_epochs=1, finetune_epochs=2, num_threads=1)


@pytest.fixture(scope="module")
def shift():
    return pytl.make_domain_shift(0, n_source=120, n_target_unlabeled=80, n_target_labeled=30, n_target_test=60)


@pytest.mark.parametrize("run", ["trainer", "compare"])
def test_one_based_source_labels_are_refused_before_training(shift, monkeypatch, run):
    monkeypatch.setattr(TwoStageTrainer, "align", lambda *a, **k: pytest.fail("training started"))
    xs, ys = shift.source
    one_based = (xs, np.asarray(ys) + 1)
    xl, yl = shift.target_labeled
    with pytest.raises(ValueError, match=r"source\[1\] \(y\) has no label 0 \(its labels run 1..2\)"):
        if run == "trainer":
            TwoStageTrainer(None, progress=False, **TINY).fit(one_based, shift.target_unlabeled, (xl, yl))
        else:
            compare_strategies(one_based, shift.target_unlabeled, target_labeled=(xl, yl), **TINY)


def test_a_source_that_simply_lacks_class_zero_passes_with_num_classes(shift):
    xs, ys = shift.source
    ys12 = np.where(np.asarray(ys) == 0, 2, 1)  # classes 1 and 2: no 0, and num_classes says there are three
    t = TwoStageTrainer(None, num_classes=3, lambda_align=0.0, progress=False, **TINY)
    with pytest.warns(DataWarning, match=r"classes absent from the source labels.*lacks class\(es\) \[0\]"):
        t.fit((xs, ys12), None, shift.target_labeled)
    assert t.model.num_classes == 3


def test_a_target_class_absent_from_the_source_warns_once_at_the_callers_line(shift):
    xs, ys = shift.source
    x3 = np.concatenate([np.asarray(xs), np.asarray(xs[:10])])
    y3 = np.concatenate([np.asarray(ys), np.full(10, 2)])  # the source has a class 2...
    xl, yl = shift.target_labeled
    yl3 = np.asarray(yl).copy()
    yl3[:5] = 2
    xs2, ys2 = x3[y3 != 1], y3[y3 != 1]  # ...and lacks class 1, which the target labels have
    with pytest.warns(DataWarning, match=r"target_labeled\[1\] \(y\) has classes absent from the source labels") as w:
        compare_strategies((xs2, ys2), shift.target_unlabeled, target_labeled=(xl, yl3), num_classes=3, folds=None,
                           strategies=["naive", "scratch"], **TINY)
    absent = [x for x in w if "absent from the source" in str(x.message)]
    assert len(absent) == 1 and absent[0].filename == __file__


def test_a_shuffling_target_label_loader_gives_the_same_estimate_for_the_same_seed(shift):
    xl, yl = (torch.as_tensor(v) for v in shift.target_labeled)
    loader = DataLoader(TensorDataset(xl.float(), yl), batch_size=8, shuffle=True)
    means = []
    for _ in range(3):
        torch.manual_seed(len(means))  # the caller's RNG moves between the calls, as it does in a session
        r = compare_strategies(shift.source, shift.target_unlabeled, target_labeled=loader, folds=3, seed=0,
                               strategies=["scratch"], **TINY)
        means.append((r.estimate["scratch"].mean, r.estimate["scratch"].folds))
    assert means[0] == means[1] == means[2]


def test_one_class_target_labels_still_fine_tune_with_a_warning(shift):
    xl, yl = shift.target_labeled
    keep = np.asarray(yl) == 0
    t = TwoStageTrainer(None, num_classes=2, progress=False, **TINY)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t.fit(shift.source, shift.target_unlabeled, (xl[keep], yl[keep]))
    assert [str(x.message)[:45] for x in w] == ["target_labeled has no sample of class(es) [1]"]
