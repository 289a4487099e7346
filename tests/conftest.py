"""Shared fixtures: the devices every ops test runs on, one thread for tiny models. Helpers and
reference implementations live in pytl.testing."""

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
