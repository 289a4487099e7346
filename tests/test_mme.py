"""MME (Saito et al. 2019) as a stage-1 alignment (TwoStageTrainer(alignment="mme"), strategies mme_only, mme and
ssl_mme): its term and both of its gradients against a float64 reference written from the paper's equations,
the labelled target rows in its cross-entropy and out of its entropy, and its prototypes in checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pytl
from pytl.train import TwoStageTrainer
from pytl.train.alignments import ALIGNMENTS
from pytl.train.alignments.mme import TEMPERATURE, CosinePrototypes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shift():
    return pytl.make_domain_shift(0, n_source=200, n_target_unlabeled=200, n_target_labeled=30, n_target_test=200)


def _reference(W, zs, ys, zt, yt, lam):
    """The paper's two objectives on float64 copies: L_C = CE − λ·H for the prototypes, L_F = CE + λ·H for
    the encoder, with cosine logits written out as sums (not the module's normalize/matmul)."""
    def logits(z):
        cos = (z @ W.T) / (z.pow(2).sum(1, keepdim=True).sqrt() * W.pow(2).sum(1).sqrt())
        return cos / TEMPERATURE

    known = yt >= 0
    ce = F.cross_entropy(logits(zs), ys) + F.cross_entropy(logits(zt[known]), yt[known])
    p = torch.softmax(logits(zt[~known]), 1)
    h = -(p * p.log()).sum(1).mean()
    return ce, h


def test_term_and_its_minimax_gradients_match_the_papers_objectives():
    torch.manual_seed(0)
    d, c, lam = 5, 3, 0.3
    zs = torch.randn(7, d, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(6, d, dtype=torch.float64, requires_grad=True)
    ys = torch.randint(0, c, (7,))
    yt = torch.tensor([-1, 2, -1, -1, 0, -1])
    align = ALIGNMENTS["mme"](_run(num_classes=c))
    align.begin(torch.nn.Identity(), None)
    term = align.term(zs, zt, ys, 7, 6, lam, True, None, target_labels=yt)
    head = align.prototypes.network
    assert isinstance(head, CosinePrototypes)
    W = head.prototypes.weight.detach().clone().requires_grad_(True)
    ce, h = _reference(W, zs, ys, zt, yt, lam)
    torch.testing.assert_close(term, ce - lam * h)
    term.backward()
    # the prototypes descend CE − λH (they ascend the entropy) ...
    (g_w,) = torch.autograd.grad(ce - lam * h, W, retain_graph=True)
    torch.testing.assert_close(head.prototypes.weight.grad, g_w)
    # ... and the encoder descends CE + λH (it lowers the entropy), through the reversed gradient
    g_zs, g_zt = torch.autograd.grad(ce + lam * h, [zs, zt])
    torch.testing.assert_close(zs.grad, g_zs)
    torch.testing.assert_close(zt.grad, g_zt)


def test_unlabelled_rows_only_and_class_weights():
    torch.manual_seed(1)
    zs, zt = torch.randn(8, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    ys = torch.tensor([0, 1, 0, 1, 1, 1, 0, 1])
    w = torch.rand(8, dtype=torch.float64)
    align = ALIGNMENTS["mme"](_run(num_classes=2))
    align.begin(torch.nn.Identity(), None)
    got = align.term(zs, zt, ys, 8, 5, 0.5, True, w)
    head = align.prototypes.network
    logits_s = head(zs).detach()
    ce = (w * F.cross_entropy(logits_s, ys, reduction="none")).sum() / w.sum()
    p = torch.softmax(head(zt).detach(), 1)
    torch.testing.assert_close(got.detach(), ce + 0.5 * (p * p.log()).sum(1).mean())


def _run(num_classes):
    from pytl.train.settings import TrainSettings
    from pytl.train.state import RunState

    run = RunState(TrainSettings(alignment="mme"), torch.device("cpu"))
    run.num_classes = num_classes
    return run


def test_trainer_records_the_term_and_prototypes_resume_bit_identically(shift, tmp_path, interrupt_after):
    kw = dict(alignment="mme", lambda_align=0.1, align_epochs=4, finetune_epochs=0, progress=False, seed=3,
              num_threads=1)
    straight = TwoStageTrainer(None, **kw)
    straight.align(shift.source, shift.target_unlabeled)
    recs = straight.history["align"]
    assert all(r["mme"] is not None and r["mmd2"] is None for r in recs)
    assert recs[-1]["loss"] == pytest.approx(recs[-1]["ce"] + recs[-1]["mme"], rel=1e-5)  # λ acts inside the term
    ckpt = str(tmp_path / "ckpt.pt")
    with interrupt_after(2):
        TwoStageTrainer(None, checkpoint=ckpt, **kw).align(shift.source, shift.target_unlabeled)
    saved = torch.load(ckpt, weights_only=True)
    assert set(saved["alignment"]) == {"prototypes", "optimizer"}
    resumed = TwoStageTrainer(None, **kw)
    resumed.align(shift.source, shift.target_unlabeled, resume_from=ckpt)
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.history == straight.history


def test_ssl_mme_in_compare_strategies_learns_from_the_target_labels(shift):
    r = pytl.compare_strategies(**shift.as_dict(), strategies=["scratch", "mme_only", "ssl_mme"], folds=None,
                                align_epochs=20, finetune_epochs=10, num_threads=1)
    assert {"mme_only", "ssl_mme"} <= set(r.accuracy)
    assert r.histories["ssl_mme"]["align"][-1]["mme"] is not None
    assert "prototypes" in r.table()
    # stage 1 fits the rotated target's labels too: ssl_mme at least matches scratch (the bar)
    assert r.accuracy["ssl_mme"] >= r.accuracy["scratch"] - 0.02, r.accuracy
