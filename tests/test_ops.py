"""The fused MMD op: values, gradients, registration, compile, determinism, numerics, bad input.

Every test body runs on each available device (see conftest.device); CUDA results are compared
with the float64 reference computed on the CPU.
"""

import itertools
import random

import numpy as np
import pytest
import torch

import pytl
from pytl import ops
from pytl.testing import make_pair, mmd2_reference, mmd2_reference64, terms_reference


def _shape_grid():
    """A seeded sample of (n, m, d, K, estimator, dtype) over the ranges the issue asks for."""
    rng = random.Random(1234)
    sizes = [1, 2, 3, 5, 17, 64, 127, 300]
    dims = [1, 2, 3, 8, 33, 64, 129, 300]
    cases = []
    for estimator, dtype in itertools.product(["biased", "unbiased"], [torch.float32, torch.float64]):
        for _ in range(8):
            n, m = rng.choice(sizes), rng.choice(sizes)
            if estimator == "unbiased":
                n, m = max(n, 2), max(m, 2)
            cases.append((n, m, rng.choice(dims), rng.randint(1, 8), estimator, dtype))
    cases += [(1, 1, 1, 1, "biased", torch.float64), (2, 2, 1, 1, "unbiased", torch.float64),
              (300, 300, 300, 8, "unbiased", torch.float32), (2, 300, 5, 3, "unbiased", torch.float32)]
    return cases


TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.mark.parametrize("n,m,d,K,estimator,dtype", _shape_grid())
def test_terms_match_float64_reference(device, n, m, d, K, estimator, dtype):
    x, y = make_pair(n, m, d, dtype, device, seed=n * 1000 + m + d)
    sigmas = torch.linspace(0.3, 3.0, K, dtype=torch.float64) * max(1.0, d**0.5)
    got = ops.mmd2_terms(x, y, sigmas.to(device=device, dtype=dtype), estimator == "unbiased")
    want = terms_reference(x.cpu().double(), y.cpu().double(), sigmas, estimator == "unbiased")
    assert got.dtype == dtype and got.shape == (K,)
    torch.testing.assert_close(got.cpu().double(), want, **TOL[dtype])


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd2_weights_and_public_api(device, estimator):
    x, y = make_pair(40, 31, 6, torch.float64, device)
    sig, w = [0.5, 1.5, 4.0], [0.2, 0.5, 0.3]
    got = pytl.mmd2(x, y, sig, w, estimator=estimator)
    want = mmd2_reference64(x.cpu(), y.cpu(), sig, w, estimator == "unbiased")
    assert got.dim() == 0 and got.dtype == torch.float64
    torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-12)
    # the module twin and the materialising reference agree with it
    torch.testing.assert_close(pytl.MMDLoss(sig, w, estimator)(x, y), got)
    torch.testing.assert_close(mmd2_reference(x, y, sig, w, estimator=estimator), got, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("sigmas,weights,fragment", [
    (0.0, None, "sigmas must be positive"), ([-1.0], None, "sigmas must be positive"),
    ([1.0, float("inf")], None, "sigmas must be positive"), ([1.0, 2.0], [1.0], "one entry per bandwidth"),
    ([1.0, 2.0], [1.0, -0.5], "non-negative"),
])
def test_reference_applies_the_ops_bandwidth_rules(sigmas, weights, fragment):
    x, y = make_pair(5, 6, 2)
    with pytest.raises(ValueError, match=fragment):
        mmd2_reference(x, y, sigmas, weights)


def test_single_float_sigma_and_default_weights(device):
    x, y = make_pair(20, 25, 3, torch.float64, device)
    torch.testing.assert_close(pytl.mmd2(x, y, 1.3).cpu(), mmd2_reference64(x.cpu(), y.cpu(), [1.3]))
    torch.testing.assert_close(
        pytl.mmd2(x, y, torch.tensor([1.0, 2.0], dtype=torch.float64)).cpu(),
        mmd2_reference64(x.cpu(), y.cpu(), [1.0, 2.0]),
    )


def test_known_closed_forms(device):
    # identical samples: the biased statistic is exactly 0
    x, _ = make_pair(30, 1, 4, torch.float64, device)
    assert abs(pytl.mmd2(x, x.clone(), 1.0).item()) < 1e-14
    # two single points at distance^2 = D: MMD^2 = 2 - 2 exp(-D / (2 sigma^2))
    a = torch.zeros(1, 2, dtype=torch.float64, device=device)
    b = torch.tensor([[3.0, 4.0]], dtype=torch.float64, device=device)
    assert pytl.mmd2(a, b, 5.0).item() == pytest.approx(2 - 2 * np.exp(-25 / 50), rel=1e-14)


def test_gradcheck_x_y_sigmas_weights(device):
    for estimator in ["biased", "unbiased"]:
        x, y = make_pair(9, 7, 3, torch.float64, device)
        x.requires_grad_()
        y.requires_grad_()
        sig = torch.tensor([0.7, 1.3, 2.9], dtype=torch.float64, device=device, requires_grad=True)
        w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64, device=device, requires_grad=True)
        fn = lambda a, b, s, ww: pytl.mmd2(a, b, s, ww, estimator=estimator)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, y, sig, w), eps=1e-6, atol=1e-8)


