"""Stage 1's collapse (pytl.train.collapse): a run whose alignment term takes over from the classification, the
source accuracy falling far below its own best and staying there, or that maps the target onto one class while
it classifies the source, ends with a TrainingWarning that says so."""

from __future__ import annotations

import warnings

import pytest
import torch

import pytl
from pytl.experiments import compare_strategies
from pytl.train import TrainingWarning, TwoStageTrainer
from pytl.train.collapse import COLLAPSE_DROP, ClassCounts, class_share_message, collapse_message


def records(accuracies):
    return [{"stage": "align", "epoch": k, "train_acc": a} for k, a in enumerate(accuracies)]


def test_the_rule_compares_the_last_three_epochs_with_the_best_one():
    message = collapse_message(records([0.3, 0.9, 1.0, 0.95, 0.4, 0.2, 0.3]), "coral_only (coral, λ=1000)",
                               "lambda_coral")
    assert message.startswith("coral_only (coral, λ=1000): stage 1 collapsed")
    assert "from 1.00 (epoch 2) to 0.30" in message and 'lambda_coral takes a number or a grid' in message  # median of 0.4, 0.2, 0.3
    assert "to 0.20" in collapse_message(records([0.3, 1.0, 0.9, 0.2, 0.2]), "x", "o")  # the last two epochs
    assert collapse_message(records([0.3, 0.9, 1.0, 0.2, 0.9, 0.95]), "x", "o") is None  # one bad epoch, recovered
    assert collapse_message(records([0.3, 0.9, 1.0, 0.9, 0.8, 0.76]), "x", "o") is None  # 0.2 < COLLAPSE_DROP
    assert collapse_message(records([1.0, 0.1, 0.1]), "x", "o") is None  # too short to tell
    assert COLLAPSE_DROP == 0.25


def step(progress):
    """λ off for the first half of stage 1, then on: the model first learns the source, then the term takes over."""
    return 0.0 if progress < 0.5 else 1.0


@pytest.fixture(scope="module")
def shift():
    return pytl.make_domain_shift(0, n_source=200, n_target_unlabeled=200, n_target_labeled=30, n_target_test=200)


def test_a_collapsing_run_warns_with_its_own_numbers(shift):
    t = TwoStageTrainer(None, alignment="coral", lambda_align=1e6, lambda_schedule=step, align_epochs=20, seed=0,
                        num_threads=1, progress=False)
    with pytest.warns(TrainingWarning, match="collapsed") as seen:
        t.align(shift.source, shift.target_unlabeled)
    acc = [r["train_acc"] for r in t.history["align"]]
    best, last = max(acc), sorted(acc[-3:])[1]
    assert best - last >= COLLAPSE_DROP and best >= 0.8  # measured: 0.84 → 0.51 (chance: 0.5)
    text = str(seen[0].message)
    assert text.startswith("the run (coral, λ=1e+06)")
    assert f"from {best:.2f} (epoch {acc.index(best)}) to {last:.2f}" in text


@pytest.mark.parametrize("kw", [dict(alignment="coral", lambda_align=1000.0),  # the default λ: no collapse here
                                dict(alignment="coral", lambda_align=0.0, lambda_schedule=step)])  # no term
def test_a_healthy_run_does_not_warn(shift, kw):
    t = TwoStageTrainer(None, align_epochs=20, seed=0, num_threads=1, progress=False, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingWarning)
        t.align(shift.source, shift.target_unlabeled)


def test_compare_strategies_names_the_collapsed_strategy(shift):
    with pytest.warns(TrainingWarning, match=r"^coral_only \(coral, λ=1e\+06\): stage 1 collapsed"):
        r = compare_strategies(**shift.as_dict(), strategies=["coral_only"], lambda_coral=1e6, lambda_schedule=step,
                               align_epochs=20, folds=None, seed=0, num_threads=1, progress=False)
    x, y = (torch.as_tensor(v) for v in shift.source)
    with torch.no_grad(), pytl.train.eval_mode(r.models["coral_only"]):  # the source no longer classified
        assert (r.models["coral_only"](x.float()).argmax(1) == y).double().mean() <= 0.6  # measured: 0.53


def counts(source, target):
    c = ClassCounts(len(source))
    c.source, c.target = torch.tensor(source), torch.tensor(target)
    return c


