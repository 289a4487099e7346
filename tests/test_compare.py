"""pytl.experiments' comparison: the strategies, the report, the negative-transfer rule, and the demo's claim."""

import dataclasses

import numpy as np
import pytest
import torch

from pytl.experiments import DEFAULT_STRATEGIES, ComparisonReport, EnsembleModel, compare_strategies, summarize
from pytl.data import make_domain_shift
from pytl.models import default_model

TINY = dict(align_epochs=2, finetune_epochs=2, num_threads=1)


@pytest.fixture(scope="module")
def shift():
    return make_domain_shift(0, n_source=200, n_target_unlabeled=200, n_target_test=300)


def fake_report(**acc):
    return ComparisonReport(accuracy=acc, embedding_mmd2={}, seconds={}, skipped={}, models={}, histories={},
                            config={}, seed=0)


def test_all_strategies_run_and_the_ensemble_averages_probabilities(shift):
    r = compare_strategies(**shift.as_dict(), seed=0, **TINY)
    assert list(r.accuracy) == list(DEFAULT_STRATEGIES)  # the tutorial's six; strategies="all" adds CORAL
    assert all(0.0 <= a <= 1.0 for a in r.accuracy.values())
    xt, yt = shift.target_test
    p_mmd, p_scratch, p_ens = (r.predict_proba(s, xt) for s in ("mmd", "scratch", "ensemble"))
    assert np.allclose(p_ens, (p_mmd + p_scratch) / 2, atol=1e-6)  # numpy in, numpy out
    assert r.accuracy["ensemble"] == pytest.approx(float((p_ens.argmax(1) == yt).mean()))
    assert r.accuracy["mmd"] == pytest.approx(float((p_mmd.argmax(1) == yt).mean()))
    assert set(r.embedding_mmd2) == set(DEFAULT_STRATEGIES) - {"ensemble"}
    # naive/mmd keep their stage-1 history and add the fine-tuning one
    assert len(r.histories["mmd"]["align"]) == 2 and len(r.histories["mmd"]["finetune"]) == 2
    assert len(r.histories["scratch"]["finetune"]) == 2  # scratch_epochs defaults to finetune_epochs
    assert "target labels only, 2 epochs from random weights" in r.table()


def test_zero_budgets_leave_every_strategy_at_the_same_initial_model(shift):
    r = compare_strategies(**shift.as_dict(), seed=3, align_epochs=0, finetune_epochs=0, num_threads=1)
    assert len(set(r.accuracy.values())) == 1  # identical initial weights for every strategy
    for s in ("source_only", "mmd", "scratch"):
        for a, b in zip(r.models[s].parameters(), r.models["naive"].parameters()):
            assert torch.equal(a, b)


def test_same_seed_same_report_and_the_seed_matters(shift):
    a = compare_strategies(**shift.as_dict(), seed=1, **TINY)
    b = compare_strategies(**shift.as_dict(), seed=1, **TINY)
    c = compare_strategies(**shift.as_dict(), seed=2, **TINY)
    assert a.accuracy == b.accuracy and a.embedding_mmd2 == b.embedding_mmd2
    assert a.embedding_mmd2 != c.embedding_mmd2


def test_mmd_scope_reaches_the_trainers_and_is_moot_in_one_process(shift):
    # one process: the global batch is the rank's batch, so both scopes train the same model
    g = compare_strategies(**shift.as_dict(), seed=4, strategies=["mmd"], **TINY)
    p = compare_strategies(**shift.as_dict(), seed=4, strategies=["mmd"], mmd_scope="per_rank", **TINY)
    assert g.config["mmd_scope"] == "global" and p.config["mmd_scope"] == "per_rank"
    assert g.accuracy == p.accuracy and g.embedding_mmd2 == p.embedding_mmd2


def test_without_target_labels_only_unsupervised_strategies_run(shift):
    d = shift.as_dict()
    d.pop("target_labeled")
    r = compare_strategies(**d, **TINY)
    assert list(r.accuracy) == ["source_only", "mmd_only"]
    assert set(r.skipped) == {"scratch", "naive", "mmd", "ensemble"}
    assert r.negative_transfer is None
    assert "scratch: skipped, no target labels" in r.table()