def test_gradients_match_reference_autograd(device):
    # float32 kernels against autograd through the float64 reference formula
    x, y = make_pair(150, 90, 20, torch.float32, device)
    sig = torch.tensor([2.0, 4.0, 8.0], device=device, requires_grad=True)
    x.requires_grad_()
    y.requires_grad_()
    pytl.mmd2(x, y, sig, estimator="unbiased").backward()
    xr = x.detach().cpu().double().requires_grad_()
    yr = y.detach().cpu().double().requires_grad_()
    sr = sig.detach().cpu().double().requires_grad_()
    mmd2_reference64(xr, yr, sr, unbiased=True).backward()
    for got, want in [(x.grad, xr.grad), (y.grad, yr.grad), (sig.grad, sr.grad)]:
        scale = want.abs().max().item()
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-5 * scale)


def test_backward_op_directly_against_reference(device):
    x, y = make_pair(33, 40, 5, torch.float64, device)
    sig = torch.tensor([0.8, 2.5], dtype=torch.float64, device=device)
    g = torch.tensor([0.7, -1.3], dtype=torch.float64, device=device)
    gx, gy, gs = torch.ops.pytl.mmd2_terms_backward(g, x, y, sig, False)
    xr, yr, sr = (t.detach().cpu().clone().requires_grad_() for t in (x, y, sig))
    (terms_reference(xr, yr, sr, False) * g.cpu()).sum().backward()
    torch.testing.assert_close(gx.cpu(), xr.grad)
    torch.testing.assert_close(gy.cpu(), yr.grad)
    torch.testing.assert_close(gs.cpu(), sr.grad)


def test_terms_and_grad_equals_the_separate_ops(device):
    x, y = make_pair(70, 45, 9, torch.float64, device)
    sig = torch.tensor([0.9, 1.8, 3.6], dtype=torch.float64, device=device)  # a ladder: squarings path
    g = torch.tensor([0.2, -1.0, 0.6], dtype=torch.float64, device=device)
    for unbiased in (False, True):
        terms, gx, gy, gs = torch.ops.pytl.mmd2_terms_and_grad(g, x, y, sig, unbiased)
        torch.testing.assert_close(terms, ops.mmd2_terms(x, y, sig, unbiased))
        for got, want in zip((gx, gy, gs), torch.ops.pytl.mmd2_terms_backward(g, x, y, sig, unbiased)):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ladder_fast_path_matches_exps(device, dtype):
    # sigma^2 ratio 2 (gamma ratio 2): the kernels square one exp instead of computing K exps.
    # A 1e-4 relative nudge takes the K-exp path; both must match the float64 reference.
    x, y = make_pair(90, 70, 6, dtype, device)
    ladder = pytl.bandwidth_ladder(torch.tensor(2.5, dtype=dtype, device=device))
    nudged = ladder * torch.tensor([1, 1 + 1e-4, 1, 1 - 1e-4, 1], dtype=dtype, device=device)
    g = torch.tensor([0.3, -0.2, 1.0, 0.5, -0.7], dtype=dtype, device=device)
    for sig in (ladder, nudged):
        want = terms_reference(x.cpu().double(), y.cpu().double(), sig.cpu().double(), False)
        terms, gx, _, gs = torch.ops.pytl.mmd2_terms_and_grad(g, x, y, sig, False)
        torch.testing.assert_close(terms.cpu().double(), want, **TOL[dtype])
        torch.testing.assert_close(ops.mmd2_terms(x, y, sig, False).cpu().double(), want, **TOL[dtype])
        xr = x.detach().cpu().double().clone().requires_grad_()
        sr = sig.detach().cpu().double().clone().requires_grad_()
        (terms_reference(xr, y.cpu().double(), sr, False) * g.cpu().double()).sum().backward()
        torch.testing.assert_close(gx.cpu().double(), xr.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gs.cpu().double(), sr.grad, rtol=1e-4, atol=1e-6)