def test_the_class_share_rule_is_halfway_from_the_sources_largest_share_to_one():
    balanced = [10] * 10  # halfway from 10% to 100%: 55%
    assert class_share_message(counts(balanced, [56] + [5] * 8 + [4]), 0.9, "x", "o") is not None
    assert class_share_message(counts(balanced, [54] + [5] * 9 + [1]), 0.9, "x", "o") is None
    assert class_share_message(counts([30, 10], [88, 12]), 0.9, "x", "o") is not None  # 75%: halfway 87.5%
    assert class_share_message(counts([30, 10], [87, 13]), 0.9, "x", "o") is None
    # a model still learning the source (its accuracy below the same mark) is not judged
    assert class_share_message(counts(balanced, [100] + [0] * 9), 0.5, "x", "o") is None
    text = class_share_message(counts(balanced, [0, 0, 90, 10, 0, 0, 0, 0, 0, 0]), 1.0, "mme_only (mme, λ=1)",
                               "lambda_mme")
    assert text.startswith("mme_only (mme, λ=1): stage 1 gives 90% of the unlabelled target rows one class (2)")
    assert "largest class is 10% of its rows" in text and 'lambda_mme takes a number or a grid' in text


def test_a_run_that_maps_the_target_onto_one_class_warns(shift):
    """MME at λ = 1 on the toy: every target row ends in one class (the target is balanced), the source stays
    classified; the warning's class and share are those of the model's own predictions of the target."""
    t = TwoStageTrainer(None, alignment="mme", lambda_align=1.0, align_epochs=30, seed=0, num_threads=1,
                        progress=False)
    with pytest.warns(TrainingWarning, match="one class") as seen:
        t.align(shift.source, shift.target_unlabeled)
    predicted = torch.bincount(torch.as_tensor(t.predict(shift.target_unlabeled)), minlength=2)
    top = int(predicted.argmax())
    assert float(predicted[top]) / float(predicted.sum()) == 1.0  # measured: all 200 rows in class 0
    assert f"gives 100% of the unlabelled target rows one class ({top})" in str(seen[0].message)
    assert t.history["align"][-1]["train_acc"] >= 0.75


def spied(monkeypatch):
    """The runs whose trainer found a failure (collapse.py), whether shown or not."""
    from pytl.train import collapse, steps
    raised = []

    def counting(records, counts, what, option):
        if collapse.collapse_message(records, what, option) or (counts is not None and collapse.class_share_message(
                counts, records[-1]["train_acc"], what, option)):
            raised.append(what)
        return collapse.warn_if_collapsed(records, counts, what, option)

    monkeypatch.setattr(steps, "warn_if_collapsed", counting)
    return raised


def shown_by(shift, **kw):
    # hidden_sizes: the 64-wide MLP the failures below were measured with (the default was 64 wide for 2 features)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = compare_strategies(**shift.as_dict(), folds=3, align_epochs=30, finetune_epochs=2, seed=0, num_threads=1,
                               progress=False, hidden_sizes=(64, 64), **kw)
    return r, [str(w.message).split(": stage 1")[0] for w in seen if w.category is TrainingWarning]


def test_compare_strategies_shows_the_warnings_of_what_it_ships_not_of_its_folds(shift, monkeypatch):
    """ssl_mme at λ = 10 gives most of the target one class in two of the three folds and in the shipped model
    (measured with this seed); shown: the shipped model's warning, once."""
    raised = spied(monkeypatch)
    _, shown = shown_by(shift, strategies=["ssl_mme"], lambda_mme=10.0)
    assert raised == [f"fold {k}/3 ssl_mme (mme, λ=10)" for k in (1, 3)] + ["ssl_mme (mme, λ=10)"]
    assert shown == ["ssl_mme (mme, λ=10)"]


def test_a_lambda_search_shows_the_warning_of_the_lambda_it_chose(shift, monkeypatch):
    raised = spied(monkeypatch)
    r, shown = shown_by(shift, strategies=["mme_only"], lambda_mme=[1.0, 10.0])
    chosen = r.lambdas["mme"].chosen
    assert raised == ["mme_only λ=1 (mme, λ=1)", "mme_only λ=10 (mme, λ=10)"]  # both grid points warn
    assert shown == [f"mme_only λ={chosen:g} (mme, λ={chosen:g})"]
