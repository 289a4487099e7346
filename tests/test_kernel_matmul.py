"""pytl.rbf_kernel_matmul: K(z, z) @ S without the N x N matrix. Values against a float64 materialised
reference, registration (opcheck, Meta), determinism, bad input; every body runs on each device."""

import itertools
import random

import pytest
import torch

import pytl
from pytl.ops import rbf_kernel_matmul
from pytl.testing import kernel_matmul_reference


def _shape_grid():
    rng = random.Random(4321)
    sizes, dims, cols = [1, 2, 5, 47, 48, 49, 97, 257, 300], [1, 2, 3, 16, 17, 33, 64], [1, 2, 15, 16, 17, 33, 40]
    cases = []
    for dtype in (torch.float32, torch.float64):
        for _ in range(9):
            cases.append((rng.choice(sizes), rng.choice(dims), rng.choice(cols), rng.randint(1, 5), dtype))
    cases += [(1, 1, 1, 1, torch.float64), (300, 64, 40, 5, torch.float32), (256, 33, 32, 3, torch.float64)]
    return cases


TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-11, atol=1e-12)}


def _data(N, d, P, K, dtype, device, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, d, generator=g, dtype=torch.float64) + offset
    s = torch.randn(N, P, generator=g, dtype=torch.float64)
    sig = torch.linspace(0.4, 2.5, K, dtype=torch.float64) * max(1.0, d**0.5)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.1
    return z, s, sig, w, [t.to(device=device, dtype=dtype) for t in (z, s, sig, w)]


@pytest.mark.parametrize("N,d,P,K,dtype", _shape_grid())
def test_matches_float64_reference(device, N, d, P, K, dtype):
    z, s, sig, w, (zd, sd, sigd, wd) = _data(N, d, P, K, dtype, device, seed=N * 100 + d)
    got = torch.ops.pytl.rbf_kernel_matmul(zd, sd, sigd, wd)
    want = kernel_matmul_reference(zd.cpu().double(), sd.cpu().double(), sigd.cpu().double(), wd.cpu().double())
    assert got.shape == (N, P) and got.dtype == dtype and got.device.type == torch.device(device).type
    scale = want.abs().max().item() + 1.0
    torch.testing.assert_close(got.cpu().double() / scale, want / scale, **TOL[dtype])


def test_ladder_and_unsorted_bandwidths(device):
    # a geometric ladder (gamma ratio 2: the squaring fast path on the CPU) and an unsorted, non-ladder set
    z, s, _, _, _ = _data(130, 7, 9, 1, torch.float64, device)
    for sig, w in [([0.5 * 2 ** (j / 2) for j in range(5)], [0.2] * 5), ([2.0, 0.3, 1.1], [0.5, 0.0, 2.0])]:
        got = rbf_kernel_matmul(z.to(device), s.to(device), sig, w)
        torch.testing.assert_close(got.cpu(), kernel_matmul_reference(z, s, sig, w), rtol=1e-11, atol=1e-12)


def test_diagonal_included_exactly(device):
    # a single point: K(z, z) = sum_k w_k exactly, even far from the origin with a tiny bandwidth
    z = torch.tensor([[1e3 + 0.1, -7.3, 1e-3]], device=device)
    s = torch.tensor([[2.0, -1.0]], device=device)
    out = torch.ops.pytl.rbf_kernel_matmul(z, s, torch.tensor([1e-3, 1.0], device=device),
                                           torch.tensor([0.25, 0.5], device=device))
    assert out.cpu().tolist() == [[1.5, -0.75]]