def test_bandwidth_order_does_not_matter(device):
    x, y = make_pair(50, 60, 4, torch.float32, device)
    sig = torch.tensor([1.0, 4.0, 2.0, 0.5], device=device)  # unsorted, and not a ratio-2 ladder in gamma
    perm = torch.tensor([3, 0, 2, 1], device=device)
    torch.testing.assert_close(ops.mmd2_terms(x, y, sig, False)[perm], ops.mmd2_terms(x, y, sig[perm], False))


def test_opcheck(device):
    x, y = make_pair(12, 9, 4, torch.float64, device)
    x.requires_grad_()
    sig = torch.tensor([0.5, 2.0], dtype=torch.float64, device=device, requires_grad=True)
    w = torch.tensor([0.3, 0.7], dtype=torch.float64, device=device, requires_grad=True)
    for unbiased in (False, True):
        torch.library.opcheck(torch.ops.pytl.mmd2_terms.default, (x, y, sig, unbiased))
        torch.library.opcheck(torch.ops.pytl.mmd2.default, (x, y, sig, w, unbiased))
    g = torch.tensor([1.0, -0.5], dtype=torch.float64, device=device)
    args = (g, x.detach(), y, sig.detach(), False)
    torch.library.opcheck(torch.ops.pytl.mmd2_terms_backward.default, args)
    torch.library.opcheck(torch.ops.pytl.mmd2_terms_and_grad.default, args)


def test_torch_compile_fullgraph(device):
    x, y = make_pair(64, 48, 8, torch.float32, device)
    x.requires_grad_()

    def loss(a, b):
        return pytl.mmd2(a, b) + pytl.mmd2(a, b, [1.0, 2.0], estimator="unbiased")

    compiled = torch.compile(loss, fullgraph=True)
    got = compiled(x, y)
    (gx,) = torch.autograd.grad(got, x)
    want = loss(x, y)
    (wx,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gx, wx)


def test_bitwise_deterministic(device):
    x, y = make_pair(500, 333, 17, torch.float32, device, seed=3)
    x.requires_grad_()
    sig = torch.tensor([1.0, 3.0, 9.0], device=device)

    def run():
        out = pytl.mmd2(x, y, sig)
        (gx,) = torch.autograd.grad(out, x)
        return out, gx

    first = run()
    for _ in range(3):
        again = run()
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    if device == "cpu":
        # the forward's partition does not depend on the thread count; the gradient's column-side
        # buffers are one per thread, so it is reproducible per thread count and equal up to rounding
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = run()
            assert torch.equal(one[1], run()[1])
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(first[0], one[0])
        torch.testing.assert_close(first[1], one[1], rtol=1e-5, atol=1e-7)


