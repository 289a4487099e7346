"""The scalable MMD estimators and their tests: the rff_sums op against float64 cosines (values, gradient,
gradcheck, opcheck, Meta, errors); the random-feature statistic against its explicit feature matrix and, over
draws, against the exact statistic (its mean, and a spread that shrinks as 1/sqrt(D)); the block statistic
against per-block float64 references; mmd_test(method="block" | "rff") on both hypotheses; refusals."""

from __future__ import annotations

import math

import pytest
import torch

import pytl
from pytl import block_mmd, random_features
from pytl.bandwidths import resolve_bandwidths
from pytl.testing import mmd2_reference64


def _features(n=40, d=3, f=24, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(device, dtype)
    w = torch.randn(f, d, generator=g, dtype=torch.float64).to(device, dtype)
    u = (torch.rand(f, generator=g, dtype=torch.float64) * 2 * math.pi).to(device, dtype)
    return x, w, u


# ----------------------------------------------------------------------------------------- the op

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_rff_sums_against_float64_cosines(device, dtype):
    x, w, u = _features(n=700, f=50, dtype=dtype, device=device)  # several tiles on neither device: one is enough
    got = torch.ops.pytl.rff_sums(x, w, u, True)
    theta = x.double() @ w.double().T + u.double()
    want = torch.stack([theta.cos().sum(0), theta.cos().pow(2).sum(0)])
    assert got.dtype == torch.float64 and got.shape == (2, 50)
    tol = {torch.float64: 1e-10, torch.float32: 2e-3, torch.float16: 0.5}[dtype]
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=0, atol=tol)
    # without the squares: the first row alone, the same numbers
    torch.testing.assert_close(torch.ops.pytl.rff_sums(x, w, u), got[:1], rtol=0, atol=0)


def test_rff_sums_streams_many_tiles_and_its_gradient(device):
    # 2^20 / 2048 = 512 rows per CPU tile: 1500 rows are three tiles, the last one partial
    x, w, u = _features(n=1500, d=4, f=2048, device=device)
    x.requires_grad_(True)
    for rows in (1, 2):
        g = torch.randn(rows, 2048, dtype=torch.float64, device=device)
        (torch.ops.pytl.rff_sums(x, w, u, rows == 2) * g).sum().backward()
        got = x.grad.clone()
        x.grad = None
        theta = x @ w.T + u
        (torch.stack([theta.cos().sum(0), theta.cos().pow(2).sum(0)])[:rows] * g).sum().backward()
        torch.testing.assert_close(got, x.grad, rtol=1e-9, atol=1e-9)
        x.grad = None


