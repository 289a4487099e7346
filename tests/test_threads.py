"""Threads sized by the work: the CPU kernels run a small batch on one thread whatever torch's thread count
(a busy machine makes every extra thread of a tiny parallel region wait a time slice), and the trainer's
num_threads="auto" trains a small model's steps on one thread."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pytl
from pytl.train import TwoStageTrainer
from pytl.train.threads import AUTO_FLOPS_PER_THREAD, stage_threads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n, m, d", [(64, 64, 256), (200, 150, 32), (32, 48, 8)])
def test_a_small_batch_gives_the_same_bits_on_one_and_two_threads(two_threads, n, m, d):
    """Below the work of a thread (csrc/cpu/thread_budget.h) the sweep has one slot whatever the thread count,
    so its per-slot sums are added in the same order: the value and the gradients are bitwise equal."""
    g = torch.Generator().manual_seed(0)
    x0, y0 = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g) + 0.2

    def run(threads):
        torch.set_num_threads(threads)
        x, y = x0.clone().requires_grad_(True), y0.clone().requires_grad_(True)
        v = pytl.mmd2(x, y)
        v.backward()
        return v.detach(), x.grad, y.grad

    one, two = run(1), run(2)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_stage_threads_sizes_by_the_step_work():
    small = nn.Linear(784, 256)  # ~200k parameters x 128 rows x 6: 0.15 GFLOP per step
    assert stage_threads("auto", small, 128) == 1
    big = nn.Linear(4096, 4096)  # 16.8M parameters: 12.9 GFLOP per step of 128 rows
    expected = None if torch.get_num_threads() > 1 else 1
    assert stage_threads("auto", big, 128) == expected
    assert 6 * sum(p.numel() for p in big.parameters()) * 128 > 2 * AUTO_FLOPS_PER_THREAD
    assert stage_threads(3, small, 128) == 3 and stage_threads(None, small, 128) is None


class Recording(nn.Module):
    """A TransferModel-shaped module that records torch's thread count at every training forward."""

    def __init__(self):
        super().__init__()
        self.encoder, self.head, self.seen = nn.Linear(2, 8), nn.Linear(8, 2), set()

    def embed(self, x):
        if self.training:  # the training steps (not the trainer's eval-mode probe of the model)
            self.seen.add(torch.get_num_threads())
        return torch.relu(self.encoder(x))

    def forward(self, x):
        return self.head(self.embed(x))


@pytest.mark.parametrize("setting, expected", [("auto", {1}), (None, {2}), (2, {2})])
def test_the_trainer_default_trains_a_small_model_on_one_thread(two_threads, setting, expected):
    d = pytl.make_domain_shift(0, n_source=64, n_target_unlabeled=64, n_target_labeled=10)
    model = Recording()
    kw = {} if setting == "auto" else {"num_threads": setting}  # "auto" is the default
    t = TwoStageTrainer(model, align_epochs=1, finetune_epochs=1, progress=False, **kw)
    model.seen.clear()
    t.fit(d.source, d.target_unlabeled, d.target_labeled)
    assert model.seen == expected and torch.get_num_threads() == 2  # restored after


def test_bad_thread_settings_name_the_argument():
    with pytest.raises(ValueError, match="num_threads must be 'auto', None or an int >= 1, got 'two'"):
        TwoStageTrainer(None, num_threads="two")
    with pytest.raises(ValueError, match="num_threads must be None or an int >= 1"):
        TwoStageTrainer(None, num_threads=0)