def test_far_from_origin(device):
    # all points near 1e3 * (1, ..., 1) with unit spread: float32 must still be accurate
    x64, y64 = make_pair(200, 150, 16, torch.float64, "cpu", shift=0.5)
    x32 = (x64 + 1e3).float()
    y32 = (y64 + 1e3).float()
    sig = [2.0, 5.0]
    xd, yd = x32.to(device).clone().requires_grad_(), y32.to(device).clone().requires_grad_()
    got = pytl.mmd2(xd, yd, sig)
    got.backward()
    xr, yr = x32.double().requires_grad_(), y32.double().requires_grad_()  # the same float32 points, exactly
    want = mmd2_reference64(xr, yr, sig)
    want.backward()
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-6)
    scale = xr.grad.abs().max().item()
    torch.testing.assert_close(xd.grad.cpu().double(), xr.grad, rtol=1e-3, atol=1e-4 * scale)
    torch.testing.assert_close(yd.grad.cpu().double(), yr.grad, rtol=1e-3, atol=1e-4 * scale)


def test_self_distance_is_exactly_zero(device):
    # D_ii = 0 exactly: one point against itself gives exp(0) = 1 per term, so T = 0 exactly
    x = torch.tensor([[1e3 + 0.1, -7.3, 1e-3]], device=device)
    assert pytl.mmd2(x, x.clone(), [1e-3, 1.0]).item() == 0.0


def test_noncontiguous_and_expanded_inputs(device):
    x, y = make_pair(40, 30, 6, torch.float32, device)
    xt = x.t().contiguous().t()  # transposed strides
    ye = y[:1].expand(30, 6)  # stride 0
    sig = [0.7, 2.0]
    assert not xt.is_contiguous() and ye.stride(0) == 0
    torch.testing.assert_close(pytl.mmd2(xt, ye, sig), pytl.mmd2(x.contiguous(), ye.contiguous(), sig), rtol=0, atol=0)
    y_every_other = torch.cat([y, y]).view(30, 2, 6)[:, 0]
    torch.testing.assert_close(pytl.mmd2(x, y_every_other, sig), pytl.mmd2(x, y_every_other.contiguous(), sig))


def test_nan_in_data_gives_nan(device):
    x, y = make_pair(10, 12, 3, torch.float32, device)
    x[3, 1] = float("nan")
    assert torch.isnan(pytl.mmd2(x, y, 1.0))
    assert torch.isnan(pytl.mmd2(x, y))  # the median heuristic ignores NaN pairs, the statistic does not
    xg = x.clone().requires_grad_()
    pytl.mmd2(xg, y, 1.0).backward()
    assert torch.isnan(xg.grad).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(device, dtype):
    x, y = make_pair(100, 80, 12, dtype, device)
    sig = [2.0, 5.0]
    got = pytl.mmd2(x, y, sig)
    want = mmd2_reference64(x.cpu().double(), y.cpu().double(), sig)  # the same rounded inputs
    assert got.dtype == dtype
    torch.testing.assert_close(got.cpu().double(), want, rtol=2e-2, atol=2e-3)
    xg = x.clone().requires_grad_()
    pytl.mmd2(xg, y, sig).backward()
    assert xg.grad.dtype == dtype and torch.isfinite(xg.grad.float()).all()


def test_unbiased_can_be_negative():
    # same distribution: the U-statistic fluctuates around 0 and is negative for some seeds
    values = [pytl.mmd2(*make_pair(20, 20, 2, shift=0.0, seed=s), 1.0, estimator="unbiased").item() for s in range(20)]
    assert min(values) < 0 < max(values)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_matches_cpu_float64_large():
    x, y = make_pair(3000, 2500, 64, torch.float32, "cuda")
    sig = torch.tensor([4.0, 8.0, 16.0], device="cuda")
    xg = x.clone().requires_grad_()
    out = pytl.mmd2(xg, y, sig)
    out.backward()
    xc = x.cpu().double().requires_grad_()
    ref = pytl.mmd2(xc, y.cpu().double(), sig.cpu().double())
    ref.backward()
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(xg.grad.cpu().double(), xc.grad, rtol=1e-3, atol=1e-4 * xc.grad.abs().max().item())


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument. The op checks its arguments in C++ and raises
# ValueError / TypeError itself; the wrapper only rejects what C++ cannot see (not a tensor, a
# sigmas that is no number, an unknown estimator).