def test_strategy_subset_and_a_given_model(shift):
    torch.manual_seed(0)
    model = default_model(2, 2, hidden_sizes=(8,))
    r = compare_strategies(**shift.as_dict(), strategies=["naive", "scratch"], model=model, scratch_epochs=5, **TINY)
    assert list(r.accuracy) == ["scratch", "naive"]
    assert len(r.histories["scratch"]["finetune"]) == 5
    assert r.models["naive"].encoder.blocks[0][0].out_features == 8
    assert model.encoder.blocks[0][0].weight.grad is None  # the given model is copied, never trained


@pytest.mark.parametrize("acc, expected", [
    (dict(scratch=0.9, naive=0.8, mmd=0.85), True),
    (dict(scratch=0.9, naive=0.95, mmd=0.85), False),
    (dict(scratch=0.9, naive=0.8, mmd=0.9), False),  # equal is not below
    (dict(scratch=0.9, mmd=0.89), True),
    (dict(naive=0.8, mmd=0.85), None),
    (dict(scratch=0.9, source_only=0.5), None),
])
def test_negative_transfer_rule(acc, expected):
    assert fake_report(**acc).negative_transfer is expected


def test_table_and_summary():
    r1 = fake_report(source_only=0.5, scratch=0.8, naive=0.7, mmd=0.9)
    r2 = fake_report(source_only=0.6, scratch=0.9, naive=0.7, mmd=0.7)
    text = r1.table()
    for s in ("source_only", "scratch", "naive", "mmd"):
        assert s in text
    assert "90.0%" in text and "negative transfer: no (best transfer: mmd 90.0% vs scratch 80.0%)" in text
    s = summarize([r1, r2])
    assert s.mean == pytest.approx(dict(source_only=0.55, scratch=0.85, naive=0.7, mmd=0.8))
    assert s.std["scratch"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert s.negative_transfer is True  # best mean transfer 0.8 < scratch 0.85
    assert "85.0% ± 7.1" in s.table()
    with pytest.raises(TypeError):
        summarize([])


def test_any_feature_shape(shift):
    g = torch.Generator().manual_seed(0)

    def domain(n, offset):
        y = torch.arange(n) % 3
        x = torch.randn(n, 1, 2, 3, generator=g) + y.view(-1, 1, 1, 1) * 2.0 + offset
        return x, y

    src, tst, lab = domain(60, 0.0), domain(30, 1.0), domain(9, 1.0)
    r = compare_strategies(src, domain(40, 1.0)[0], tst, lab, folds=3, **TINY)
    assert r.models["mmd"].encoder.in_features == 6 and r.models["mmd"].num_classes == 3


def test_a_missing_target_class_warns_at_the_callers_line(shift):
    xl, yl = shift.target_labeled
    keep = yl == 0
    with pytest.warns(UserWarning, match=r"no sample of class\(es\) \[1\]") as caught:
        compare_strategies(shift.source, shift.target_unlabeled, shift.target_test, (xl[keep], yl[keep]),
                           num_classes=2, strategies=["scratch"], align_epochs=0, finetune_epochs=0)
    assert {w.filename for w in caught if "no sample of class" in str(w.message)} == {__file__}


def test_ensemble_model_averages_probabilities():
    class Const(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.tensor(logits)

        def forward(self, x):
            return self.logits.expand(x.shape[0], -1)

    ens = EnsembleModel([Const([0.0, 0.0]), Const([0.0, float(np.log(3.0))])])
    probs = torch.softmax(ens(torch.zeros(2, 1)), dim=1)
    assert torch.allclose(probs, torch.tensor([[0.375, 0.625]] * 2))


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(torch.zeros(4, 2))


BAD = [
    ("unknown option", dict(epochs=3), TypeError, "unknown option"),
    ("model without embed", dict(model=torch.nn.Sequential(torch.nn.Linear(2, 2))), TypeError, "embed"),
    ("model with too few classes", dict(model=default_model(2, 2), num_classes=3), ValueError, "outputs 2 classes"),
    ("feature mismatch", dict(target_test=(np.zeros((5, 3)), np.zeros(5, dtype=int))), ValueError,
     "target_test has samples of shape 3 but source has 2"),
    ("test label out of range", dict(num_classes=2, target_test=(np.zeros((5, 2)), np.array([0, 1, 2, 0, 1]))),
     ValueError, "target_test"),
    ("too few labels", dict(target_labeled=(np.zeros((1, 2)), np.array([1]))), ValueError, "fewer than the 2 classes"),
    ("nan", dict(target_unlabeled=np.full((5, 2), np.nan)), ValueError, "NaN"),
    ("bad strategy", dict(strategies=["mmd", "wasserstein"]), ValueError, "unknown strategy"),
    ("bad epochs", dict(align_epochs=-1), ValueError, "align_epochs"),
    ("bad scratch epochs", dict(scratch_epochs=2.5), TypeError, "scratch_epochs"),  # a float for an int
    ("bad policy", dict(finetune_policy="freeze"), TypeError, "finetune_policy"),
    ("iterable dataset", dict(target_unlabeled=Stream()), TypeError, "IterableDataset"),
    ("folds > labels per class", dict(folds=26), ValueError, r"folds=26 but class 0 has 25, class 1 has 25"),
    ("one fold", dict(folds=1), ValueError, "folds must be an int >= 2"),
    ("patience without validation", dict(patience=3), ValueError, "patience=3 needs finetune_validation"),
    ("validation fraction", dict(finetune_validation=1.5), ValueError, "finetune_validation"),
    ("float folds", dict(folds=2.0), TypeError, r"folds \(None or 0: no cross-validation\) must be an int"),
    ("negative folds", dict(folds=-1), ValueError, r"folds \(None or 0: no cross-validation\) must be an int >= 0"),
    ("unlabelled target-labeled loader", dict(target_labeled=torch.utils.data.DataLoader(torch.zeros(8, 2))),
     TypeError, "target_labeled must yield"),
    ("bad mmd_scope", dict(mmd_scope="local"), ValueError, "mmd_scope"),
    ("float seed", dict(seed=1.5), TypeError, "seed must be an int >= 0"),
    ("negative seed", dict(seed=-1), ValueError, "seed must be an int >= 0"),
    ("negative scratch epochs", dict(scratch_epochs=-1), ValueError, "scratch_epochs must be an int >= 0"),
    ("strategies not names", dict(strategies=3), TypeError, "strategies must be a sequence"),
    ("no strategy", dict(strategies=[]), ValueError, "strategies is empty"),
]


@pytest.mark.parametrize("case, change, exc, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_rejected_before_training(shift, monkeypatch, case, change, exc, words):
    import pytl.experiments.comparison as cmp

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(cmp.TwoStageTrainer, "align", no_training)
    monkeypatch.setattr(cmp.TwoStageTrainer, "finetune", no_training)
    args = {**shift.as_dict(), **TINY, **change}
    with pytest.raises(exc, match=words):
        compare_strategies(**args)


def test_demo_default_mmd_beats_scratch_and_matches_naive_over_seeds():
    """The issue's acceptance test, on the demo's exact default (the tutorial's recipe).

    Averaged over seeds 0-3, λ chosen by the default "auto" (10 seeds give mmd 92.5%, scratch 89.2%, naive 86.2%
    with the 256-wide default MLP: docs/python_layer.md); margins inside what those seeds show (+2.4 points over
    scratch, +5.2 over naive; +4.1 and +3.3 with the 64-wide MLP of before), so that a change that loses the
    benefit of alignment fails here."""
    reports = []
    for seed in range(4):
        data = make_domain_shift(seed)
        reports.append(compare_strategies(**data.as_dict(), seed=seed, strategies=["scratch", "naive", "mmd"],
                                          num_threads=1))
    mean = summarize(reports).mean
    assert mean["mmd"] - mean["scratch"] >= 0.015, mean
    assert mean["mmd"] - mean["naive"] >= 0.005, mean
    assert summarize(reports).negative_transfer is False


def test_explain_names_the_baseline_the_gap_and_no_remedies_when_transfer_pays():
    report = fake_report(scratch=0.80, naive=0.84, mmd=0.90, ensemble=0.88)
    text = report.explain()
    assert "80.0%" in text and "mmd, reaches 90.0%" in text and "+10.0 points" in text
    assert "ensemble of mmd and scratch reaches 88.0%" in text
    assert "Transfer pays" in text and "Remedies" not in text


def test_explain_lists_the_remedies_cheapest_first_on_negative_transfer():
    report = fake_report(scratch=0.90, naive=0.70, mmd=0.85)
    assert report.negative_transfer
    text = report.explain()
    assert "-5.0 points" in text and "negative transfer" in text
    order = [text.index(w) for w in ("fewer layers", "L2SP", "change the source", "ensemble")]
    assert order == sorted(order)


def test_explain_without_target_labels_says_why_it_cannot_judge():
    text = fake_report(source_only=0.6, mmd_only=0.8).explain()
    assert "No negative-transfer check" in text and "target labels" in text


def test_folds_zero_and_none_are_the_one_off_value(shift):
    """The command line's folds=0 and the API's None both skip the cross-validation, with the same models."""
    off = {f: compare_strategies(**shift.as_dict(), folds=f, strategies=["scratch"], **TINY) for f in (None, 0)}
    for r in off.values():
        assert r.estimate == {} and r.config["folds"] is None
    assert off[None].accuracy == off[0].accuracy


def test_explain_names_one_transfer_strategy_the_one_the_verdict_compares():
    """Without a test set the verdict compares scratch with the transfer strategy of the best CV estimate; the
    paragraph must not call another one (the highest mean accuracy) "the best transfer strategy" too."""
    report = fake_report()
    report.estimate = {}  # scores() falls back to the estimates below
    y = torch.tensor([0, 1] * 10)
    from pytl.experiments.estimate import Estimate, compare_paired
    lp = {s: torch.log_softmax(torch.randn(20, 2, generator=torch.Generator().manual_seed(i)).double(), 1)
          for i, s in enumerate(("scratch", "naive", "mmd"))}
    folds = [torch.arange(0, 10), torch.arange(10, 20)]
    report.estimate = {s: Estimate.from_predictions(v, y, folds) for s, v in lp.items()}
    report.estimate["naive"] = dataclasses.replace(report.estimate["naive"], mean=0.95)  # the highest accuracy
    report.paired = compare_paired("mmd", "scratch", report.estimate["mmd"].correct,
                                   report.estimate["scratch"].correct, "cross-validation over 20 target labels")
    text = report.explain()
    assert "the best transfer strategy, mmd" in text and "naive" not in text


def test_the_uses_column_says_what_shaped_each_model(shift):
    from pytl.freezing import FreezeFirst
    r = compare_strategies(**shift.as_dict(), seed=0, folds=None, strategies=["scratch", "naive", "mmd"],
                           finetune_policy=FreezeFirst(1), class_weights=[1.0, 2.0], finetune_validation=0.3,
                           patience=1, finetune_lr=0.1, align_epochs=2, finetune_epochs=40, num_threads=1)
    table = r.table()
    naive = next(line for line in table.splitlines() if line.startswith("naive"))
    assert "fine-tuning policy FreezeFirst(1)" in naive and "source class weights given" in naive
    stopped = {s: len(r.histories[s]["finetune"]) for s in ("scratch", "naive", "mmd")
               if len(r.histories[s]["finetune"]) < 40}
    assert stopped  # at this learning rate the held-out loss turns within a few epochs
    for s, ran in stopped.items():
        line = next(line for line in table.splitlines() if line.startswith(s + " "))
        assert f"fine-tuning stopped early after {ran} epochs" in line
    scratch = next(line for line in table.splitlines() if line.startswith("scratch"))
    assert "policy" not in scratch and "class weights" not in scratch
    assert "except that a strategy trained without target labels must also be significantly more accurate" in \
        compare_strategies(**shift.as_dict(), seed=0, folds=2, strategies=["scratch"], **TINY).table()


def test_a_missing_target_class_is_warned_once_for_the_whole_comparison(shift):
    xl, yl = shift.target_labeled
    keep = yl == 0
    with pytest.warns(UserWarning) as caught:
        compare_strategies(shift.source, shift.target_unlabeled, shift.target_test, (xl[keep], yl[keep]),
                           num_classes=2, folds=None, strategies=["scratch", "naive", "mmd", "ensemble"], **TINY)
    assert [str(w.message)[:42] for w in caught] == ["target_labeled has no sample of class(es) [1]"[:42]]
