"""Shared test harness: the devices every ops test runs on, and seeded data."""

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


def make_pair(n, m, d, dtype=torch.float64, device="cpu", shift=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) * 1.1 + shift
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)


def cli_exit_code(argv):
    """``python -m pytl ARGV``'s exit status, in process (argparse errors exit with status 2)."""
    from pytl.cli import main

    try:
        return main(argv)
    except SystemExit as e:
        return e.code
