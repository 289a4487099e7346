"""Shared fixtures: the devices every ops test runs on, one thread for tiny models. Helpers and
reference implementations live in pytl.testing."""

import contextlib

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# CUDA tests are collected everywhere (so `-k cuda` finds them) and skipped without a GPU.
ALL_DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")),
]


@pytest.fixture(params=ALL_DEVICES)
def device(request):
    return request.param


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread: their ops are too short to amortise OpenMP
    synchronisation, which on a busy machine costs more than the work. Modules that train such
    models use it for every test: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Interrupted(Exception):
    """The crash that interrupt_after simulates."""


@pytest.fixture
def default_width_64(monkeypatch):
    """The default MLP as it was until the eighth session (64 wide for inputs of up to 64 features), for tests whose
    expected numbers were measured on it."""
    monkeypatch.setattr("pytl.models.defaults.DEFAULT_WIDTH", 64)


@pytest.fixture
def interrupt_after(monkeypatch):
    """``with interrupt_after(k): trainer.fit(...)``: the run dies right after writing the checkpoint of epoch k
    (a crash between epochs), for the tests that resume from such a checkpoint."""
    from pytl.train import loop as train_loop

    @contextlib.contextmanager
    def interrupted(epoch):
        save = train_loop.save_checkpoint

        def save_then_die(run, stage, done, *args, **kwargs):
            save(run, stage, done, *args, **kwargs)
            if done == epoch:
                raise Interrupted

        with pytest.raises(Interrupted), monkeypatch.context() as patch:
            patch.setattr(train_loop, "save_checkpoint", save_then_die)
            yield

    return interrupted