def test_far_from_origin_float32(device):
    z, s, sig, w, _ = _data(200, 16, 8, 2, torch.float64, "cpu", offset=1e3)
    z32 = z.float()
    got = rbf_kernel_matmul(z32.to(device), s.float().to(device), sig.float().to(device), w.float().to(device))
    want = kernel_matmul_reference(z32.double(), s.float().double(), sig.float().double(), w.float().double())
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(device, dtype):
    z, s, sig, w, (zd, sd, _, _) = _data(70, 5, 6, 2, dtype, device)
    got = torch.ops.pytl.rbf_kernel_matmul(zd, sd, sig.float().to(device), w.float().to(device))
    assert got.dtype == dtype
    want = kernel_matmul_reference(zd.cpu().double(), sd.cpu().double(), sig, w)
    torch.testing.assert_close(got.cpu().double(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


def test_noncontiguous_inputs(device):
    z, s, sig, w, (zd, sd, sigd, wd) = _data(60, 6, 10, 2, torch.float64, device)
    zt = zd.t().contiguous().t()
    st = torch.cat([sd, sd], 1)[:, ::2]
    assert not zt.is_contiguous() and not st.is_contiguous()
    torch.testing.assert_close(torch.ops.pytl.rbf_kernel_matmul(zt, st, sigd, wd),
                               torch.ops.pytl.rbf_kernel_matmul(zd, st.contiguous(), sigd, wd), rtol=0, atol=0)


def test_bitwise_deterministic(device):
    _, _, _, _, (zd, sd, sigd, wd) = _data(500, 17, 37, 3, torch.float32, device, seed=3)
    first = torch.ops.pytl.rbf_kernel_matmul(zd, sd, sigd, wd)
    for _ in range(2):
        assert torch.equal(first, torch.ops.pytl.rbf_kernel_matmul(zd, sd, sigd, wd))
    if device == "cpu":  # each row tile owns its outputs: the same bits for any thread count
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = torch.ops.pytl.rbf_kernel_matmul(zd, sd, sigd, wd)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(first, one)


def test_columns_are_independent(device):
    # column j of the output depends only on column j of s: chunking the columns changes no bits
    _, _, _, _, (zd, sd, sigd, wd) = _data(150, 9, 40, 2, torch.float32, device)
    full = torch.ops.pytl.rbf_kernel_matmul(zd, sd, sigd, wd)
    bounds = [(0, 1), (1, 17), (17, 40)]
    parts = [torch.ops.pytl.rbf_kernel_matmul(zd, sd[:, a:b].contiguous(), sigd, wd) for a, b in bounds]
    assert torch.equal(full, torch.cat(parts, 1))


def test_empty_s_columns(device):
    z = torch.randn(5, 3, device=device)
    out = torch.ops.pytl.rbf_kernel_matmul(z, torch.zeros(5, 0, device=device), torch.ones(1, device=device),
                                           torch.ones(1, device=device))
    assert out.shape == (5, 0)


def test_opcheck(device):
    _, _, _, _, (zd, sd, sigd, wd) = _data(20, 4, 3, 2, torch.float64, device)
    torch.library.opcheck(torch.ops.pytl.rbf_kernel_matmul.default, (zd, sd, sigd, wd),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_meta_shape():
    z, s = torch.empty(11, 3, device="meta"), torch.empty(11, 7, device="meta")
    out = torch.ops.pytl.rbf_kernel_matmul(z, s, torch.ones(2, device="meta"), torch.ones(2, device="meta"))
    assert out.shape == (11, 7) and out.device.type == "meta"


def test_torch_compile_fullgraph():
    _, _, _, _, (zd, sd, sigd, wd) = _data(40, 3, 5, 2, torch.float32, "cpu")
    fn = torch.compile(lambda a, b: torch.ops.pytl.rbf_kernel_matmul(a, b, sigd, wd) * 2.0, fullgraph=True)
    torch.testing.assert_close(fn(zd, sd), torch.ops.pytl.rbf_kernel_matmul(zd, sd, sigd, wd) * 2.0)


def test_no_gradient():
    z = torch.randn(6, 2, requires_grad=True)
    out = torch.ops.pytl.rbf_kernel_matmul(z, torch.ones(6, 1), torch.ones(1), torch.ones(1))
    with pytest.raises(RuntimeError):
        out.sum().backward()


Z, S1 = torch.randn(5, 3), torch.randn(5, 2)
ONE = torch.ones(1)

# TypeError for a wrong dtype, ValueError for a wrong shape, value or device, raised by the op itself.
CPP_BAD_CASES = [
    ((torch.randn(5), S1, ONE, ONE), ValueError, "z must be a 2-D"),
    ((Z, torch.randn(5), ONE, ONE), ValueError, "s must be a 2-D"),
    ((Z, torch.randn(4, 2), ONE, ONE), ValueError, "one row per row of z"),
    ((torch.randn(5, 0), S1, ONE, ONE), ValueError, "at least one feature"),
    ((Z.long(), S1.long(), ONE, ONE), TypeError, "z must be a floating-point"),
    ((Z, S1.double(), ONE, ONE), TypeError, "dtype of z"),
    ((Z, S1, torch.ones(2, 2), ONE), ValueError, "sigmas must be a 1-D"),
    ((Z, S1, torch.ones(17), torch.ones(17)), ValueError, "at most 16"),
    ((Z, S1, torch.tensor([1.0, -1.0]), torch.ones(2)), ValueError, "positive and finite"),
    ((Z, S1, torch.tensor([float("inf")]), ONE), ValueError, "positive and finite"),
    ((Z, S1, torch.ones(2), torch.ones(3)), ValueError, "one entry per bandwidth"),
    ((Z, S1, ONE, torch.tensor([-0.5])), ValueError, "non-negative and finite"),
    ((Z, S1, ONE, torch.tensor([float("nan")])), ValueError, "non-negative and finite"),
    ((Z, S1, torch.tensor([1]), ONE), TypeError, "sigmas must be a floating-point"),
    ((Z, S1, ONE, torch.tensor([1])), TypeError, "weights must be a floating-point"),
    ((Z, S1.to("meta"), ONE, ONE), ValueError, "same device"),
    ((Z, S1, ONE.to("meta"), ONE), ValueError, "sigmas must be on the same device as z"),
]


@pytest.mark.parametrize("args,exc,fragment", CPP_BAD_CASES)
def test_bad_input_cpp_op(args, exc, fragment):
    with pytest.raises(exc, match="rbf_kernel_matmul.*" + fragment):
        torch.ops.pytl.rbf_kernel_matmul(*args)


PY_BAD_CASES = [
    (([[1.0]], S1, 1.0), TypeError, "z must be a torch.Tensor"),
    ((Z, S1.numpy(), 1.0), TypeError, "s must be a torch.Tensor"),
    ((Z, S1, "wide"), TypeError, "sigmas must be a number"),
    ((Z.int(), S1, 1.0), TypeError, "z must be a floating-point"),
    ((Z, S1.double(), 1.0), TypeError, "dtype of z"),
    ((Z, torch.randn(4, 2), 1.0), ValueError, "one row per row"),
    ((Z, S1, None), ValueError, "sigmas is required"),
    ((Z, S1, -1.0), ValueError, "sigmas"),
    ((Z, S1, [1.0] * 17), ValueError, "at most 16"),
    ((Z, S1, [1.0, 2.0], [1.0]), ValueError, "weights must have one entry"),
    ((Z, S1, [1.0], [-1.0]), ValueError, "non-negative"),
]


@pytest.mark.parametrize("args,exc,fragment", PY_BAD_CASES)
def test_bad_input_python(args, exc, fragment):
    with pytest.raises(exc, match=fragment):
        rbf_kernel_matmul(*args)


def test_wrapper_is_importable_from_its_old_homes():
    assert pytl.diagnostics.rbf_kernel_matmul is rbf_kernel_matmul and pytl.rbf_kernel_matmul is rbf_kernel_matmul


def test_python_wrapper_default_weights(device):
    z, s, _, _, _ = _data(30, 3, 4, 1, torch.float64, device)
    got = rbf_kernel_matmul(z.to(device), s.to(device), [0.7, 1.9])
    torch.testing.assert_close(got.cpu(), kernel_matmul_reference(z, s, [0.7, 1.9], [0.5, 0.5]))


CUDA_CASES = list(itertools.product([1, 63, 64, 65, 1000], [1, 64, 65, 300], [torch.float32, torch.float64]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("N,P,dtype", CUDA_CASES)
def test_cuda_matches_cpu(N, P, dtype):
    z, s, sig, w, (zd, sd, sigd, wd) = _data(N, 37, P, 3, dtype, "cuda", seed=N + P)
    got = torch.ops.pytl.rbf_kernel_matmul(zd, sd, sigd, wd).cpu()
    cpu = torch.ops.pytl.rbf_kernel_matmul(zd.cpu(), sd.cpu(), sigd.cpu(), wd.cpu())
    scale = cpu.abs().max().item() + 1.0
    torch.testing.assert_close(got / scale, cpu / scale, **TOL[dtype])
