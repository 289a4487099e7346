"""pytl.freezing: blocks, freezing functions and policies, BatchNorm, schedules, per-depth lrs, L2-SP."""

import inspect
import re

import numpy as np
import pytest
import torch
from torch import nn

from pytl import freezing as fz
from pytl.models import TransferModel, default_model
from pytl.train import TwoStageTrainer


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(batch_norm=False, seed=0):
    torch.manual_seed(seed)
    return default_model(2, 3, hidden_sizes=(4, 5), batch_norm=batch_norm)


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long()


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------- the package


def test_every_public_name_is_served_by_the_package_itself():
    """pytl.freezing was one module: its names, and the ones other modules import, keep their paths."""
    assert set(fz.__all__) == {
        "BatchNormPolicy", "Block", "Compose", "FreezeAllButHead", "FreezeByName", "FreezeFirst", "FreezingPolicy",
        "GradualUnfreeze", "L2SP", "LayerwiseLR", "blocks", "freeze", "freeze_all_but_head", "freeze_by_name",
        "freeze_first", "param_groups", "summary", "unfreeze"}
    for name in fz.__all__:
        assert not inspect.ismodule(getattr(fz, name)), f"pytl.freezing.{name} is a submodule, not the public object"
    from pytl.freezing import BatchNormPolicy, FreezeFirst, FreezingPolicy, blocks, param_groups, summary
    assert issubclass(BatchNormPolicy, FreezingPolicy) and issubclass(FreezeFirst, FreezingPolicy)
    assert callable(blocks) and callable(param_groups) and callable(summary)


# --------------------------------------------------------------------------------------- blocks


def test_blocks_of_the_default_mlp_partition_its_parameters():
    m = mlp()
    bs = fz.blocks(m)
    assert [b.name for b in bs] == ["encoder.blocks.0", "encoder.blocks.1", "head"]
    # Linear(2,4): 8+4, Linear(4,5): 20+5, head Linear(5,3): 15+3
    assert [b.num_params for b in bs] == [12, 25, 18]
    names = [n for b in bs for n in b.params]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters())


def test_blocks_of_a_swapped_backbone_and_of_a_plain_module():
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 10))
    m = TransferModel.from_backbone(backbone, 2)
    assert [b.name for b in fz.blocks(m)] == ["encoder.0", "encoder.1", "head"]
    plain = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    assert [b.name for b in fz.blocks(plain)] == ["0", "2"]


def test_blocks_keep_parameters_owned_by_a_container():
    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.zeros(3))
            self.body = nn.Linear(3, 3)
            self.out = nn.Linear(3, 2)

    bs = fz.blocks(WithToken())
    assert [b.name for b in bs] == ["(own)", "body", "out"]
    assert list(bs[0].params) == ["token"]


# ------------------------------------------------------------------------------ plain functions


def test_freeze_first_k_blocks():
    m = mlp()
    assert fz.freeze_first(m, 1) == ["encoder.blocks.0"]
    assert trainable(m) == {"encoder.blocks.1.0.weight", "encoder.blocks.1.0.bias", "head.layers.0.weight",
                            "head.layers.0.bias"}
    with pytest.raises(ValueError, match="only 3 blocks"):
        fz.freeze_first(m, 4)
    with pytest.raises(ValueError, match=">= 0"):
        fz.freeze_first(m, -1)


def test_freeze_by_name_globs_and_regexes():
    m = mlp()
    fz.freeze_by_name(m, "encoder.blocks.0.*")
    fz.freeze_by_name(m, re.compile(r"\.bias$"))
    assert trainable(m) == {"encoder.blocks.1.0.weight", "head.layers.0.weight"}
    with pytest.raises(ValueError, match="no parameter name matches"):
        fz.freeze_by_name(m, "decoder.*")
    with pytest.raises(TypeError, match="glob strings or compiled regexes"):
        fz.freeze_by_name(m, [3])


def test_freeze_all_but_head_and_unfreeze():
    m = mlp()
    fz.freeze_all_but_head(m)
    assert trainable(m) == {"head.layers.0.weight", "head.layers.0.bias"}
    fz.unfreeze(m)
    assert len(trainable(m)) == 6


def test_summary_counts_per_block():
    m = mlp()
    fz.freeze_first(m, 1)
    text = fz.summary(m)
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line and line[0] not in "-b"}
    assert lines["encoder.blocks.0"][:2] == ["0", "12"]
    assert lines["encoder.blocks.1"][:2] == ["25", "0"]
    assert lines["head"][:2] == ["18", "0"]
    assert lines["total"][:2] == ["43", "12"]


