"""The two CPU routes of the fused MMD: the register-blocked sweep, and the machine's GEMM on tiles (taken by
default for small pooled batches of wide features). PYTL_CPU_MMD_ROUTE forces one, so each is checked on every shape,
against the float64 reference formula and autograd through it."""

import pytest
import torch

import pytl
from pytl import ops
from pytl.testing import make_pair, mmd2_reference64, terms_reference

ROUTES = ["sweep", "gemm"]


@pytest.fixture(params=ROUTES)
def route(request, monkeypatch):
    monkeypatch.setenv("PYTL_CPU_MMD_ROUTE", request.param)
    return request.param


# Pooled sizes around the tile sizes (32..256 rows, N / (2 threads) on small inputs), x/y boundaries
# inside and on tile edges, a single row on either side, and features below and above the default switch.
SHAPES = [(1, 1, 300), (1, 7, 257), (9, 1, 64), (16, 16, 256), (33, 31, 300), (64, 64, 512),
          (100, 157, 260), (300, 211, 33), (513, 2, 256), (2, 600, 300)]


# the unbiased estimator needs 2 rows per sample (a single row is an error, tested in test_ops)
CASES = [(n, m, d, e) for n, m, d in SHAPES for e in ("biased", "unbiased") if e == "biased" or min(n, m) >= 2]


@pytest.mark.parametrize("n,m,d,estimator", CASES)
def test_terms_match_float64_reference(route, n, m, d, estimator):
    x, y = make_pair(n, m, d, torch.float64, seed=n + 7 * m + d)
    sigmas = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64) * d**0.5  # not a ladder: one exp each
    got = ops.mmd2_terms(x, y, sigmas, estimator == "unbiased")
    want = terms_reference(x, y, sigmas, estimator == "unbiased")
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("n,m,d", [(1, 7, 257), (33, 31, 300), (100, 157, 260), (513, 2, 256)])
def test_gradients_match_reference_autograd(route, n, m, d):
    x, y = make_pair(n, m, d, torch.float64, seed=d)
    sig = pytl.bandwidth_ladder(torch.tensor(0.8 * d**0.5, dtype=torch.float64)).requires_grad_()  # the ladder
    w = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=torch.float64, requires_grad=True)
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    pytl.mmd2(xg, yg, sig, w).backward()
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    sr, wr = sig.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    mmd2_reference64(xr, yr, sr, wr).backward()
    for got, want in [(xg.grad, xr.grad), (yg.grad, yr.grad), (sig.grad, sr.grad), (w.grad, wr.grad)]:
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12 * max(1.0, want.abs().max().item()))


def test_float32_far_from_origin(route):
    # centring: float32 points near 1e3 * (1, ..., 1) keep their distances accurate on both routes
    x64, y64 = make_pair(150, 170, 300, torch.float64, shift=0.5)
    x32, y32 = (x64 + 1e3).float(), (y64 + 1e3).float()
    sig = [20.0, 40.0]
    xd, yd = x32.clone().requires_grad_(), y32.clone().requires_grad_()
    got = pytl.mmd2(xd, yd, sig)
    got.backward()
    xr, yr = x32.double().requires_grad_(), y32.double().requires_grad_()
    want = mmd2_reference64(xr, yr, sig)
    want.backward()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    scale = xr.grad.abs().max().item()
    torch.testing.assert_close(xd.grad.double(), xr.grad, rtol=1e-3, atol=1e-3 * scale)
    torch.testing.assert_close(yd.grad.double(), yr.grad, rtol=1e-3, atol=1e-3 * scale)


def test_bitwise_reproducible_and_statistic_independent_of_threads(route):
    x, y = make_pair(700, 450, 300, torch.float32, seed=5)
    x.requires_grad_()
    sig = [8.0, 16.0, 32.0]

    def run():
        out = pytl.mmd2(x, y, sig)
        (gx,) = torch.autograd.grad(out, x)
        return out, gx

    first = run()
    again = run()
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first[0], pytl.mmd2(x.detach(), y, sig))  # forward alone: the same sums
    # the statistic's partial sums are per tile, reduced in tile order; the gradient's per-thread
    # buffers make it reproducible per thread count and equal up to rounding across counts
    assert torch.equal(first[0], one[0])
    torch.testing.assert_close(first[1], one[1], rtol=1e-5, atol=1e-7)


def test_nan_propagates(route):
    x, y = make_pair(40, 50, 300, torch.float32)
    x[3, 17] = float("nan")
    assert torch.isnan(pytl.mmd2(x, y, 10.0))
    xg = x.clone().requires_grad_()
    pytl.mmd2(xg, y, 10.0).backward()
    assert torch.isnan(xg.grad).any()


def test_half_inputs_accumulate_in_float32(route):
    x, y = make_pair(60, 70, 300, torch.float64, seed=2)
    got = pytl.mmd2(x.half(), y.half(), [10.0, 20.0])
    want = mmd2_reference64(x.half().double(), y.half().double(), [10.0, 20.0])
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=1e-4)


def test_routes_agree_on_wide_float32():
    x, y = make_pair(300, 260, 512, torch.float32, seed=9)
    results = {}
    for r in ROUTES:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PYTL_CPU_MMD_ROUTE", r)
            xg = x.clone().requires_grad_()
            value = pytl.mmd2(xg, y)
            value.backward()
            results[r] = (value.detach(), xg.grad)
    torch.testing.assert_close(results["sweep"][0], results["gemm"][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(results["sweep"][1], results["gemm"][1], rtol=1e-4, atol=1e-6)


def test_unknown_route_is_a_value_error(monkeypatch):
    monkeypatch.setenv("PYTL_CPU_MMD_ROUTE", "blas")
    x, y = make_pair(5, 5, 3)
    with pytest.raises(ValueError, match="PYTL_CPU_MMD_ROUTE must be 'sweep' or 'gemm'"):
        pytl.mmd2(x, y, 1.0)
