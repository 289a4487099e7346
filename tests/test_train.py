"""pytl.train.TwoStageTrainer: both stages, inputs of every kind, seeds, history, λ schedules, bad input."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import pytl.train.alignments.mmd as alignments_mod  # where stage 1's mmd term calls the MMD op
from pytl.data import make_domain_shift
from pytl.freezing import L2SP, FreezeFirst
from pytl.models import default_model
from pytl.train import TwoStageTrainer, lambda_factor, stratified_split, validation_loss_climbs
from pytl.train.prepare import prepare

SMALL = dict(align_epochs=3, finetune_epochs=3, progress=False)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shift():
    return make_domain_shift(0, n_source=200, n_target_unlabeled=200, n_target_test=200)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------- lambda


def test_lambda_schedules():
    assert lambda_factor("constant", 0.3) == 1.0
    assert lambda_factor("linear", 0.3) == pytest.approx(0.3)
    assert lambda_factor("dann", 0.0) == 0.0
    assert lambda_factor("dann", 1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert lambda_factor(lambda p: 1 - p, 0.25) == 0.75
    with pytest.raises(ValueError, match="lambda_schedule"):
        lambda_factor("cosine", 0.5)


def test_history_records_the_ramped_lambda(shift):
    tr = TwoStageTrainer(lambda_mmd=2.0, lambda_schedule="linear", batch_size=50, seed=1, **SMALL)
    tr.align(shift.source, shift.target_unlabeled)
    steps = 4  # 200 source samples / 50 per batch
    total = 3 * steps
    # the record holds the lambda of the epoch's last step: 2 * (step / total)
    assert [r["lambda"] for r in tr.history["align"]] == pytest.approx([2 * (steps * (e + 1) - 1) / total for e in range(3)])


# ------------------------------------------------------------------------------ reproducibility


def test_same_seed_same_weights_bit_for_bit_and_user_rng_untouched(shift):
    def run(seed):
        torch.manual_seed(123)  # the user's own RNG state must not matter, nor be changed
        model = default_model(2, 2, dropout=0.2)  # dropout uses the (forked, seeded) global RNG
        model.load_state_dict(init)
        tr = TwoStageTrainer(model, seed=seed, **SMALL)
        before = torch.random.get_rng_state()
        tr.fit(shift.source, shift.target_unlabeled, shift.target_labeled)
        assert torch.equal(torch.random.get_rng_state(), before)
        return state(tr.model), tr.history

    torch.manual_seed(0)
    init = default_model(2, 2, dropout=0.2).state_dict()
    a, ha = run(7)
    b, hb = run(7)
    c, _ = run(8)
    assert same_state(a, b) and ha == hb
    assert not same_state(a, c)


def test_default_model_is_built_from_the_seed(shift):
    a = TwoStageTrainer(seed=3, **SMALL).fit(shift.source, shift.target_unlabeled).model
    b = TwoStageTrainer(seed=3, **SMALL).fit(shift.source, shift.target_unlabeled).model
    assert same_state(state(a), state(b))
    assert a.encoder.blocks[0][0].in_features == 2 and a.num_classes == 2


def test_numpy_and_tensor_inputs_give_identical_models(shift):
    xs, ys = shift.source
    as_np = TwoStageTrainer(seed=0, **SMALL).fit((xs, ys), shift.target_unlabeled, shift.target_labeled)
    as_t = TwoStageTrainer(seed=0, **SMALL).fit((torch.from_numpy(xs), torch.from_numpy(ys)),
                                               torch.from_numpy(shift.target_unlabeled),
                                               tuple(torch.from_numpy(a) for a in shift.target_labeled))
    lists = TwoStageTrainer(seed=0, **SMALL).fit((xs.tolist(), ys.tolist()), shift.target_unlabeled.tolist(),
                                                (shift.target_labeled[0].tolist(), shift.target_labeled[1].tolist()))
    assert same_state(state(as_np.model), state(as_t.model))
    assert same_state(state(as_np.model), state(lists.model))


# ---------------------------------------------------------------------------- what stage 1 does


def test_mmd_term_uses_the_fused_op_with_each_domains_batch_size(shift, monkeypatch):
    seen = []
    real = alignments_mod.mmd2

    def spy(x, y, *args, **kwargs):
        seen.append((x.shape[0], y.shape[0], x.requires_grad))
        return real(x, y, *args, **kwargs)

    monkeypatch.setattr(alignments_mod, "mmd2", spy)
    TwoStageTrainer(batch_size=40, target_batch_size=25, align_epochs=1, progress=False).align(
        shift.source, shift.target_unlabeled)
    assert seen == [(40, 25, True)] * 5


def test_alignment_lowers_the_embedding_mmd(shift):
    kw = dict(align_epochs=15, progress=False, seed=0)
    plain = TwoStageTrainer(lambda_mmd=0.0, **kw)
    plain.align(shift.source)
    aligned = TwoStageTrainer(lambda_mmd=1.0, **kw)
    aligned.align(shift.source, shift.target_unlabeled)
    xs = shift.source[0]
    before, after = plain.embedding_mmd2(xs, shift.target_unlabeled), aligned.embedding_mmd2(xs, shift.target_unlabeled)
    assert after < 0.5 * before
    assert aligned.history["align"][-1]["mmd2"] < aligned.history["align"][0]["mmd2"]


def test_history_and_evaluation(shift):
    tr = TwoStageTrainer(seed=0, **SMALL)
    tr.fit(shift.source, shift.target_unlabeled, shift.target_labeled,
           eval_data={"test": shift.target_test, "src": shift.source})
    align, ft = tr.history["align"], tr.history["finetune"]
    assert len(align) == 3 and len(ft) == 3
    assert {"stage", "epoch", "loss", "ce", "mmd2", "lambda", "train_acc", "test_acc", "test_loss", "src_acc"} <= set(align[0])
    assert align[0]["mmd2"] > 0 and ft[0]["mmd2"] is None
    assert align[0]["loss"] == pytest.approx(align[0]["ce"] + 0.5 * align[0]["mmd2"], rel=1e-5)
    # the last record's accuracy is the final model's accuracy, computed independently by score()
    assert ft[-1]["test_acc"] == pytest.approx(tr.score(*shift.target_test))
    xt, yt = shift.target_test
    proba = tr.predict_proba(xt)
    assert proba.shape == (200, 2) and torch.allclose(proba.sum(1), torch.ones(200))
    assert tr.score(xt, yt) == pytest.approx(float((proba.argmax(1).numpy() == yt).mean()))


def test_dataloaders_work_like_arrays(shift):
    xs, ys = (torch.from_numpy(a) for a in shift.source)
    xu = torch.from_numpy(shift.target_unlabeled)
    xl, yl = (torch.from_numpy(a) for a in shift.target_labeled)
    tr = TwoStageTrainer(seed=0, **SMALL)
    tr.fit(DataLoader(TensorDataset(xs, ys), batch_size=32, shuffle=True),
           DataLoader(TensorDataset(xu), batch_size=16, shuffle=True),  # yields 1-tuples
           DataLoader(TensorDataset(xl, yl), batch_size=10),
           eval_data=DataLoader(TensorDataset(*(torch.from_numpy(a) for a in shift.target_test)), batch_size=64))
    assert len(tr.history["align"]) == 3 and len(tr.history["finetune"]) == 3
    assert tr.history["finetune"][-1]["target_acc"] == pytest.approx(tr.score(*shift.target_test))
    # a plain-tensor target loader is fine too
    TwoStageTrainer(seed=0, **SMALL).align(DataLoader(TensorDataset(xs, ys), batch_size=32), DataLoader(xu, batch_size=32))


def test_bad_labels_in_a_dataloader_are_named():
    x = torch.randn(20, 2)
    y = torch.tensor([0, 1] * 9 + [0, 5])
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    with pytest.raises(ValueError, match="labels from source.*5"):
        TwoStageTrainer(num_classes=2, lambda_mmd=0.0, **SMALL).align(loader)


def test_plain_module_fine_tunes_but_cannot_align(shift):
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    tr = TwoStageTrainer(net, **SMALL)
    tr.finetune(shift.target_labeled)
    TwoStageTrainer(net, lambda_mmd=0.0, **SMALL).align(shift.source)
    with pytest.raises(TypeError, match="embed"):
        TwoStageTrainer(net, **SMALL).align(shift.source, shift.target_unlabeled)


def test_num_classes_is_inferred_and_a_missing_target_class_warns():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=g)
    y = torch.arange(60) % 3
    tr = TwoStageTrainer(lambda_mmd=0.0, **SMALL)
    tr.align((x, y))
    assert tr.model.num_classes == 3
    with pytest.warns(UserWarning, match=r"class\(es\) \[2\]"):
        tr.finetune((x[:6], torch.tensor([0, 1, 0, 1, 0, 1])))


def test_progress_bar_can_be_turned_off(shift, capsys):
    TwoStageTrainer(align_epochs=2, finetune_epochs=1, progress=True).fit(
        shift.source, shift.target_unlabeled, shift.target_labeled)
    err = capsys.readouterr().err
    assert "align 2/2" in err and "finetune 1/1" in err and "mmd2" in err
    TwoStageTrainer(align_epochs=2, finetune_epochs=1, progress=False).fit(
        shift.source, shift.target_unlabeled, shift.target_labeled)
    assert capsys.readouterr().err == ""


def test_num_threads_holds_during_training_only(shift, monkeypatch):
    seen = []
    real = alignments_mod.mmd2

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(alignments_mod, "mmd2", spy)
    torch.set_num_threads(2)
    TwoStageTrainer(num_threads=1, align_epochs=1, progress=False).align(shift.source, shift.target_unlabeled)
    assert set(seen) == {1} and torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="num_threads"):
        TwoStageTrainer(num_threads=0)


def test_a_diverging_loss_stops_with_a_clear_error(shift):
    tr = TwoStageTrainer(optimizer="sgd", finetune_lr=1e30, finetune_epochs=5, progress=False)
    with pytest.raises(FloatingPointError, match=r"finetune epoch [1-4]: the loss became (nan|inf); lower finetune_lr"):
        tr.finetune(shift.target_labeled)


def test_optimizers_and_a_custom_factory(shift):
    for opt in ("adamw", "sgd", lambda groups: torch.optim.RMSprop(groups)):
        TwoStageTrainer(optimizer=opt, **SMALL).fit(shift.source, shift.target_unlabeled, shift.target_labeled)
    with pytest.raises(TypeError, match="Optimizer"):
        TwoStageTrainer(optimizer=lambda groups: "sgd", **SMALL).align(shift.source, shift.target_unlabeled)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_training_matches_cpu_quality(shift):
    cpu = TwoStageTrainer(seed=0, align_epochs=20, finetune_epochs=10, progress=False, device="cpu")
    gpu = TwoStageTrainer(seed=0, align_epochs=20, finetune_epochs=10, progress=False, device="cuda")
    for tr in (cpu, gpu):
        tr.fit(shift.source, shift.target_unlabeled, shift.target_labeled)
    assert next(gpu.model.parameters()).is_cuda
    assert abs(cpu.score(*shift.target_test) - gpu.score(*shift.target_test)) < 0.1


# --------------------------------------------------------------------- bad input, before training


def _good(shift):
    xs, ys = shift.source
    return dict(source=(xs, ys), target_unlabeled=shift.target_unlabeled, target_labeled=shift.target_labeled)


def _with(shift, **changes):
    args = _good(shift)
    args.update(changes)
    return args


BAD_INPUTS = [
    ("feature size mismatch", lambda s: dict(target_unlabeled=np.zeros((10, 3), np.float32)), ValueError,
     r"feature size mismatch: target_unlabeled has samples of shape 3 but source has 2"),
    ("labels out of range", lambda s: dict(target_labeled=(s.target_labeled[0], np.r_[s.target_labeled[1][:-1], 2])),
     ValueError, r"target_labeled\[1\] \(y\) has label 2, out of range for 2 classes"),
    ("negative labels", lambda s: dict(source=(s.source[0], np.r_[s.source[1][:-1], -1])), ValueError, ">= 0"),
    ("non-integer labels", lambda s: dict(source=(s.source[0], s.source[1] * 0.5)), ValueError, "non-integer"),
    ("string labels", lambda s: dict(source=(s.source[0], s.source[1].astype(str))), TypeError, "numbers"),
    ("one-hot labels", lambda s: dict(source=(s.source[0], np.eye(2)[s.source[1]])), ValueError, "one-hot"),
    ("label count", lambda s: dict(source=(s.source[0], s.source[1][:-1])), ValueError, "labels for"),
    ("empty source", lambda s: dict(source=(np.zeros((0, 2)), np.zeros(0))), ValueError, "empty"),
    ("empty target", lambda s: dict(target_unlabeled=np.zeros((0, 2))), ValueError, "target_unlabeled is empty"),
    ("nan", lambda s: dict(source=(np.r_[s.source[0][:-1], [[np.nan, 0]]], s.source[1])), ValueError,
     r"source\[0\] \(X\) contains NaN in 1 of its 200 samples"),
    ("inf", lambda s: dict(target_unlabeled=np.r_[s.target_unlabeled[:-1], [[np.inf, 0]]]), ValueError, "infinite"),
    ("1-D features", lambda s: dict(target_unlabeled=s.target_unlabeled[:, 0]), ValueError, "reshape"),
    ("too few target labels", lambda s: dict(target_labeled=(s.target_labeled[0][:1], s.target_labeled[1][:1])),
     ValueError, "fewer than the 2 classes"),
    ("no target for MMD", lambda s: dict(target_unlabeled=None), ValueError, "target_unlabeled is required"),
    ("pair as unlabelled", lambda s: dict(target_unlabeled=s.target_test), TypeError, "X only"),
    ("not a pair", lambda s: dict(source=s.source[0]), TypeError, r"pair \(X, y\)"),
]


@pytest.mark.parametrize("case, change, exc, words", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_before_training(shift, case, change, exc, words):
    torch.manual_seed(0)
    model = default_model(2, 2)
    before = state(model)
    tr = TwoStageTrainer(model, **SMALL)
    with pytest.raises(exc, match=words):
        tr.fit(**_with(shift, **change(shift)))
    assert same_state(before, state(model)) and tr.history == {"align": [], "finetune": []}


def test_a_failed_fit_leaves_the_trainer_untouched(shift):
    tr = TwoStageTrainer(**SMALL)
    with pytest.raises(ValueError, match="fewer than the 2 classes"):
        tr.fit(**_with(shift, target_labeled=(shift.target_labeled[0][:1], shift.target_labeled[1][:1])))
    assert tr.model is None and tr.num_classes is None
    tr.fit(**_good(shift))  # and it still works with good data
    assert tr.model.num_classes == 2


def test_shuffled_dataloaders_train_the_same_whatever_the_global_rng(shift):
    """Everything the trainer draws, including its look at each loader's first batch (input statistics of
    the default model, shapes, labels), comes from its own seeds; the caller's RNG is left as it was."""
    xs, ys = (torch.as_tensor(a) for a in shift.source)
    xu = torch.as_tensor(shift.target_unlabeled)
    weights = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        tr = TwoStageTrainer(**SMALL)
        tr.align(DataLoader(TensorDataset(xs, ys), batch_size=40, shuffle=True),
                 DataLoader(TensorDataset(xu), batch_size=40, shuffle=True))
        assert torch.equal(torch.get_rng_state(), before)
        weights.append(state(tr.model))
    assert same_state(*weights)