def test_policy_summary_does_not_touch_the_model():
    m = mlp()
    policy = fz.FreezeFirst(2) + fz.LayerwiseLR(0.5)
    text = policy.summary(m)
    assert "FreezeFirst(2)" in text and "LayerwiseLR(decay=0.5)" in text
    assert len(trainable(m)) == 6
    head_line = next(line for line in text.splitlines() if line.startswith("head"))
    assert head_line.split()[1:] == ["18", "0", "1"]
    first = next(line for line in text.splitlines() if line.startswith("encoder.blocks.0"))
    assert first.split()[1:] == ["0", "12", "0.25"]


# ------------------------------------------------------------------------------------ policies


def test_compose_orders_freezers_before_schedules_and_rejects_non_policies():
    pol = fz.BatchNormPolicy() + fz.GradualUnfreeze(2) + fz.FreezeFirst(1)
    assert [type(p).__name__ for p in pol.policies()] == ["FreezeFirst", "GradualUnfreeze", "BatchNormPolicy"]
    with pytest.raises(TypeError):
        fz.Compose([fz.FreezeFirst(1), "freeze"])


@pytest.mark.parametrize("make, words", [
    (lambda: fz.FreezeFirst(-1), "k must be"),
    (lambda: fz.BatchNormPolicy("eval"), "mode must be one of"),
    (lambda: fz.GradualUnfreeze(-2), "start"),
    (lambda: fz.GradualUnfreeze(1, every=0), "every"),
    (lambda: fz.GradualUnfreeze(1, lr_factor=0), "lr_factor"),
    (lambda: fz.LayerwiseLR(1.5), "decay"),
    (lambda: fz.L2SP(alpha=-1), "alpha"),
])
def test_policy_argument_checks(make, words):
    with pytest.raises(ValueError, match=words):
        make()


@pytest.mark.parametrize("make, exc, words", [
    (lambda: fz.FreezeFirst(1.0), TypeError, "k must be an int"),
    (lambda: fz.FreezeFirst(True), TypeError, "k must be an int"),
    (lambda: fz.freeze_first(mlp(), 1.0), TypeError, "k must be an int"),
    (lambda: fz.GradualUnfreeze("2"), TypeError, "start must be an int"),
    (lambda: fz.GradualUnfreeze(1, every=2.0), TypeError, "every must be None or an int"),
    (lambda: fz.GradualUnfreeze(1, lr_factor="0.1"), TypeError, "lr_factor must be a finite number"),
    (lambda: fz.GradualUnfreeze(1, lr_factor=float("inf")), ValueError, "lr_factor must be a finite number > 0"),
    (lambda: fz.LayerwiseLR(None), TypeError, "decay must be a finite number"),
    (lambda: fz.L2SP(alpha="0.1"), TypeError, "alpha must be a finite number"),
    (lambda: fz.L2SP(beta=float("nan")), ValueError, "beta must be a finite number >= 0"),
    (lambda: fz.L2SP(new=[re.compile("head")]), TypeError, "new must be a glob string"),
    (lambda: fz.L2SP(new=3), TypeError, "new must be a glob string"),
    (lambda: fz.param_groups(mlp(), "1e-3"), TypeError, "lr must be a finite number > 0"),
    (lambda: fz.param_groups(mlp(), 1e-3, weight_decay=-1.0), ValueError, "weight_decay must be a finite number >= 0"),
])
def test_wrong_types_raise_type_error_and_bad_values_value_error(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    policy = fz.GradualUnfreeze(np.int64(2), every=np.int32(1), lr_factor=np.float32(0.5))
    assert (policy.start, policy.every, policy.lr_factor) == (2, 1, 0.5)
    assert type(policy.start) is int and type(policy.lr_factor) is float
    assert type(fz.FreezeFirst(np.int64(1)).k) is int
    assert fz.L2SP(new="head.*").new == ("head.*",)


def test_layerwise_lr_param_groups_have_the_expected_rates():
    m = mlp()
    groups = fz.param_groups(m, 1e-2, fz.LayerwiseLR(0.1))
    assert [g["block"] for g in groups] == ["encoder.blocks.0", "encoder.blocks.1", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3, 1e-2], rel=1e-12)
    assert sum(len(g["params"]) for g in groups) == 6
    with pytest.raises(ValueError, match="lr"):
        fz.param_groups(m, 0.0)


