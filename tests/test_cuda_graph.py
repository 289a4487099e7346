"""CUDA: the default path of pytl.mmd2 / MMDLoss (median-heuristic ladder, weights 1/K) never waits for the
GPU, forward or backward, so that a training step can be captured in a CUDA graph (issue 15). The value
checks of CUDA sigmas and weights run on the device: a bad value still stops with an error, a device-side
assertion whose message names the argument (csrc/common/checks.h, "Value checks on CUDA").

GPU only: every test here is skipped without CUDA. (The bandwidth constants that the GPU now computes are
checked on the CPU against the CPU kernels' compute_order by tests/cpp/test_mmd_op.cpp.)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pytl

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: these tests run on CUDA only")


@contextlib.contextmanager
def sync_is_an_error():
    """Within the block, any host synchronisation that torch can see raises RuntimeError."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def cuda_pair(dtype=torch.float32, n=300, m=200, d=16):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    y = torch.randn(m, d, generator=gen, dtype=dtype) * 1.3 + 0.4
    return x.cuda().requires_grad_(), y.cuda().requires_grad_()


# ------------------------------------------------------------------------------- no sync per call


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_default_path_does_not_sync(dtype):
    x, y = cuda_pair(dtype)
    pytl.mmd2(x, y).backward()  # warm-up: lazy CUDA initialisation is not part of a call
    x.grad = y.grad = None
    with sync_is_an_error():
        loss = pytl.mmd2(x, y)
        loss.backward()
        loss_u = pytl.MMDLoss(estimator="unbiased")(x, y)  # the module, the unbiased estimator
        loss_u.backward()
        with torch.no_grad():
            pytl.mmd2(x, y)  # forward only (no gradient sweep)
    torch.cuda.synchronize()
    assert torch.isfinite(loss.detach()) and x.grad is not None and torch.isfinite(x.grad).all()


def test_cuda_ops_with_device_bandwidths_do_not_sync():
    # the C++ ops alone (bandwidths made before the block): mmd2 with learnable sigmas and weights, its
    # gradients, mmd2_terms and rbf_kernel_matmul
    x, y = cuda_pair()
    sig = torch.tensor([0.5, 2.0, 1.0, 4.0, 1.0], device="cuda", requires_grad=True)  # unsorted, a tie
    w = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2], device="cuda", requires_grad=True)
    s = torch.randn(300, 3, device="cuda")
    pytl.mmd2(x, y, sig, w).backward()  # warm-up
    with sync_is_an_error():
        pytl.mmd2(x, y, sig, w).backward()
        pytl.ops.mmd2_terms(x.detach(), y.detach(), sig.detach())
        pytl.rbf_kernel_matmul(x.detach(), s, sig.detach(), w.detach())
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigmas", [
    [2.0, 0.5, 1.0, 4.0, 1.0],  # unsorted, with a tie: the compute order and its inverse
    [1.0, 2.0 ** 0.5, 2.0, 0.5, 0.5 ** 0.5],  # a ratio-2 ladder, shuffled: the squaring path
], ids=["unsorted-tie", "shuffled-ladder"])
def test_cuda_device_bandwidth_constants_match_cpu(dtype, sigmas):
    # The constants (order, -gamma log2 e, ladder flag) are now computed on the GPU: terms and gradients
    # still agree with the CPU kernels, bandwidth by bandwidth.
    x, y = cuda_pair(dtype, n=150, m=120, d=5)
    sig = torch.tensor(sigmas, dtype=dtype, device="cuda")
    g = torch.linspace(0.5, 1.5, len(sigmas), dtype=dtype, device="cuda")
    x, y = x.detach(), y.detach()
    got = torch.ops.pytl.mmd2_terms_and_grad(g, x, y, sig, False)  # (T, grad x, grad y, grad sigmas)
    want = torch.ops.pytl.mmd2_terms_and_grad(g.cpu(), x.cpu(), y.cpu(), sig.cpu(), False)
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, **tol)
    torch.testing.assert_close(pytl.ops.mmd2_terms(x, y, sig).cpu(), want[0], **tol)  # the forward kernel


# ------------------------------------------------------------------------------- a captured training step


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 3)


def make_net():
    torch.manual_seed(0)
    net = Net().cuda()
    return net, torch.optim.Adam(net.parameters(), lr=1e-2, capturable=True)