def test_eval_dataloader_counts_every_sample(shift):
    xt, yt = (torch.from_numpy(a[:101]) for a in shift.target_test)  # batches of 50, 50 and 1
    tr = TwoStageTrainer(**SMALL).fit(**_good(shift), eval_data=DataLoader(TensorDataset(xt, yt), batch_size=50))
    assert tr.history["finetune"][-1]["target_acc"] == pytest.approx(tr.score(xt, yt))


@pytest.mark.parametrize("kwargs, words", [
    (dict(lr=0), "lr"), (dict(batch_size=0), "batch_size"), (dict(lambda_mmd=-1), "lambda_mmd"),
    (dict(lambda_mmd=float("nan")), "lambda_mmd"),
    (dict(lambda_schedule="cosine"), "lambda_schedule"), (dict(optimizer="rmsprop"), "optimizer"),
    (dict(mmd_estimator="fast"), "mmd_estimator"), (dict(num_classes=1), "num_classes"),
    (dict(device="tpu"), "device"), (dict(seed=-1), "seed"), (dict(target_batch_size=0), "target_batch_size"),
])
def test_bad_settings(kwargs, words):
    with pytest.raises(ValueError, match=words):
        TwoStageTrainer(**kwargs)


@pytest.mark.parametrize("kwargs, words", [
    (dict(align_epochs=1.5), "align_epochs must be an int"), (dict(batch_size=True), "batch_size must be an int"),
    (dict(lr="fast"), "lr must be a finite number"), (dict(num_threads=2.0), "num_threads must be None or an int"),
])
def test_wrong_setting_types_are_type_errors(kwargs, words):
    with pytest.raises(TypeError, match=words):
        TwoStageTrainer(**kwargs)