def test_l2sp_penalty_matches_a_hand_computation():
    m = mlp()
    pol = fz.L2SP(alpha=0.3, beta=0.07)
    pol.apply(m)
    w0 = {n: p.detach().numpy().copy() for n, p in m.named_parameters()}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    fz.freeze(m.encoder.blocks[0])  # frozen parameters do not count
    expected = 0.0
    for n, p in m.named_parameters():
        w = p.detach().numpy()
        if n.startswith("encoder.blocks.0"):
            continue
        if n.startswith("head."):
            expected += 0.07 * float(np.sum(w.astype(np.float64) ** 2))
        else:
            expected += 0.3 * float(np.sum((w.astype(np.float64) - w0[n]) ** 2))
    got = pol.penalty(m)
    assert got.requires_grad
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_l2sp_needs_its_starting_weights():
    with pytest.raises(RuntimeError, match="before apply"):
        fz.L2SP().penalty(mlp())


def test_l2sp_new_layers_are_configurable_and_gradient_points_back_to_w0():
    m = mlp()
    pol = fz.L2SP(alpha=1.0, beta=0.0, new=())
    pol.apply(m)
    with torch.no_grad():
        m.head.layers[0].bias.add_(2.0)
    pol.penalty(m).backward()
    # d/dw alpha*||w - w0||^2 = 2*alpha*(w - w0) = 4 for every head bias entry, 0 elsewhere
    assert torch.allclose(m.head.layers[0].bias.grad, torch.full((3,), 4.0))
    assert torch.count_nonzero(m.encoder.blocks[0][0].weight.grad) == 0


def test_l2sp_keeps_fine_tuned_weights_near_the_start():
    x, y = data()
    drift = {}
    for alpha in (0.0, 10.0):
        m = mlp()
        w0 = torch.cat([p.detach().flatten() for p in m.encoder.parameters()])
        TwoStageTrainer(m, finetune_epochs=30, lr=0.05, progress=False,
                        finetune_policy=fz.L2SP(alpha=alpha)).finetune((x, y))
        drift[alpha] = float((torch.cat([p.detach().flatten() for p in m.encoder.parameters()]) - w0).norm())
    assert drift[10.0] < 0.5 * drift[0.0]


# ---------------------------------------------------------------- training: frozen means frozen


def test_frozen_parameters_are_unchanged_bit_for_bit_after_training():
    x, y = data()
    m = mlp()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    tr = TwoStageTrainer(m, finetune_epochs=5, lr=0.05, progress=False, finetune_policy=fz.FreezeFirst(2))
    tr.finetune((x, y))
    assert "encoder.blocks.1" in tr.policy_summary["finetune"]
    for n, p in m.named_parameters():
        if n.startswith("encoder."):
            assert torch.equal(p, before[n]), n
        else:
            assert not torch.equal(p, before[n]), n


def test_frozen_batchnorm_keeps_its_running_statistics():
    x, y = data()
    m = mlp(batch_norm=True)
    bn0, bn1 = m.encoder.blocks[0][1], m.encoder.blocks[1][1]
    before0 = {k: v.clone() for k, v in bn0.state_dict().items()}
    before1 = {k: v.clone() for k, v in bn1.state_dict().items()}
    TwoStageTrainer(m, finetune_epochs=3, progress=False, finetune_policy=fz.FreezeFirst(1)).finetune((x, y))
    for k, v in bn0.state_dict().items():
        assert torch.equal(v, before0[k]), k  # running_mean, running_var, num_batches_tracked, weight, bias
    assert not torch.equal(bn1.running_mean, before1["running_mean"])  # the trainable block still learns


def test_batchnorm_policy_train_lets_frozen_statistics_move():
    x, y = data()
    m = mlp(batch_norm=True)
    bn0 = m.encoder.blocks[0][1]
    before = bn0.running_mean.clone()
    policy = fz.FreezeFirst(1) + fz.BatchNormPolicy("train")
    TwoStageTrainer(m, finetune_epochs=1, progress=False, finetune_policy=policy).finetune((x, y))
    assert not torch.equal(bn0.running_mean, before)