def train_step(net, opt, mmd, xs, ys, xt):
    """CE on the labelled source batch + MMD between source and target features; backward; Adam step."""
    fs, ft = net.body(xs), net.body(xt)
    loss = F.cross_entropy(net.head(fs), ys) + 0.5 * mmd(fs, ft)
    loss.backward()
    opt.step()
    return loss


def batches(count):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(64, 8, generator=gen).cuda(), torch.randint(0, 3, (64,), generator=gen).cuda(),
             (torch.randn(48, 8, generator=gen) + 0.7).cuda()) for _ in range(count)]


@pytest.mark.parametrize("bandwidths", ["default", "fixed"])
def test_cuda_graph_captures_a_training_step(bandwidths):
    # "default": MMDLoss() (the median-heuristic ladder and weights 1/K, computed in the step);
    # "fixed": MMDLoss with CUDA sigmas made beforehand (only the ops in the step)
    def make_loss():
        if bandwidths == "default":
            return pytl.MMDLoss()
        return pytl.MMDLoss(sigmas=torch.tensor([0.5, 1.0, 2.0, 4.0], device="cuda"))

    data = batches(5)
    warmup, replays = data[0], data[1:]

    # eager reference: 3 warm-up steps on the first batch, then one step per later batch
    net_e, opt_e = make_net()
    mmd_e = make_loss()
    losses_e = []
    for batch in [warmup] * 3 + replays:
        opt_e.zero_grad(set_to_none=True)
        losses_e.append(float(train_step(net_e, opt_e, mmd_e, *batch).detach()))

    # the same steps, captured once (after the same 3 warm-up steps on a side stream) and replayed
    net_g, opt_g = make_net()
    mmd_g = make_loss()
    static = [t.clone() for t in warmup]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt_g.zero_grad(set_to_none=True)
            train_step(net_g, opt_g, mmd_g, *static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt_g.zero_grad(set_to_none=True)  # backward in the graph allocates the grads from its pool
    with torch.cuda.graph(graph):
        static_loss = train_step(net_g, opt_g, mmd_g, *static)
    losses_g = []
    for batch in replays:
        for dst, src in zip(static, batch):
            dst.copy_(src)
        graph.replay()
        losses_g.append(float(static_loss.detach()))

    torch.testing.assert_close(losses_g, losses_e[3:], rtol=1e-5, atol=1e-6)
    for (name, p_g), p_e in zip(net_g.named_parameters(), net_e.parameters()):
        assert torch.allclose(p_g, p_e, rtol=1e-5, atol=1e-6), name
    net_0, _ = make_net()
    assert any(not torch.allclose(p, p0) for p, p0 in zip(net_g.parameters(), net_0.parameters()))  # it trained


# ------------------------------------------------------------------------------- bad values still stop

BAD_VALUE_SCRIPT = """
import torch, pytl
x = torch.randn(50, 4, device="cuda", requires_grad=True)
y = torch.randn(40, 4, device="cuda") + 0.5
try:
    pytl.mmd2(x, y, {sigmas}, {weights}).backward()
    torch.cuda.synchronize()
except RuntimeError as exc:
    print("RuntimeError:", exc, flush=True)
    raise SystemExit(3)
print("no error", flush=True)
"""


SIGMA_MESSAGE = "pytl.mmd2: every bandwidth in sigmas must be positive and finite"
WEIGHT_MESSAGE = "pytl.mmd2: weights must be non-negative and finite"


@pytest.mark.parametrize("sigmas,weights,message", [
    ('torch.tensor([1.0, -1.0], device="cuda")', "None", SIGMA_MESSAGE),
    ('torch.tensor([1.0, float("nan")], device="cuda")', "None", SIGMA_MESSAGE),
    ("[1.0, 2.0]", 'torch.tensor([1.0, -0.5], device="cuda")', WEIGHT_MESSAGE),
], ids=["negative-sigma", "nan-sigma", "negative-weight"])
def test_cuda_bad_value_stops_with_a_device_assert_naming_the_argument(sigmas, weights, message):
    # In a subprocess: a device-side assertion leaves the process's CUDA context unusable.
    code = textwrap.dedent(BAD_VALUE_SCRIPT.format(sigmas=sigmas, weights=weights))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 3, out
    assert "device-side assert" in out, out
    # The GPU prints the assertion's message. (torch versions whose aten::_assert_async drops its message
    # on CUDA print the generic assertion of _assert_async_cuda_kernel for the weights instead.)
    assert message in out or ("weights" in message and "_assert_async" in out), out