def test_bad_setting_types():
    with pytest.raises(TypeError, match="model"):
        TwoStageTrainer("resnet")
    with pytest.raises(TypeError, match="finetune_policy"):
        TwoStageTrainer(finetune_policy="freeze")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_request_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="cuda.*is_available"):
        TwoStageTrainer(device="cuda")


def test_model_that_rejects_the_features_is_reported(shift):
    model = default_model(5, 2)
    with pytest.raises(ValueError, match="cannot take samples of shape 2"):
        TwoStageTrainer(model, **SMALL).fit(**_good(shift))
    model3 = default_model(2, 3)
    with pytest.warns(UserWarning, match="no sample of class"):
        TwoStageTrainer(model3, **SMALL).fit(**_good(shift))  # labels 0..1 fit a 3-class head
    with pytest.raises(ValueError, match="num_classes=2 but the model outputs 3"):
        TwoStageTrainer(model3, num_classes=2, **SMALL).fit(**_good(shift))


def test_predict_on_other_features_is_refused(shift):
    tr = TwoStageTrainer(**SMALL).fit(**_good(shift))
    with pytest.raises(ValueError, match="trained on"):
        tr.predict(np.zeros((3, 4)))
    with pytest.raises(RuntimeError, match="no model"):
        TwoStageTrainer().predict(np.zeros((3, 2)))