def test_rff_sums_gradcheck_opcheck_and_meta(device):
    x, w, u = _features(n=9, d=3, f=5, device=device)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: torch.ops.pytl.rff_sums(a, w, u, True), (x,))
    torch.library.opcheck(torch.ops.pytl.rff_sums.default, (x.detach(), w, u, True),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    meta = torch.ops.pytl.rff_sums(torch.empty(7, 3, device="meta"), torch.empty(5, 3, device="meta"),
                                   torch.empty(5, device="meta"), True)
    assert meta.shape == (2, 5) and meta.dtype == torch.float64


@pytest.mark.parametrize("args, exc, words", [
    (lambda x, w, u: (x[0], w, u), ValueError, "x must be a 2-D tensor"),
    (lambda x, w, u: (x, w[:, :2], u), ValueError, "frequencies must have shape"),
    (lambda x, w, u: (x, w, u[:-1]), ValueError, "phases must have shape"),
    (lambda x, w, u: (x.long(), w, u), TypeError, "x must be a floating-point tensor"),
    (lambda x, w, u: (x, w.int(), u), TypeError, "frequencies and phases must be floating-point"),
    (lambda x, w, u: (x, w.to("meta"), u), ValueError, "on x's device"),
])
def test_rff_sums_refuses_bad_arguments_by_name(args, exc, words):
    x, w, u = _features()
    with pytest.raises(exc, match=words):
        torch.ops.pytl.rff_sums(*args(x, w, u))
    with pytest.raises(ValueError, match="no gradient"):
        torch.ops.pytl.rff_sums(x, w.requires_grad_(True), u)


# ------------------------------------------------------------------------------- the RFF statistic

def _explicit_phi(z, sigmas, d_features, seed):
    """The feature matrix, written out (what the op never builds): (n, K, D)."""
    w, u = random_features.draw_features(z.shape[1], sigmas, d_features, seed, z)
    return math.sqrt(2.0 / d_features) * torch.cos(z @ w.T + u).view(z.shape[0], len(sigmas), d_features)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_rff_statistic_is_the_explicit_feature_statistic(estimator):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 4, generator=g, dtype=torch.float64), torch.randn(25, 4, generator=g, dtype=torch.float64)
    sigmas = torch.tensor([0.7, 1.5], dtype=torch.float64)
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    got = pytl.mmd2(x, y, sigmas, weights, estimator=estimator, method="rff", num_features=64, seed=5)
    px, py = _explicit_phi(x, sigmas, 64, 5), _explicit_phi(y, sigmas, 64, 5)
    gram_xx, gram_yy = torch.einsum("ikd,jkd->kij", px, px), torch.einsum("ikd,jkd->kij", py, py)
    gram_xy = torch.einsum("ikd,jkd->kij", px, py)
    if estimator == "biased":
        terms = gram_xx.mean((1, 2)) + gram_yy.mean((1, 2)) - 2 * gram_xy.mean((1, 2))
    else:
        off = lambda gm: (gm.sum((1, 2)) - gm.diagonal(dim1=1, dim2=2).sum(1)) / (gm.shape[1] * (gm.shape[1] - 1))  # noqa: E731
        terms = off(gram_xx) + off(gram_yy) - 2 * gram_xy.mean((1, 2))
    torch.testing.assert_close(got, (weights * terms).sum(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_rff_is_unbiased_for_the_exact_statistic_and_its_spread_shrinks_as_one_over_sqrt_d(estimator):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    y = torch.randn(300, 5, generator=g, dtype=torch.float64) * 1.2 + 0.3
    exact = float(pytl.mmd2(x, y, estimator=estimator))
    spread = {}
    for d_features, draws in ((64, 400), (1024, 100)):
        est = torch.tensor([float(pytl.mmd2(x, y, estimator=estimator, method="rff", num_features=d_features, seed=s))
                            for s in range(draws)])
        spread[d_features] = float(est.std())
        # the mean over draws is the exact statistic, within 4 standard errors
        assert abs(float(est.mean()) - exact) < 4 * spread[d_features] / math.sqrt(draws), (d_features, exact)
    # 16x the features: a quarter of the spread (theory: 1/sqrt(D)); measured 3.6-4.3
    assert 3.0 < spread[64] / spread[1024] < 5.3, spread


def test_rff_and_block_gradients_flow_and_mmd_loss_takes_the_method():
    torch.manual_seed(0)
    x = torch.randn(200, 3, requires_grad=True)
    y = torch.randn(200, 3) + 1.0
    for method in ("rff", "block"):
        loss = pytl.MMDLoss(method=method)(x, y)
        (gx,) = torch.autograd.grad(loss, x)
        # descending the gradient moves x toward y: the loss drops
        assert torch.isfinite(gx).all() and float(pytl.mmd2(x - 5.0 * gx, y, method=method, seed=0)) < \
            float(pytl.mmd2(x, y, method=method, seed=0))
    a, b = pytl.MMDLoss(method="rff")(x, y), pytl.MMDLoss(method="rff")(x, y)
    assert float(a) != float(b)  # seed=None: fresh features per call


# ------------------------------------------------------------------------------------------ block

def test_block_statistic_is_the_mean_of_per_block_float64_references():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(103, 3, generator=g, dtype=torch.float64), torch.randn(90, 3, generator=g, dtype=torch.float64)
    got = pytl.mmd2(x, y, estimator="unbiased", method="block", block_size=20, seed=7)
    sig, w = resolve_bandwidths(x, y, None, None)
    blocks, bx, by = block_mmd.block_layout(103, 90, 20)
    assert (blocks, bx, by) == (4, 25, 22)
    gen = torch.Generator().manual_seed(7)
    px = torch.randperm(103, generator=gen)[: blocks * bx].view(blocks, bx)
    py = torch.randperm(90, generator=gen)[: blocks * by].view(blocks, by)
    want = sum(float(mmd2_reference64(x[px[j]], y[py[j]], sig, w, unbiased=True)) for j in range(blocks)) / blocks
    assert float(got) == pytest.approx(want, rel=1e-10)
    assert block_mmd.block_layout(10_000, 10_000, None) == (100, 100, 100)  # sqrt(n) rows per block


# -------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("method, estimator", [("block", "unbiased"), ("rff", "biased")])
def test_scalable_tests_keep_h0_and_reject_a_shift(method, estimator):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(3000, 4, generator=g), torch.randn(3000, 4, generator=g)
    same = pytl.mmd_test(x, y, method=method, estimator=estimator, num_permutations=200, seed=1)
    shifted = pytl.mmd_test(x, y + 0.25, method=method, estimator=estimator, num_permutations=200, seed=1)
    assert same.p_value > 0.05 and shifted.p_value < 0.01 and same.method == method
    assert "null" in shifted._repr_html_()
    if method == "block":  # the p-value is the normal tail of the mean over its standard error
        z = shifted.statistic / (float(shifted.null_samples.std()) / math.sqrt(shifted.null_samples.numel()))
        assert shifted.p_value == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
        assert shifted.num_permutations == 0
    else:
        assert shifted.num_permutations == 200 and shifted.p_value == pytest.approx(1 / 201)


def test_the_rff_chunk_null_is_calibrated():
    """50 null draws at n = m = 640 (64 chunks of 10 rows): the p-values are spread like a uniform's (the
    benchmark measures the rejection rate over 200+ draws and several n)."""
    g = torch.Generator().manual_seed(4)
    p = [pytl.mmd_test(torch.randn(640, 3, generator=g), torch.randn(640, 3, generator=g), method="rff",
                       num_permutations=99, num_features=128, seed=s).p_value for s in range(50)]
    p = torch.tensor(p)
    assert 0.3 < float(p.mean()) < 0.7 and float((p <= 0.1).double().mean()) < 0.25


def test_auto_computes_every_pair_while_it_is_cheap():
    from pytl.diagnostics.permutation_test import AUTO_EXACT_ROWS
    from pytl.ops import AUTO_EXACT_PAIRS, resolve_method

    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(300, 3, generator=g), torch.randn(200, 3, generator=g)
    assert float(pytl.mmd2(x, y, method="auto")) == float(pytl.mmd2(x, y))
    assert resolve_method("auto", 32768, 32768) == "exact" and 32768**2 == AUTO_EXACT_PAIRS
    assert resolve_method("auto", 32769, 32768) == "rff" and resolve_method("block", 5, 5) == "block"
    assert pytl.mmd_test(x, y, method="auto", num_permutations=20).method == "exact"
    half = AUTO_EXACT_ROWS // 2 + 1
    big_x, big_y = torch.randn(half, 2, generator=g), torch.randn(half, 2, generator=g)
    assert pytl.mmd_test(big_x, big_y, method="auto", num_permutations=20).method == "rff"
    assert pytl.mmd_test(big_x, big_y, method="auto", estimator="unbiased").method == "block"


@pytest.mark.parametrize("call, exc, words", [
    (lambda x, y: pytl.mmd2(x, y, method="fast"), ValueError, "method"),
    (lambda x, y: pytl.mmd2(x, y, num_features=10), ValueError, "num_features=10 is an option of method='rff'"),
    (lambda x, y: pytl.mmd2(x, y, method="rff", block_size=10), ValueError, "block_size=10 is an option"),
    (lambda x, y: pytl.mmd2(x, y, method="rff", x_weights=torch.ones(50)), ValueError, "x_weights"),
    (lambda x, y: pytl.mmd2(x, y, method="rff", num_features=0), ValueError, "num_features"),
    (lambda x, y: pytl.mmd2(x, y, torch.ones(1, requires_grad=True), method="rff"), ValueError, "requires grad"),
    (lambda x, y: pytl.mmd2(x, y, method="block", block_size=40), ValueError, "at least 2 blocks"),
    (lambda x, y: pytl.mmd_test(x, y, method="block"), ValueError, "estimator='unbiased'"),
    (lambda x, y: pytl.mmd_test(x, y, method="rff", estimator="unbiased"), ValueError, "estimator='biased'"),
    (lambda x, y: pytl.mmd_test(x, y, method="rff", chunk_size=4), ValueError, "chunk_size"),
    (lambda x, y: pytl.MMDLoss(method="rff", distributed=True), ValueError, "distributed"),
])
def test_refusals_name_the_argument(call, exc, words):
    x, y = torch.randn(50, 3), torch.randn(50, 3)
    with pytest.raises(exc, match=words):
        call(x, y)


# -------------------------------------------------------------------------------------- streaming

def _memmaps(tmp_path, x, y):
    import numpy as np

    out = []
    for name, a in (("x", x), ("y", y)):
        m = np.lib.format.open_memmap(str(tmp_path / f"{name}.npy"), mode="w+", dtype=np.float32, shape=tuple(a.shape))
        m[:] = a.numpy()
        m.flush()
        out.append(np.load(str(tmp_path / f"{name}.npy"), mmap_mode="r"))
    return out


def test_a_memmap_and_a_dataloader_stream_to_the_in_memory_statistic(tmp_path, monkeypatch):
    from torch.utils.data import DataLoader, TensorDataset

    from pytl.diagnostics import streaming

    monkeypatch.setattr(streaming, "BLOCK_ROWS", 500)  # several blocks, boundaries unlike the loader's batches
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(2300, 5, generator=g), torch.randn(1900, 5, generator=g) + 0.1
    mx, my = _memmaps(tmp_path, x, y)
    sig = [0.8, 1.6, 3.2]
    streamed = pytl.mmd_test(mx, my, sig, num_permutations=99, method="rff", num_features=64, seed=2)
    loader = DataLoader(TensorDataset(y), batch_size=37)  # (y,) batches, 37 rows: chunk offsets carried over
    mixed = pytl.mmd_test(mx, loader, sig, num_permutations=99, method="rff", num_features=64, seed=2)
    # all x chunks against all y chunks is the whole-sample statistic, computed here by a different path
    whole = float(pytl.mmd2(x, y, sig, method="rff", num_features=64, seed=2))
    assert streamed.statistic == pytest.approx(whole, rel=1e-5) and mixed.statistic == pytest.approx(whole, rel=1e-5)
    assert streamed.p_value == mixed.p_value == pytest.approx(1 / 100)


def test_streaming_deals_rows_at_random_so_a_sorted_file_keeps_h0(tmp_path):
    """Both files sorted by their first feature, one distribution: rows dealt to chunks at random make every chunk
    a random subsample of its file, so H0 stands (dealt in turn, this draw's p-value was 0.045: chunks more alike
    than random subsamples, a null too narrow)."""
    g = torch.Generator().manual_seed(8)
    p = []
    for draw in range(20):
        x, y = torch.randn(2000, 3, generator=g), torch.randn(2000, 3, generator=g)
        x, y = x[x[:, 0].argsort()], y[y[:, 0].argsort()]
        mx, my = _memmaps(tmp_path, x, y)
        p.append(pytl.mmd_test(mx, my, num_permutations=99, method="rff", num_features=64, seed=draw).p_value)
    p = torch.tensor(p)
    assert 0.3 < float(p.mean()) < 0.7 and int((p <= 0.05).sum()) <= 3, p
    shifted = _memmaps(tmp_path, x, y + 0.2)
    assert pytl.mmd_test(*shifted, num_permutations=99, method="rff", seed=0).p_value < 0.02


def test_streamed_test_shows_progress_over_the_blocks_it_reads(tmp_path, monkeypatch, capsys):
    """progress=True: a bar (pytl's line off a terminal) over every block of both sides, 5 + 4 here; none for a
    stream that does not say how many batches it holds, nor by default."""
    from pytl.diagnostics import streaming

    monkeypatch.setattr(streaming, "BLOCK_ROWS", 500)
    mx, my = _memmaps(tmp_path, torch.randn(2300, 3), torch.randn(1900, 3))
    quiet = pytl.mmd_test(mx, my, method="rff", num_features=16, num_permutations=19)
    assert capsys.readouterr().err == ""
    shown = pytl.mmd_test(mx, my, method="rff", num_features=16, num_permutations=19, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines and lines[-1].startswith("mmd_test (rff, one pass) 9/9") and len(lines) <= 10
    assert shown.statistic == quiet.statistic  # the bar changes nothing
    pytl.mmd_test(mx, (b for b in [my[:1000], my[1000:]]), method="rff", num_features=16, num_permutations=19,
                  progress=True)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress must be True or False"):
        pytl.mmd_test(mx, my, method="rff", progress="yes")


def test_streaming_refusals(tmp_path):
    import numpy as np

    mx, my = _memmaps(tmp_path, torch.randn(100, 3), torch.randn(100, 3))
    with pytest.raises(ValueError, match="only method='rff'"):
        pytl.mmd_test(mx, my, method="block", estimator="unbiased")
    with pytest.raises(ValueError, match="2-D"):
        pytl.mmd_test(mx, iter([np.zeros((4, 3, 2))]), method="rff")
    with pytest.raises(ValueError, match="needs every chunk to get rows"):
        pytl.mmd_test(mx, iter([np.zeros((10, 3))]), method="rff")
    with pytest.raises(ValueError, match="same number of features"):
        pytl.mmd_test(mx, iter([np.zeros((100, 4))]), method="rff")