GOOD_X = torch.randn(5, 3)
GOOD_Y = torch.randn(4, 3)

BAD_CASES = [
    # (args, kwargs, exception type, message fragment)
    ((torch.randn(5), GOOD_Y), {}, ValueError, "x must be a 2-D"),
    ((GOOD_X, torch.randn(2, 4, 3)), {}, ValueError, "y must be a 2-D"),
    ((GOOD_X, torch.randn(4, 2)), {}, ValueError, "same number of features"),
    ((torch.randn(0, 3), GOOD_Y), {}, ValueError, "x is empty"),
    ((GOOD_X, torch.randn(0, 3)), {}, ValueError, "y is empty"),
    ((GOOD_X, torch.randn(1, 3)), {"estimator": "unbiased"}, ValueError, "at least 2 samples"),
    ((GOOD_X, GOOD_Y, 0.0), {}, ValueError, "sigmas"),
    ((GOOD_X, GOOD_Y, -1.0), {}, ValueError, "sigmas"),
    ((GOOD_X, GOOD_Y, float("nan")), {}, ValueError, "sigmas"),
    ((GOOD_X, GOOD_Y, [1.0, float("inf")]), {}, ValueError, "sigmas"),
    ((GOOD_X, GOOD_Y, []), {}, ValueError, "sigmas"),
    ((GOOD_X, GOOD_Y, "wide"), {}, TypeError, "sigmas"),
    ((GOOD_X, GOOD_Y, [1.0, 2.0], [1.0]), {}, ValueError, "weights must have one entry per bandwidth"),
    ((GOOD_X, GOOD_Y, [1.0, 2.0], [1.0, -0.5]), {}, ValueError, "non-negative"),
    ((GOOD_X, GOOD_Y.double()), {}, TypeError, "same dtype"),
    ((GOOD_X.int(), GOOD_Y.int()), {}, TypeError, "x must be a floating-point"),
    ((GOOD_X, GOOD_Y), {"estimator": "exact"}, ValueError, "estimator"),
    (([[1.0]], GOOD_Y), {}, TypeError, "x must be a torch.Tensor"),
    ((GOOD_X, GOOD_Y, torch.tensor([1, 2])), {}, TypeError, "sigmas must be a floating-point"),
]


