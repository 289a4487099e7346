"""Before training (pytl.transfer_feasibility, rank_sources, the CLI): each term of Ben-David's bound against
problems where it is known, the verdicts, the ranking of candidate sources, and bad input."""

import numpy as np
import pytest
import torch

from pytl.data import make_domain_shift
from pytl.diagnostics import domain_divergence, rank_sources, transfer_feasibility
from pytl.diagnostics.divergence import verdict
from pytl.cli import exit_status as cli_exit_code

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n, seed, centre=0.0):
    """Two well separated Gaussian classes along the first axis (a linear class fits them), 3 features."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = g.normal(size=(n, 3)) * 0.5
    x[:, 0] += np.where(y == 1, 1.5, -1.5)
    x[:, 1] += centre
    return x, y


def test_identical_domains_have_no_divergence_and_lambda_twice_the_source_error():
    xs, ys = _blobs(800, 0)
    xt, yt = _blobs(800, 1)
    xl, yl = _blobs(60, 2)
    r = transfer_feasibility((xs, ys), xt, (xl, yl))
    # eps_S by hand: the same linear split, its error on the held-out half, is the Bayes error here (~0.1%)
    assert r.source_error.value < 0.03 and r.source_error.low <= r.source_error.value <= r.source_error.high
    assert r.divergence.value < 0.1 and r.proxy_a_distance < 0.2
    # lambda* = eps_S(h*) + eps_T(h*): one joint hypothesis, two errors of the same size on identical domains
    assert r.joint_error.value == pytest.approx(2 * r.source_error.value, abs=0.05)
    assert r.bound.value == pytest.approx(r.source_error.value + r.divergence.value + r.joint_error.value)
    assert r.bound.low <= r.bound.value <= r.bound.high
    assert r.p_value > 0.05 and r.verdict == "promising"


def test_disjoint_supports_give_a_proxy_a_distance_of_two():
    xs, ys = _blobs(400, 0)
    xt, _ = _blobs(400, 1, centre=25.0)  # moved far along an axis the labels do not use
    r = transfer_feasibility((xs, ys), xt)
    assert r.proxy_a_distance == pytest.approx(2.0) and r.divergence.value == pytest.approx(1.0)
    assert r.joint_error.value is None and r.bound.value is None and "unknown" in r.explain()
    assert r.verdict == "adapt the domains"


def test_a_label_flipped_target_has_a_large_lambda_while_the_mmd_sees_nothing():
    # the 180° case of the divergence sweep in its purest form: the same inputs, the labels swapped
    xs, ys = _blobs(800, 0)
    xt, _ = _blobs(800, 1)
    xl, yl = _blobs(60, 2)
    r = transfer_feasibility((xs, ys), xt, (xl, 1 - yl))
    assert r.p_value > 0.05 and r.mmd2 < 0.01 and r.divergence.value < 0.1
    assert r.joint_error.value > 0.4  # no linear hypothesis is right on both
    assert r.target_error.value > 0.9 and r.scratch_error.value < 0.1
    assert r.verdict == "change the source"
    assert "pick a different source" in r.explain()


def test_the_tutorial_problem_is_far_apart_but_adaptable():
    d = make_domain_shift(0)
    r = transfer_feasibility(d.source, d.target_unlabeled, d.target_labeled)
    assert r.proxy_a_distance > 1.5 and r.verdict == "adapt the domains"
    # measured: the source classifier on the target labels errs more than one trained on them
    assert r.target_error.value > r.scratch_error.value
    assert "source error" in r.table() and "verdict" in r.table()


def test_features_are_applied_first():
    xs, ys = _blobs(400, 0)
    xt, _ = _blobs(400, 1)
    xl, yl = _blobs(40, 2)
    seen = []

    def drop_the_label_axis(x):
        seen.append(x.shape)
        return x[:, 1:]

    r = transfer_feasibility((xs, ys), xt, (xl, yl), features=drop_the_label_axis)
    assert r.source_error.value > 0.3  # the informative axis is gone: chance level
    assert seen and all(s[1] == 3 for s in seen)
    net = torch.nn.Linear(3, 5)
    r2 = transfer_feasibility((xs, ys), xt, features=net)
    assert r2.num_source == 400 and net.training  # the module's mode is restored


def test_domain_divergence_agrees_when_a_classifier_separates_the_domains():
    # MMD² moderate, proxy A-distance 2: the report says high, as the feasibility report's divergence does
    assert verdict(0.26, 0.002, 0.05, pad=2.0) == "high"
    assert verdict(0.26, 0.002, 0.05, pad=0.8) == "moderate"
    assert verdict(0.05, 0.002, 0.05, pad=0.8) == "moderate"
    assert verdict(0.05, 0.002, 0.05, pad=0.3) == "low"
    assert verdict(0.9, 0.2, 0.05, pad=2.0) == "low"  # not significant
    xs, _ = _blobs(300, 0)
    xt, _ = _blobs(300, 1, centre=25.0)
    assert domain_divergence(xs, xt, num_permutations=100).verdict == "high"


def test_rank_sources_puts_the_rotated_and_flipped_sources_last():
    target = make_domain_shift(0, rotation=0.0, shift=(0.0, 0.0), n_target_labeled=60)
    sources = {f"rot{a}": make_domain_shift(1, rotation=float(a), shift=(0.0, 0.0), n_target_test=800).target_test
               for a in (180, 0, 90)}
    ranking = rank_sources(target.target_unlabeled, sources, target.target_labeled)
    assert ranking.key == "bound" and ranking.order == ["rot0", "rot90", "rot180"]
    assert set(ranking.reports) == set(sources)
    assert ranking.order[0] in ranking.explain() and "rot180" in ranking.table()
    unlabeled = rank_sources(target.target_unlabeled, {"a": sources["rot0"]})
    assert unlabeled.key == "divergence" and unlabeled.order == ["a"]


def test_bad_input_is_a_clear_error():
    xs, ys = _blobs(40, 0)
    xt, _ = _blobs(40, 1)
    cases = [
        (lambda: transfer_feasibility((xs, ys), xt[:, :2]), ValueError, "same number of features"),
        (lambda: transfer_feasibility((xs, ys), xt, (xt[:3], ys[:3])), ValueError, "at least 4 labelled"),
        (lambda: transfer_feasibility((xs, ys), xt, (xt[:6], ys[:6] + 5), num_classes=2), ValueError,
         "labels must lie in \\[0, 2\\)"),
        (lambda: transfer_feasibility((xs, ys), xt, features="embed"), TypeError, "features must be a callable"),
        (lambda: transfer_feasibility((xs, ys), xt, classifier="svm"), ValueError, "classifier must be one of"),
        (lambda: transfer_feasibility((xs, ys),
                                      torch.utils.data.DataLoader(torch.as_tensor(xt), batch_size=8)), TypeError,
         "not a DataLoader"),
        (lambda: rank_sources(xt, {}), TypeError, "non-empty mapping"),
    ]
    for call, exc, fragment in cases:
        with pytest.raises(exc, match=fragment):
            call()


def test_cli(tmp_path, capsys):
    d = make_domain_shift(0, n_source=300, n_target_unlabeled=300, n_target_labeled=30)
    np.savez(tmp_path / "src.npz", X=d.source[0], y=d.source[1])
    np.save(tmp_path / "tgt.npy", d.target_unlabeled)
    np.savetxt(tmp_path / "tl.csv", np.column_stack([d.target_labeled[0], d.target_labeled[1]]), delimiter=",")
    near = make_domain_shift(1, rotation=0.0, shift=(0.0, 0.0), n_source=300)
    np.savez(tmp_path / "near.npz", X=near.source[0], y=near.source[1])
    assert cli_exit_code(["feasibility", str(tmp_path / "src.npz"), str(tmp_path / "tgt.npy"),
                          "--target-labeled", str(tmp_path / "tl.csv")]) == 0
    out = capsys.readouterr().out
    assert "joint error lambda*" in out and "Verdict: adapt the domains" in out
    assert cli_exit_code(["rank-sources", str(tmp_path / "tgt.npy"), str(tmp_path / "src.npz"),
                          str(tmp_path / "near.npz"), "--target-labeled", str(tmp_path / "tl.csv")]) == 0
    assert "ranked by the estimated bound" in capsys.readouterr().out
    # a target file given as the labelled source: its last column is no label
    assert cli_exit_code(["feasibility", str(tmp_path / "tgt.npy"), str(tmp_path / "tgt.npy")]) == 2
    assert "labels must be non-negative integers" in capsys.readouterr().err