# ------------------------------------------------------------ early stopping (finetune_validation, patience)

ES = dict(finetune_lr=0.02, finetune_batch_size=8, progress=False, seed=0)  # val loss falls to epoch 3, then climbs


@pytest.fixture(scope="module")
def noisy():
    """40 labels that x[:, 0] predicts only partly: a half held out, the other half is soon overfitted."""
    x, y = _noisy_data()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        init = default_model(4, 2, NOISY_WIDTH, dropout=0.2).state_dict()
    return x, y, init


# the 64-wide MLP the early-stopping epochs below were measured with (the default was 64 wide for 4 features)
NOISY_WIDTH = (64, 64)


def es_model(init, dropout=0.2):
    model = default_model(4, 2, NOISY_WIDTH, dropout=dropout)
    model.load_state_dict(init)
    return model


def held_out_ce(model, x, y):
    """Mean CE and accuracy of ``model`` on (x, y), computed here in eval mode, one batch."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).double().mean())


def test_stratified_split_is_stratified_seeded_disjoint_and_complete():
    order = torch.randperm(20, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0] * 10 + [1] * 7 + [2] * 1 + [3] * 2)[order]
    train, val = stratified_split(y, 0.3, seed=4)
    assert set(train.tolist()).isdisjoint(val.tolist()) and sorted(train.tolist() + val.tolist()) == list(range(20))
    assert train.tolist() == sorted(train.tolist()) and val.tolist() == sorted(val.tolist())
    # per class round(0.3·n) half up, at least 1, at most n − 1: 10 → 3, 7 → 2 (2.1), 1 → 0, 2 → 1
    assert torch.bincount(y[val], minlength=4).tolist() == [3, 2, 0, 1]
    assert torch.bincount(y[train], minlength=4).tolist() == [7, 5, 1, 1]
    again = stratified_split(y, 0.3, seed=4)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    others = [stratified_split(y, 0.3, seed=s)[1].tolist() for s in range(5, 10)]
    assert any(o != val.tolist() for o in others)
    # a large fraction leaves one sample of each class in training
    train9, val9 = stratified_split(y, 0.99, seed=0)
    assert torch.bincount(y[train9], minlength=4).tolist() == [1, 1, 1, 1]


def test_validation_loss_is_the_held_out_ce_and_the_best_epoch_is_restored(noisy):
    x, y, init = noisy
    tr = TwoStageTrainer(es_model(init), finetune_epochs=8, finetune_validation=0.5, **ES)
    tr.finetune((x, y))
    recs = tr.history["finetune"]
    train_idx, val_idx = stratified_split(y, 0.5, seed=0)  # the trainer's split: its seed, documented stream
    losses = [r["val_loss"] for r in recs]
    assert len(recs) == 8 and not tr.stopped_early
    assert tr.best_epoch == losses.index(min(losses)) == 3
    assert [r["best"] for r in recs] == [e == 3 for e in range(8)]
    assert recs[-1]["val_loss"] > recs[3]["val_loss"]  # so restoring matters
    # epoch by epoch: a plain run on the training part for e + 1 epochs is the model of epoch e
    # (evaluating the held-out part draws nothing from the RNGs), and its held-out CE is the record's
    for e in (0, 3, 7):
        plain = TwoStageTrainer(es_model(init), finetune_epochs=e + 1, **ES)
        plain.finetune((x[train_idx], y[train_idx]))
        assert plain.history["finetune"][-1]["loss"] == recs[e]["loss"]
        loss, acc = held_out_ce(plain.model, x[val_idx], y[val_idx])
        assert recs[e]["val_loss"] == pytest.approx(loss, rel=1e-6, abs=1e-7)
        assert recs[e]["val_accuracy"] == pytest.approx(acc)
        if e == 3:  # the returned weights are epoch 3's, bit for bit
            assert same_state(state(tr.model), state(plain.model))
        if e == 7:
            assert not same_state(state(tr.model), state(plain.model))
    # and a validated run stopped at best_epoch + 1 epochs ends with the same weights
    short = TwoStageTrainer(es_model(init), finetune_epochs=tr.best_epoch + 1, finetune_validation=0.5, **ES)
    short.finetune((x, y))
    assert short.best_epoch == 3 and same_state(state(short.model), state(tr.model))
    assert validation_loss_climbs(recs)


def test_patience_stops_at_the_best_epoch_plus_patience(noisy):
    x, y, init = noisy
    full = TwoStageTrainer(es_model(init), finetune_epochs=12, finetune_validation=0.5, **ES)
    full.finetune((x, y))
    losses = [r["val_loss"] for r in full.history["finetune"]]
    for patience in (1, 3):
        # independently: the first epoch that is `patience` epochs after the best so far
        stop = next(e for e in range(12) if e - losses.index(min(losses[: e + 1])) >= patience)
        tr = TwoStageTrainer(es_model(init), finetune_epochs=12, finetune_validation=0.5, patience=patience, **ES)
        tr.finetune((x, y))
        recs = tr.history["finetune"]
        assert stop == 3 + patience and len(recs) == losses.index(min(losses)) + patience + 1 == stop + 1
        assert tr.stopped_early and tr.best_epoch == 3
        assert [r["val_loss"] for r in recs] == losses[: stop + 1]
        assert same_state(state(tr.model), state(full.model))  # both restored epoch 3
    # a patience that never runs out: every epoch, stopped_early False
    tr = TwoStageTrainer(es_model(init), finetune_epochs=5, finetune_validation=0.5, patience=5, **ES)
    tr.finetune((x, y))
    assert len(tr.history["finetune"]) == 5 and not tr.stopped_early


def test_without_finetune_validation_nothing_changes(noisy):
    x, y, init = noisy
    tr = TwoStageTrainer(es_model(init), finetune_epochs=3, **ES)
    tr.finetune((x, y))
    assert tr.best_epoch is None and tr.stopped_early is False
    assert not {"val_loss", "val_accuracy", "best"} & set(tr.history["finetune"][0])


def test_validation_loss_climbs_reads_a_history():
    def recs(*losses):
        return [{"epoch": i, "val_loss": v} for i, v in enumerate(losses)]

    assert validation_loss_climbs(recs(1.0, 0.5, 0.56))          # 12% above the minimum
    assert not validation_loss_climbs(recs(1.0, 0.5, 0.55))      # exactly 10%: not more
    assert not validation_loss_climbs(recs(1.0, 0.5, 0.54))
    assert not validation_loss_climbs(recs(1.0, 0.9, 0.5))       # the minimum is the last epoch
    assert not validation_loss_climbs(recs(0.5, 0.5))            # ties: no climb
    assert validation_loss_climbs(recs(0.0, 0.1))                # from zero, any rise
    assert validation_loss_climbs(recs(1.0, 0.5, 0.54), tolerance=0.05)
    assert not validation_loss_climbs(recs(0.5))
    assert not validation_loss_climbs([])
    assert not validation_loss_climbs([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 2.0}])  # no validation
    assert validation_loss_climbs([{"val_loss": None}, *recs(0.5, 0.6)])
    with pytest.raises(ValueError, match="tolerance"):
        validation_loss_climbs(recs(1.0, 2.0), tolerance=-0.1)


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(finetune_validation="0.2"), TypeError, "finetune_validation must be a finite number"),
    (dict(finetune_validation=True), TypeError, "finetune_validation"),
    (dict(finetune_validation=0), ValueError, r"finetune_validation must be a finite number > 0.0 and < 1.0, got 0"),
    (dict(finetune_validation=1.0), ValueError, "finetune_validation"),
    (dict(finetune_validation=1.5), ValueError, "finetune_validation"),
    (dict(finetune_validation=float("nan")), ValueError, "finetune_validation"),
    (dict(finetune_validation=0.2, patience=0), ValueError, "patience must be None or an int >= 1"),
    (dict(finetune_validation=0.2, patience=2.0), TypeError, "patience must be None or an int"),
    (dict(patience=3), ValueError, "patience=3 needs finetune_validation"),
])
def test_bad_early_stopping_settings(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        TwoStageTrainer(**kwargs)


class _Stream(IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


def test_bad_early_stopping_inputs_fail_before_training(shift):
    xl, yl = (torch.as_tensor(a) for a in shift.target_labeled)
    one_each = (xl[[0, 1]], torch.tensor([0, 1]))
    cases = [
        (dict(target_labeled=one_each), {}, "finetune_validation=0.2 holds out nothing: target_labeled has no class "
                                            r"with at least 2 samples \(samples per class: \[1, 1\]\)"),
        (dict(target_labeled=DataLoader(_Stream(xl, yl), batch_size=8)), {}, "IterableDataset cannot be split"),
        (dict(target_labeled=DataLoader(TensorDataset(xl, yl), batch_size=8,
                                        sampler=torch.utils.data.SubsetRandomSampler(range(40)))), {},
         "custom sampler or batch sampler"),
        (dict(), dict(eval_data={"val": shift.target_test}), "eval_data has a set named 'val'"),
    ]
    for change, extra, words in cases:
        torch.manual_seed(0)
        model = default_model(2, 2)
        before = state(model)
        tr = TwoStageTrainer(model, finetune_validation=0.2, **SMALL)
        with pytest.raises(ValueError, match=words):
            tr.check_inputs(**_with(shift, **change), **extra)
        with pytest.raises(ValueError, match=words):
            tr.fit(**_with(shift, **change), **extra)
        assert same_state(before, state(model)) and tr.history == {"align": [], "finetune": []}


def test_a_dataloader_is_split_like_arrays(shift):
    xl, yl = (torch.as_tensor(a) for a in shift.target_labeled)
    tr = TwoStageTrainer(finetune_validation=0.3, **SMALL, seed=1)
    tr.fit(shift.source, shift.target_unlabeled, DataLoader(TensorDataset(xl, yl), batch_size=10, shuffle=True))
    recs = tr.history["finetune"]
    train_idx, val_idx = stratified_split(yl, 0.3, seed=1)
    per_class = torch.bincount(yl).tolist()
    assert val_idx.numel() == sum(math.floor(0.3 * n + 0.5) for n in per_class) and len(recs) == 3
    loss, acc = held_out_ce(tr.model, xl[val_idx].float(), yl[val_idx])
    assert recs[tr.best_epoch]["best"] and recs[tr.best_epoch]["val_loss"] == pytest.approx(loss, rel=1e-6)
    assert recs[tr.best_epoch]["val_accuracy"] == pytest.approx(acc)
    # the loaders: Subsets of the same indices as for arrays, the batch size kept, the training one shuffled
    p = prepare(tr.state, tr.model, None, None, DataLoader(TensorDataset(xl, yl), batch_size=10, shuffle=True), None, "finetune")
    train, val = p.target_labeled, p.target_validation
    assert train.dataset.indices == train_idx.tolist() and val.dataset.indices == val_idx.tolist()
    assert train.batch_size == val.batch_size == 10
    assert isinstance(train.sampler, torch.utils.data.RandomSampler)
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)


@pytest.mark.parametrize("when", ["mid-run", "at the stop"])
def test_resume_with_early_stopping_is_bit_identical(noisy, tmp_path, interrupt_after, when):
    x, y, init = noisy
    kw = dict(finetune_epochs=12, finetune_validation=0.5, patience=3, finetune_policy=L2SP(0.01), **ES)
    straight = TwoStageTrainer(es_model(init), **kw)
    straight.finetune((x, y))
    n = len(straight.history["finetune"])
    assert straight.stopped_early and n == straight.best_epoch + 4 < 12
    # mid-run: one epoch past the best, so the checkpoint's best weights are not its current ones
    stop_after = straight.best_epoch + 2 if when == "mid-run" else n  # the checkpoint after epoch stop_after - 1
    ckpt = str(tmp_path / "ckpt.pt")
    with interrupt_after(stop_after):
        TwoStageTrainer(es_model(init), checkpoint=ckpt, **kw).finetune((x, y))
    # the resumed run starts from other weights: everything comes from the checkpoint
    resumed = TwoStageTrainer(default_model(4, 2, NOISY_WIDTH, dropout=0.2), **kw)
    resumed.finetune((x, y), resume_from=ckpt)
    assert same_state(state(resumed.model), state(straight.model))
    assert resumed.history == straight.history
    assert (resumed.best_epoch, resumed.stopped_early) == (straight.best_epoch, True)
    # a checkpoint without the early-stopping state cannot feed a run that needs it
    plain = str(tmp_path / "plain.pt")
    TwoStageTrainer(es_model(init), finetune_epochs=2, checkpoint=plain, **ES).finetune((x, y))
    with pytest.raises(ValueError, match="run without finetune_validation"), pytest.warns(UserWarning, match="differ"):
        TwoStageTrainer(es_model(init), **kw).finetune((x, y), resume_from=plain)


def test_early_stopping_under_a_freezing_policy_in_fit(shift):
    tr = TwoStageTrainer(finetune_validation=0.2, patience=1, finetune_policy=FreezeFirst(1), finetune_lr=0.05,
                         align_epochs=2, finetune_epochs=10, progress=False, seed=0)
    tr.fit(shift.source, shift.target_unlabeled, shift.target_labeled, eval_data=shift.target_test)
    recs = tr.history["finetune"]
    assert sum(r["best"] for r in recs) == 1 and recs[tr.best_epoch]["best"]
    assert tr.history["align"] and "val_loss" not in tr.history["align"][0]
    # the final model is the best epoch's: its accuracy on the test set is that epoch's record
    assert recs[tr.best_epoch]["target_acc"] == pytest.approx(tr.score(*shift.target_test))
    assert len(recs) == 10 or (tr.stopped_early and len(recs) == tr.best_epoch + 2)


def _noisy_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    return x, ((x[:, 0] + torch.randn(40, generator=g)) > 0).long()


def _ddp_early_stopping_worker():
    """One rank of test_early_stopping_under_ddp (run as a subprocess, as torchrun would)."""
    import torch.distributed as dist
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=os.environ["ES_RDZV"], rank=rank, world_size=world)
    x, y = _noisy_data()
    init = torch.load(os.environ["ES_INIT"], weights_only=True)
    tr = TwoStageTrainer(es_model(init, dropout=0.0), finetune_epochs=12, finetune_validation=0.5, patience=2, **ES)
    tr.finetune((x, y))
    torch.save({"history": tr.history, "state": state(tr.model), "best_epoch": tr.best_epoch,
                "stopped_early": tr.stopped_early, "world": tr.state.world},
               os.path.join(os.environ["ES_OUT"], f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with gloo is not available")
def test_early_stopping_under_ddp(noisy, tmp_path):
    """Two gloo ranks: the split is made before sharding, each rank evaluates all of the held-out part,
    so the ranks agree on every val_loss, the best epoch and the stop, and match one process (no dropout:
    its masks differ between ranks)."""
    x, y, init = noisy
    torch.save(init, tmp_path / "init.pt")
    tests = Path(__file__).resolve().parent
    code = f"import sys; sys.path.insert(0, {str(tests)!r}); import test_train as t; t._ddp_early_stopping_worker()"
    procs = []
    for r in range(2):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "ES_RDZV": f"file://{tmp_path / 'rdzv'}",
               "ES_OUT": str(tmp_path), "ES_INIT": str(tmp_path / "init.pt"), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(tests.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for r, p in enumerate(procs):
        text, _ = p.communicate(timeout=180)
        assert p.returncode == 0, f"rank {r}:\n{text[-3000:]}"
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["world"] == 2
    assert ranks[0]["history"] == ranks[1]["history"] and same_state(ranks[0]["state"], ranks[1]["state"])
    single = TwoStageTrainer(es_model(init, dropout=0.0), finetune_epochs=12, finetune_validation=0.5, patience=2,
                             **ES)
    single.finetune((x, y))
    got, want = ranks[0]["history"]["finetune"], single.history["finetune"]
    assert (ranks[0]["best_epoch"], ranks[0]["stopped_early"], len(got)) == (single.best_epoch, True, len(want))
    assert [r["val_loss"] for r in got] == pytest.approx([r["val_loss"] for r in want], rel=1e-4)
    # the returned model's CE on the held-out rows of the full labels' split is the best epoch's record
    _, val_idx = stratified_split(y, 0.5, seed=0)
    model = es_model(ranks[0]["state"], dropout=0.0)
    assert got[ranks[0]["best_epoch"]]["val_loss"] == pytest.approx(held_out_ce(model, x[val_idx], y[val_idx])[0],
                                                                     rel=1e-6)


def test_resume_into_another_architecture_is_a_clear_error(tmp_path, monkeypatch):
    """A checkpoint of another model (same samples and classes, another hidden width) is refused by name, with
    the first mismatching tensors, before any step: in fit, align and finetune (which loads a stage-1 model)."""
    x, y = _noisy_data()
    tiny = dict(align_epochs=1, finetune_epochs=1, batch_size=20, finetune_batch_size=20, progress=False, seed=0)
    aligned, tuned = str(tmp_path / "aligned.pt"), str(tmp_path / "tuned.pt")
    TwoStageTrainer(default_model(4, 2, [16]), checkpoint=aligned, **tiny).align((x, y), x + 1.0)
    TwoStageTrainer(default_model(4, 2, [16]), checkpoint=tuned, **tiny).fit((x, y), x + 1.0, (x, y))
    monkeypatch.setattr("pytl.train.trainer.run_stage", lambda *a, **k: pytest.fail("training started"))
    wider = TwoStageTrainer(default_model(4, 2, [32]), **tiny)
    calls = [(aligned, lambda p: wider.fit((x, y), x + 1.0, (x, y), resume_from=p)),
             (tuned, lambda p: wider.fit((x, y), x + 1.0, (x, y), resume_from=p)),
             (aligned, lambda p: wider.align((x, y), x + 1.0, resume_from=p)),
             (aligned, lambda p: wider.finetune((x, y), resume_from=p))]
    for path, call in calls:
        with pytest.raises(ValueError) as info:
            call(path)
        message = str(info.value)
        assert message.startswith(f"resume_from={path!r}: the checkpoint's model does not match this trainer's model")
        assert ("encoder.blocks.0.0.weight: checkpoint (16, 4), model (32, 4); encoder.blocks.0.0.bias: checkpoint "
                "(16,), model (32,); head.layers.0.weight: checkpoint (2, 16), model (2, 32)") in message
        assert "head.layers.0.bias" not in message and "more" not in message  # its shape (2,) matches
    # a deeper model: the first three of five differences, and how many more
    with pytest.raises(ValueError, match=r"head.layers.0.weight: checkpoint \(2, 16\), model \(2, 8\); and 2 more$"):
        TwoStageTrainer(default_model(4, 2, [32, 8]), **tiny).fit((x, y), x + 1.0, (x, y), resume_from=tuned)
