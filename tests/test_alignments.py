"""Stage 1's class-aware and adversarial alignments (TwoStageTrainer(alignment="cmmd" | "dann")), the source
class weights (class_weights=, "estimated" by BBSE), and the adversarial parts (pytl.adversarial)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pytl
from pytl import TwoStageTrainer, compare_strategies
from pytl.adversarial import DomainDiscriminator, GradientReversal, domain_adversarial_loss, grad_reverse
from pytl.data import make_domain_shift
from pytl.experiments.strategies import STRATEGIES
from pytl.train import alignments as alignments_mod
from pytl.train.alignments import cmmd as cmmd_mod  # where the cmmd term calls its op
from pytl.train.alignments import mmd as mmd_mod  # where the mmd term calls its op

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shift():
    return make_domain_shift(0, n_source=300, n_target_unlabeled=300, n_target_test=200, n_target_labeled=20)


# ------------------------------------------------------------------------------------------- cmmd

def test_cmmd_term_uses_source_labels_and_detached_target_probabilities(shift, monkeypatch):
    seen = []
    real = cmmd_mod.class_conditional_mmd2

    def spy(zs, zt, ps, pt, sig):
        seen.append((zs.shape, zt.shape, ps.clone(), pt.clone(), zs.requires_grad, pt.requires_grad))
        return real(zs, zt, ps, pt, sig)

    monkeypatch.setattr(cmmd_mod, "class_conditional_mmd2", spy)
    tr = TwoStageTrainer(alignment="cmmd", lambda_mmd=1.0, batch_size=50, target_batch_size=30, align_epochs=4,
                         warmup=0.25, progress=False)
    tr.align(shift.source, shift.target_unlabeled)
    # 6 steps per epoch, the first 6 of 24 are the warm-up
    assert len(seen) == 18
    zs_shape, zt_shape, ps, pt, zs_grad, pt_grad = seen[0]
    assert zs_shape[0] == 50 and zt_shape[0] == 30 and zs_grad and not pt_grad
    assert set(ps.unique().tolist()) <= {0.0, 1.0} and torch.equal(ps.sum(1), torch.ones(50))
    torch.testing.assert_close(pt.sum(1), torch.ones(30))
    recs = tr.history["align"]
    assert recs[0]["cmmd"] is None and recs[0]["mmd2"] is None  # the warm-up epoch has no term
    assert recs[1]["cmmd"] > 0 and recs[1]["loss"] == pytest.approx(recs[1]["ce"] + recs[1]["cmmd"], rel=1e-5)


def test_cmmd_term_is_the_class_mean_of_the_op(shift, monkeypatch):
    # the term: class_conditional_mmd2 / (classes on both sides), against per-class pytl.mmd2 with weights
    got = []
    real = alignments_mod.CMMDAlignment.term

    def spy(self, zs, zt, ys, ns, nt, lam, active, w):
        out = real(self, zs, zt, ys, ns, nt, lam, active, w)
        with torch.no_grad():
            pt = torch.softmax(self.head(zt), 1)
            per_class = [pytl.mmd2(zs, zt, x_weights=(ys == c).to(zs.dtype), y_weights=pt[:, c])
                         for c in range(pt.shape[1]) if (ys == c).any()]
        got.append((out.item(), sum(per_class).item() / len(per_class)))
        return out

    monkeypatch.setattr(alignments_mod.CMMDAlignment, "term", spy)
    TwoStageTrainer(alignment="cmmd", warmup=0.0, align_epochs=1, batch_size=100, progress=False).align(
        shift.source, shift.target_unlabeled)
    assert len(got) == 3
    for term, want in got:
        assert term == pytest.approx(want, rel=1e-4)


def test_cmmd_confidence_drops_unsure_target_rows(shift, monkeypatch):
    seen = []
    real = cmmd_mod.class_conditional_mmd2
    monkeypatch.setattr(cmmd_mod, "class_conditional_mmd2",
                        lambda zs, zt, ps, pt, sig: seen.append(pt.clone()) or real(zs, zt, ps, pt, sig))
    # after a 3-epoch warm-up the classifier is still unsure (top probabilities about 0.5-0.58 on the target)
    TwoStageTrainer(alignment="cmmd", warmup=0.5, cmmd_confidence=0.55, align_epochs=6, progress=False).align(
        shift.source, shift.target_unlabeled)
    pt = torch.cat(seen)
    rows = pt.sum(1)
    kept = rows > 0
    assert (~kept).any() and kept.any()  # some rows dropped, some kept
    torch.testing.assert_close(rows[kept], torch.ones(int(kept.sum())))
    assert (pt[kept].amax(1) >= 0.55).all()


def test_cmmd_alignment_lowers_the_class_conditional_gap(shift):
    kw = dict(align_epochs=30, progress=False, seed=0)
    plain = TwoStageTrainer(lambda_mmd=0.0, **kw)
    plain.align(shift.source)
    aligned = TwoStageTrainer(alignment="cmmd", lambda_mmd=1.0, **kw)
    aligned.align(shift.source, shift.target_unlabeled)
    xt, yt = shift.target_test

    def gap(tr):  # class-conditional MMD² with the true target labels, relative to the source spread
        with torch.no_grad():
            zs = tr.model.embed(torch.as_tensor(shift.source[0]))
            zt = tr.model.embed(torch.as_tensor(xt))
        ys, yt_ = torch.as_tensor(shift.source[1]), torch.as_tensor(yt)
        ps, pt = F.one_hot(ys, 2).to(zs.dtype), F.one_hot(yt_, 2).to(zs.dtype)
        return float(pytl.class_conditional_mmd2(zs, zt, ps, pt))

    assert gap(aligned) < 0.5 * gap(plain)


# ------------------------------------------------------------------------------------------- dann

def test_gradient_reversal_negates_and_scales():
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 3, dtype=torch.float64)
    (out,) = torch.autograd.grad(grad_reverse(z, 0.7), z, g)
    torch.testing.assert_close(out, -0.7 * g)
    torch.testing.assert_close(GradientReversal(2.0)(z), z)
    with pytest.raises(ValueError, match="scale"):
        GradientReversal(-1.0)


def test_domain_adversarial_loss_against_plain_bce():
    torch.manual_seed(0)
    disc = DomainDiscriminator(4, 8, dropout=0.0).double()
    zs, zt = torch.randn(6, 4, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    w = torch.rand(6, dtype=torch.float64)
    got = domain_adversarial_loss(disc, zs, zt, source_weights=w)
    ls, lt = disc(zs), disc(zt)
    src = (w * F.binary_cross_entropy_with_logits(ls, torch.ones(6, dtype=torch.float64), reduction="none")).sum() / w.sum()
    want = 0.5 * (src + F.binary_cross_entropy_with_logits(lt, torch.zeros(9, dtype=torch.float64)))
    torch.testing.assert_close(got, want)
    # a discriminator that cannot tell (zero output) scores ln 2
    torch.nn.init.zeros_(disc.net[-1].weight)
    torch.nn.init.zeros_(disc.net[-1].bias)
    assert domain_adversarial_loss(disc, zs, zt).item() == pytest.approx(math.log(2))


def test_rff_mmd_term_uses_fresh_features_per_step_seeded_alike_on_every_run(shift):
    """mmd_method="rff": the term is the random-feature MMD² with seed settings.seed · stride + step (checked
    against pytl.mmd2 on a batch), reproducible run to run, and a different estimate from the exact term."""
    from pytl.train.alignments.mmd import _STEP_SEED_STRIDE, MMDAlignment
    from pytl.train.settings import TrainSettings
    from pytl.train.state import RunState

    run = RunState(settings=TrainSettings(mmd_method="rff", seed=4, progress=False), device=torch.device("cpu"))
    term = MMDAlignment(run)
    term.begin(torch.nn.Identity(), None)
    zs, zt = torch.randn(40, 6), torch.randn(30, 6) + 0.5
    sig = pytl.bandwidth_ladder(pytl.median_heuristic(zs, zt))
    for step in range(2):
        got = term.term(zs, zt, None, 40, 30, 1.0, True, None)
        want = pytl.mmd2(zs, zt, sig, method="rff", seed=4 * _STEP_SEED_STRIDE + step)
        assert float(got) == float(want)
        term.after_step()
    assert term.state_dict() == {"step": 2}
    kw = dict(lambda_mmd=1.0, align_epochs=2, finetune_epochs=0, progress=False, seed=1)
    runs = [TwoStageTrainer(mmd_method=m, **kw) for m in ("rff", "rff", "exact")]
    for tr in runs:
        tr.align(shift.source, shift.target_unlabeled)
    assert runs[0].history == runs[1].history and runs[0].history != runs[2].history
    with pytest.raises(ValueError, match="mmd_method must be one of"):
        TwoStageTrainer(mmd_method="block")
    with pytest.raises(ValueError, match="class_weights needs mmd_method='exact'"):
        TwoStageTrainer(mmd_method="rff", class_weights=[1.0, 2.0])


def test_dann_trains_the_discriminator_and_reverses_the_encoder_gradient(shift):
    tr = TwoStageTrainer(alignment="dann", lambda_mmd=1.0, align_epochs=3, progress=False)
    tr.align(shift.source, shift.target_unlabeled)
    recs = tr.history["align"]
    assert all(r["dann"] is not None and r["mmd2"] is None for r in recs)
    # loss = CE + domain BCE (λ scales the reversed gradient, not the term)
    assert recs[-1]["loss"] == pytest.approx(recs[-1]["ce"] + recs[-1]["dann"], rel=1e-5)
    assert 0 < recs[-1]["dann"] < 5


@pytest.mark.parametrize("options", [dict(alignment="dann"), dict(alignment="mmd", class_weights="estimated"),
                                     dict(alignment="mmd", mmd_method="rff")])
def test_resume_is_bit_identical_with_stage_one_state(shift, tmp_path, interrupt_after, options):
    # the discriminator and its optimizer, the estimated class weights, or the step that seeds the random
    # features, travel in the checkpoint
    kw = dict(lambda_mmd=1.0, align_epochs=4, finetune_epochs=0, warmup=0.3, progress=False, seed=3, **options)
    straight = TwoStageTrainer(**kw)
    straight.align(shift.source, shift.target_unlabeled)
    ckpt = str(tmp_path / "ckpt.pt")
    with interrupt_after(2):
        TwoStageTrainer(checkpoint=ckpt, **kw).align(shift.source, shift.target_unlabeled)
    saved = torch.load(ckpt, weights_only=True)
    assert (saved["alignment"] is not None) == (options["alignment"] == "dann" or "mmd_method" in options)
    assert (saved["class_weights"] is not None) == ("class_weights" in options)
    resumed = TwoStageTrainer(**kw)
    resumed.align(shift.source, shift.target_unlabeled, resume_from=ckpt)
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.history == straight.history


# ------------------------------------------------------------------------------------------- class weights

def _label_shifted(seed=0, keep_class1=0.25):
    """A pure label shift: source and target from the same class-conditional distributions (no rotation or
    shift), the target keeping a quarter of its class-1 samples (80/20 instead of 50/50)."""
    d = make_domain_shift(seed, n_source=600, n_target_unlabeled=10, n_target_test=2400, n_target_labeled=4,
                          rotation=0.0, shift=(0.0, 0.0))
    xb, yb = np.asarray(d.target_test[0]), np.asarray(d.target_test[1])
    keep = (yb == 0) | (np.random.default_rng(seed).random(len(yb)) < keep_class1)
    return d, xb[keep], yb[keep]


def test_estimated_class_weights_find_the_target_proportions():
    d, xt, yt = _label_shifted()
    truth = np.bincount(yt, minlength=2) / len(yt)
    tr = TwoStageTrainer(lambda_mmd=0.0, class_weights="estimated", warmup=0.5, align_epochs=20, progress=False)
    tr.align(d.source, xt)
    est = tr.label_shift
    assert est is not None and est.reliable
    assert est.target_proportions.numpy() == pytest.approx(truth, abs=0.05)
    w = est.weights.numpy()
    assert w[0] > 1 > w[1]


def test_fixed_class_weights_weigh_the_source_cross_entropy(shift):
    tr = TwoStageTrainer(lambda_mmd=0.0, class_weights=[1.0, 0.0], align_epochs=10, progress=False)
    tr.align(shift.source)
    assert (tr.predict(shift.source[0]) == 0).double().mean() > 0.95  # class 1 costs nothing: never predicted


def test_class_weights_reach_the_mmd_as_source_sample_weights(shift, monkeypatch):
    seen = []
    real = mmd_mod.mmd2

    def spy(zs, zt, sig, **kw):
        seen.append(kw.get("x_weights"))
        return real(zs, zt, sig, **kw)

    monkeypatch.setattr(mmd_mod, "mmd2", spy)
    TwoStageTrainer(lambda_mmd=1.0, class_weights=[2.0, 0.5], align_epochs=1, batch_size=100, progress=False).align(
        shift.source, shift.target_unlabeled)
    assert len(seen) == 3 and all(w is not None for w in seen)
    assert set(torch.cat(seen).unique().tolist()) == {0.5, 2.0}


def test_class_weight_and_alignment_settings_are_checked(shift):
    cases = [
        (dict(class_weights=[1.0, -1.0]), ValueError, "class_weights must be non-negative"),
        (dict(class_weights=[0.0, 0.0]), ValueError, "not all zero"),
        (dict(class_weights="guess"), ValueError, "class_weights must be one of"),
        (dict(class_weights="estimated", warmup=0.0), ValueError, "needs warmup > 0"),
        (dict(class_weights=object()), TypeError, "class_weights must be None"),
        (dict(warmup=1.0), ValueError, "warmup"),
        (dict(cmmd_confidence=-0.1), ValueError, "cmmd_confidence"),
        (dict(dann_hidden=0), ValueError, "dann_hidden"),
    ]
    for kwargs, exc, fragment in cases:
        with pytest.raises(exc, match=fragment):
            TwoStageTrainer(**kwargs)
    with pytest.raises(ValueError, match="one weight per class \\(2\\), got 3"):
        TwoStageTrainer(class_weights=[1.0, 1.0, 1.0], lambda_mmd=0.0, align_epochs=1, progress=False).align(shift.source)
    with pytest.raises(ValueError, match="class_weights='estimated' needs target_unlabeled"):
        TwoStageTrainer(class_weights="estimated", lambda_mmd=0.0, align_epochs=1, progress=False).align(shift.source)
    loader = torch.utils.data.DataLoader(torch.as_tensor(shift.target_unlabeled, dtype=torch.float32), batch_size=50)
    with pytest.raises(ValueError, match="as arrays or tensors"):
        TwoStageTrainer(class_weights="estimated", align_epochs=1, progress=False).align(shift.source, loader)


# ------------------------------------------------------------------------------------------- the comparison

def test_compare_strategies_runs_every_alignment_and_cross_validates_it(shift):
    r = compare_strategies(shift.source, shift.target_unlabeled, shift.target_test, shift.target_labeled,
                           strategies="all", folds=2, align_epochs=2, finetune_epochs=2, num_threads=1)
    assert list(r.accuracy) == list(STRATEGIES)
    assert {"cmmd_only", "cmmd", "dann_only", "dann"} <= set(r.estimate)
    assert r.histories["cmmd"]["align"] == r.histories["cmmd_only"]["align"]
    assert r.histories["dann_only"]["align"][0]["dann"] is not None
    table = r.table()
    # "uses" names each alignment's λ, the one its "auto" search chose
    assert f"CE + {r.lambdas['cmmd'].chosen:g}·class-conditional MMD²" in table
    assert f"gradient reversed ×{r.lambdas['dann'].chosen:g}" in table


def test_a_batch_whose_classes_all_weigh_zero_adds_nothing_instead_of_nan():
    """Estimated weights can hold zeros; a last batch drawn only from such classes was 0/0 = NaN in torch's
    weighted mean (a real run died at epoch 41). Now it adds 0, and otherwise the weighted mean is torch's."""
    from pytl.train.steps import _cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(16, 3, requires_grad=True)
    w = torch.tensor([0.0, 2.0, 1.0])
    zero = _cross_entropy(logits, torch.zeros(16, dtype=torch.long), w)
    (g,) = torch.autograd.grad(zero, logits)
    assert float(zero.detach()) == 0.0 and torch.equal(g, torch.zeros_like(g))
    y = torch.randint(0, 3, (16,))
    assert torch.equal(_cross_entropy(logits, y, w), F.cross_entropy(logits, y, weight=w))
    # a whole run: most source rows of the zero-weight class, batches of 4: many batches hold only that class
    x = torch.randn(70, 2)
    ys = torch.cat([torch.zeros(60, dtype=torch.long), torch.randint(1, 3, (10,))])
    t = TwoStageTrainer(None, lambda_align=0.0, class_weights=[0.0, 1.0, 1.0], align_epochs=2, batch_size=4,
                        progress=False, num_threads=1)
    t.align((x, ys), None)
    assert all(math.isfinite(r["loss"]) for r in t.history["align"])


def test_an_estimate_that_zeroes_source_classes_warns(shift, monkeypatch):
    """BBSE from a source classifier that is badly wrong on the target zeroed 7 of 10 balanced classes on a real
    pair (cmmd_only then stuck at 9.9%): the user hears of it."""
    from pytl._checks import DataWarning
    from pytl.diagnostics import LabelShiftEstimate
    from pytl.train import class_weights as cw_mod

    real = cw_mod.label_shift_from_predictions

    def zeroing(*args, **kwargs):
        est = real(*args, **kwargs)
        return LabelShiftEstimate(**{**est.__dict__, "weights": torch.tensor([0.0, 2.0], dtype=est.weights.dtype)})

    monkeypatch.setattr(cw_mod, "label_shift_from_predictions", zeroing)
    t = TwoStageTrainer(None, class_weights="estimated", align_epochs=2, warmup=0.5, progress=False, num_threads=1)
    with pytest.warns(DataWarning, match=r"gave weight 0 to source class\(es\) \[0\]"):
        t.align(shift.source, shift.target_unlabeled)