@pytest.mark.parametrize("args,kwargs,exc,fragment", BAD_CASES)
def test_bad_input_python(args, kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        pytl.mmd2(*args, **kwargs)


def test_bad_device_mix():
    meta_y = GOOD_Y.to("meta")
    with pytest.raises(ValueError, match="same device"):
        pytl.mmd2(GOOD_X, meta_y, 1.0)
    with pytest.raises(ValueError, match="same device"):
        pytl.mmd2(GOOD_X, meta_y)  # the median heuristic sees the samples first


@pytest.mark.parametrize("args,kwargs,exc,fragment", BAD_CASES)
def test_bad_input_below_autograd(args, kwargs, exc, fragment):
    # under inference_mode the call skips the autograd kernel: the composite mmd2 and the CPU kernel
    # of mmd2_terms check, and raise the same errors
    with torch.inference_mode(), pytest.raises(exc, match=fragment):
        pytl.mmd2(*args, **kwargs)


def test_mmdloss_rejects_unknown_estimator():
    with pytest.raises(ValueError, match="estimator"):
        pytl.MMDLoss(estimator="fast")


# The raw ops, as C++ callers reach them: TypeError for a wrong dtype, ValueError for a wrong shape,
# value or device (c10::TypeError / c10::ValueError in C++).
CPP_BAD_CASES = [
    ((torch.randn(2, 2, 2), GOOD_Y, torch.ones(1), False), ValueError, "x must be a 2-D"),
    ((GOOD_X, torch.randn(4, 2), torch.ones(1), False), ValueError, "same number of features"),
    ((torch.randn(0, 3), GOOD_Y, torch.ones(1), False), ValueError, "x is empty"),
    ((GOOD_X, GOOD_Y.double(), torch.ones(1), False), TypeError, "same dtype"),
    ((GOOD_X.long(), GOOD_Y.long(), torch.ones(1), False), TypeError, "x must be a floating-point"),
    ((GOOD_X, GOOD_Y, torch.ones(2, 2), False), ValueError, "sigmas must be a 1-D"),
    ((GOOD_X, GOOD_Y, torch.ones(17), False), ValueError, "at most 16"),
    ((GOOD_X, GOOD_Y, torch.tensor([1, 2]), False), TypeError, "sigmas must be a floating-point"),
    ((GOOD_X, GOOD_Y, torch.ones(1, device="meta"), False), ValueError, "sigmas must be on the same device"),
    ((GOOD_X, GOOD_Y, torch.tensor([1.0, -1.0]), False), ValueError, "positive and finite"),
    ((GOOD_X, GOOD_Y, torch.tensor([float("nan")]), False), ValueError, "positive and finite"),
    ((GOOD_X, torch.randn(1, 3), torch.ones(1), True), ValueError, "at least 2 samples"),
]


@pytest.mark.parametrize("args,exc,fragment", CPP_BAD_CASES)
def test_bad_input_cpp_op(args, exc, fragment):
    with pytest.raises(exc, match="pytl.mmd2: .*" + fragment):
        torch.ops.pytl.mmd2_terms(*args)


# The Meta kernel (what torch.compile traces) raises the same errors, except for the value checks (they
# need the data) and the device mix (every tensor is moved to meta here).
META_BAD_CASES = [c for c in CPP_BAD_CASES if c[2] != "positive and finite" and not c[2].startswith("sigmas must be on")]


@pytest.mark.parametrize("args,exc,fragment", META_BAD_CASES)
def test_bad_input_cpp_op_meta(args, exc, fragment):
    x, y, sigmas, unbiased = (a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
    with pytest.raises(exc, match=fragment):
        torch.ops.pytl.mmd2_terms(x, y, sigmas, unbiased)


def test_bad_input_cpp_weights():
    with pytest.raises(ValueError, match="weights must have one entry per bandwidth"):
        torch.ops.pytl.mmd2(GOOD_X, GOOD_Y, torch.ones(2), torch.ones(3), False)
    with pytest.raises(ValueError, match="weights must be a 1-D tensor"):
        torch.ops.pytl.mmd2(GOOD_X, GOOD_Y, torch.ones(2), torch.ones(1, 2), False)
    with pytest.raises(TypeError, match="weights must be a floating-point"):
        torch.ops.pytl.mmd2(GOOD_X, GOOD_Y, torch.ones(2), torch.ones(2, dtype=torch.int64), False)
    with pytest.raises(ValueError, match="non-negative and finite"):
        torch.ops.pytl.mmd2(GOOD_X, GOOD_Y, torch.ones(2), torch.tensor([1.0, -1.0]), False)
    # a malformed sigmas is reported as such, not as a weight count mismatch
    with pytest.raises(ValueError, match="sigmas must be a 1-D"):
        torch.ops.pytl.mmd2(GOOD_X, GOOD_Y, torch.ones(2, 2), torch.ones(2), False)
    # ...and so is a misplaced sigmas (the weights are compared with x's device, where they belong)
    with pytest.raises(ValueError, match="sigmas must be on the same device as x"):
        torch.ops.pytl.mmd2(GOOD_X, GOOD_Y, torch.ones(2, device="meta"), torch.ones(2), False)
    with pytest.raises(ValueError, match="weights must be on the same device as x"):
        torch.ops.pytl.mmd2(GOOD_X, GOOD_Y, torch.ones(2), torch.ones(2, device="meta"), False)


def test_bad_input_cpp_backward_op():
    with pytest.raises(ValueError, match="grad_terms must have shape"):
        torch.ops.pytl.mmd2_terms_backward(torch.ones(3), GOOD_X, GOOD_Y, torch.ones(2), False)
    with pytest.raises(TypeError, match="grad_terms must be floating point"):
        torch.ops.pytl.mmd2_terms_and_grad(torch.ones(2, dtype=torch.int32), GOOD_X, GOOD_Y, torch.ones(2), False)


