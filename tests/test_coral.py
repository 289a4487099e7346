"""Deep CORAL (pytl.coral_loss, CORALLoss) against numpy's covariance, gradcheck, and as the trainer's
stage-1 alignment (TwoStageTrainer(alignment="coral"))."""

import numpy as np
import pytest
import torch

import pytl
from pytl import TwoStageTrainer
from pytl.data import make_domain_shift
from pytl.train.alignments import coral as coral_mod  # where the coral term calls its loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(xs: np.ndarray, xt: np.ndarray) -> float:
    d = xs.shape[1]
    diff = np.cov(xs, rowvar=False, ddof=1) - np.cov(xt, rowvar=False, ddof=1)
    return float((diff**2).sum() / (4 * d * d))


def test_matches_numpy_covariances():
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((50, 7))
    xt = rng.standard_normal((31, 7)) @ rng.standard_normal((7, 7)) + 3.0
    got = pytl.coral_loss(torch.tensor(xs), torch.tensor(xt))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_reference(xs, xt), rel=1e-12)
    assert pytl.CORALLoss()(torch.tensor(xs), torch.tensor(xt)).item() == got.item()
    # float32 and half inputs, and features of any shape (flattened)
    assert pytl.coral_loss(torch.tensor(xs).float(), torch.tensor(xt).float()).item() == pytest.approx(got.item(), rel=1e-5)
    half = pytl.coral_loss(torch.tensor(xs).half(), torch.tensor(xt).half())
    assert half.dtype == torch.float32 and half.item() == pytest.approx(got.item(), rel=1e-2)
    img = pytl.coral_loss(torch.tensor(xs).reshape(50, 7, 1), torch.tensor(xt).reshape(31, 1, 7))
    assert img.item() == pytest.approx(got.item(), rel=1e-12)


def test_known_values():
    x = torch.randn(40, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert pytl.coral_loss(x, x + 10.0).item() == pytest.approx(0.0, abs=1e-20)  # translation: same covariance
    # scaling by a: C_t = a^2 C_s, so the loss is (a^2 - 1)^2 ||C_s||^2 / (4 d^2)
    cs = np.cov(x.numpy(), rowvar=False)
    want = (2.0**2 - 1) ** 2 * (cs**2).sum() / (4 * 25)
    assert pytl.coral_loss(x, 2.0 * x).item() == pytest.approx(want, rel=1e-12)
    one = pytl.coral_loss(x[:1], x)  # a single row has covariance 0
    assert one.item() == pytest.approx((cs**2).sum() / 100, rel=1e-12)


def test_gradcheck():
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(12, 4, dtype=torch.float64, generator=g, requires_grad=True)
    xt = torch.randn(9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(pytl.coral_loss, (xs, xt))


@pytest.mark.parametrize("args,exc,fragment", [
    ((np.zeros((3, 2)), torch.zeros(3, 2)), TypeError, "source must be a torch.Tensor"),
    ((torch.zeros(3), torch.zeros(3, 2)), ValueError, "source must be a non-empty batch"),
    ((torch.zeros(0, 2), torch.zeros(3, 2)), ValueError, "source must be a non-empty batch"),
    ((torch.zeros(3, 2), torch.zeros(3, 3)), ValueError, "same number of features"),
])
def test_bad_input(args, exc, fragment):
    with pytest.raises(exc, match=fragment):
        pytl.coral_loss(*args)


@pytest.fixture(scope="module")
def shift():
    return make_domain_shift(0, n_source=300, n_target_unlabeled=300, n_target_test=200, n_target_labeled=20)


def test_trainer_aligns_with_coral_on_the_embeddings(shift, monkeypatch):
    seen = []
    real = coral_mod.coral_loss

    def spy(zs, zt):
        seen.append((zs.shape, zt.shape, zs.requires_grad))
        return real(zs, zt)

    monkeypatch.setattr(coral_mod, "coral_loss", spy)
    tr = TwoStageTrainer(alignment="coral", lambda_mmd=1.0, batch_size=50, target_batch_size=30, align_epochs=2,
                         progress=False)
    tr.align(shift.source, shift.target_unlabeled)
    assert len(seen) == 12 and seen[0][0][0] == 50 and seen[0][1][0] == 30 and seen[0][2]
    rec = tr.history["align"][0]
    assert rec["mmd2"] is None and rec["coral"] > 0
    assert rec["loss"] == pytest.approx(rec["ce"] + 1.0 * rec["coral"], rel=1e-5)
    assert "alignment='coral'" in repr(tr)


def test_coral_alignment_lowers_the_covariance_gap(shift):
    kw = dict(align_epochs=15, progress=False, seed=0)
    plain = TwoStageTrainer(lambda_mmd=0.0, **kw)
    plain.align(shift.source)
    aligned = TwoStageTrainer(alignment="coral", lambda_mmd=2000.0, **kw)  # CORAL is ~1e-4 here: see the docs
    aligned.align(shift.source, shift.target_unlabeled)

    def gap(tr):  # relative, so that a network cannot pass by shrinking its features
        with torch.no_grad():
            zs = tr.model.embed(torch.as_tensor(shift.source[0])).double().numpy()
            zt = tr.model.embed(torch.as_tensor(shift.target_unlabeled)).double().numpy()
        cs, ct = np.cov(zs, rowvar=False), np.cov(zt, rowvar=False)
        return np.linalg.norm(cs - ct) / (np.linalg.norm(cs) + np.linalg.norm(ct))

    assert gap(aligned) < 0.5 * gap(plain)


def test_alignment_is_checked():
    with pytest.raises(ValueError, match="alignment must be one of"):
        TwoStageTrainer(alignment="wasserstein")
    with pytest.raises(ValueError, match="target_unlabeled is required for CORAL alignment"):
        TwoStageTrainer(alignment="coral", progress=False, align_epochs=1).align(
            make_domain_shift(0, n_source=20, n_target_unlabeled=20, n_target_test=10, n_target_labeled=4).source)


# ------------------------------------------------------------------ compare_strategies' CORAL baselines


def test_compare_strategies_all_runs_the_coral_baselines(shift):
    from pytl.experiments import STRATEGIES, compare_strategies

    r = compare_strategies(**shift.as_dict(), strategies="all", align_epochs=2, finetune_epochs=2, num_threads=1,
                           lambda_coral=500.0)
    assert list(r.accuracy) == list(STRATEGIES) and {"coral_only", "coral"} <= set(r.estimate)
    align = r.histories["coral_only"]["align"]
    assert len(align) == 2 and align[0]["coral"] > 0 and align[0]["mmd2"] is None
    assert r.histories["coral"]["align"] == align and len(r.histories["coral"]["finetune"]) == 2
    assert "CE + 500·CORAL" in r.table() and "coral_only, then 2 epochs on target labels" in r.table()
    # coral starts from coral_only's weights: stage 1 with CORAL differs from stage 1 without it
    differs = [not torch.equal(a, b) for a, b in zip(r.models["coral_only"].parameters(),
                                                      r.models["source_only"].parameters())]
    assert any(differs)


def test_without_target_labels_coral_only_is_ranked_and_coral_skipped(shift):
    from pytl.experiments import compare_strategies

    data = shift.as_dict()
    data.pop("target_labeled")
    r = compare_strategies(**data, strategies=["source_only", "coral_only", "coral"], align_epochs=2, num_threads=1)
    assert set(r.label_free) == {"source_only", "coral_only"} and r.skipped == {"coral": "no target labels"}
    assert r.best in ("source_only", "coral_only")