def test_batchnorm_policy_survives_model_train_and_is_removable():
    x, _ = data()
    m = mlp(batch_norm=True)
    fz.freeze_first(m, 1)
    pol = fz.BatchNormPolicy("frozen")
    pol.apply(m)
    m.train()  # a user (or a trainer) switching to train mode must not unfreeze the statistics
    bn0, bn1 = m.encoder.blocks[0][1], m.encoder.blocks[1][1]
    b0, b1 = bn0.running_mean.clone(), bn1.running_mean.clone()
    m(x)
    assert torch.equal(bn0.running_mean, b0) and not torch.equal(bn1.running_mean, b1)
    assert bn0.training  # the module's own mode is restored after its forward
    pol.release(m)
    m(x)
    assert not torch.equal(bn0.running_mean, b0)


def test_batchnorm_policy_all_freezes_every_statistic():
    x, _ = data()
    m = mlp(batch_norm=True)
    pol = fz.BatchNormPolicy("all")
    pol.apply(m)
    m.train()
    stats = [bn.running_var.clone() for bn in (m.encoder.blocks[0][1], m.encoder.blocks[1][1])]
    m(x)
    assert all(torch.equal(bn.running_var, s) for bn, s in zip((m.encoder.blocks[0][1], m.encoder.blocks[1][1]), stats))


def test_gradual_unfreeze_all_at_once_with_ten_times_smaller_lr():
    m = mlp()
    pol = fz.GradualUnfreeze(start=2, lr_factor=0.1)
    pol.apply(m)
    opt = torch.optim.SGD(fz.param_groups(m, 1.0, pol))
    assert trainable(m) == {"head.layers.0.weight", "head.layers.0.bias"}
    assert pol.on_epoch_start(m, 0, opt) == [] and pol.on_epoch_start(m, 1, opt) == []
    assert pol.on_epoch_start(m, 2, opt) == ["encoder.blocks.1", "encoder.blocks.0"]
    assert len(trainable(m)) == 6
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.1, 1.0])
    assert pol.on_epoch_start(m, 3, opt) == []


def test_gradual_unfreeze_one_block_at_a_time_respects_other_freezers():
    m = default_model(2, 2, hidden_sizes=(3, 3, 3))
    pol = fz.FreezeFirst(1) + fz.GradualUnfreeze(start=1, every=2, lr_factor=0.5) + fz.LayerwiseLR(0.5)
    pol.apply(m)
    opt = torch.optim.SGD(fz.param_groups(m, 1.0, pol))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.125, 0.25, 0.5, 1.0])
    got = {e: pol.on_epoch_start(m, e, opt) for e in range(8)}
    assert got == {0: [], 1: ["encoder.blocks.2"], 2: [], 3: ["encoder.blocks.1"], 4: [], 5: [], 6: [], 7: []}
    assert not any(p.requires_grad for p in m.encoder.blocks[0].parameters())  # FreezeFirst(1) wins
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.125, 0.125, 0.25, 1.0])


def test_gradual_unfreeze_in_the_trainer_keeps_the_backbone_fixed_until_start():
    x, y = data()
    m = mlp()
    enc0 = {n: p.detach().clone() for n, p in m.encoder.named_parameters()}
    tr = TwoStageTrainer(m, finetune_epochs=3, lr=0.05, progress=False,
                         finetune_policy=fz.GradualUnfreeze(start=3))
    tr.finetune((x, y))
    assert all(torch.equal(p, enc0[n]) for n, p in m.encoder.named_parameters())  # start never reached
    assert all(p.requires_grad for p in m.parameters())  # the policy holds for its stage only
    assert "GradualUnfreeze(start=3" in tr.policy_summary["finetune"]
    tr2 = TwoStageTrainer(m, finetune_epochs=5, lr=0.05, progress=False,
                          finetune_policy=fz.GradualUnfreeze(start=3))
    hist = tr2.finetune((x, y))
    assert hist[3]["unfrozen"] == ["encoder.blocks.1", "encoder.blocks.0"]
    assert not all(torch.equal(p, enc0[n]) for n, p in m.encoder.named_parameters())


def test_policy_that_freezes_everything_is_refused_before_training():
    x, y = data()
    m = mlp()
    with pytest.raises(ValueError, match="freezes every parameter"):
        TwoStageTrainer(m, finetune_epochs=1, progress=False, finetune_policy=fz.FreezeFirst(3)).finetune((x, y))
    assert all(p.requires_grad for p in m.parameters())  # the refused policy leaves nothing frozen
