"""pytl.diagnostics: the MMD permutation test, the proxy A-distance and the divergence report."""

import math

import numpy as np
import pytest
import torch

import pytl
from pytl import diagnostics as dg
from pytl.diagnostics.divergence import verdict
from pytl.diagnostics.permutation_test import split_chunks
from pytl.testing import make_pair, mmd2_reference64, pair_sq_dists


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_statistic_equals_mmd2(device, estimator, dtype):
    x, y = make_pair(37, 23, 5, dtype, device)
    res = dg.mmd_test(x, y, None, 20, estimator, seed=1)
    want = pytl.mmd2(x.double(), y.double(), res.sigmas, res.weights, estimator=estimator).item()
    tol = 1e-13 if dtype == torch.float64 else 1e-6
    assert res.statistic == pytest.approx(want, abs=tol)
    # the default bandwidths are pytl.mmd2's: the median-heuristic ladder, weights 1/K
    assert res.statistic == pytest.approx(pytl.mmd2(x, y, estimator=estimator).item(), abs=max(tol, 1e-6))
    assert res.null_samples.shape == (20,) and res.null_samples.dtype == torch.float64


def test_explicit_sigmas_and_weights(device):
    x, y = make_pair(15, 19, 3, torch.float64, device)
    res = dg.mmd_test(x, y, [0.5, 2.0], 10, "unbiased", weights=[0.3, 0.9])
    want = mmd2_reference64(x.cpu(), y.cpu(), [0.5, 2.0], [0.3, 0.9], unbiased=True).item()
    assert res.statistic == pytest.approx(want, abs=1e-13)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_null_samples_equal_brute_force(device, estimator):
    """Materialise K once, index it with every permutation's split: the same null distribution."""
    x, y = make_pair(9, 14, 3, torch.float64, device)
    sig, w = [0.6, 1.7, 3.0], [0.2, 0.5, 0.3]
    P, seed, chunk = 23, 7, 10  # several chunks, the last one partial
    res = dg.mmd_test(x, y, sig, P, estimator, seed, weights=w, chunk_size=chunk)
    z = torch.cat([x, y]).cpu()
    d2 = pair_sq_dists(z, z)
    K = sum(wk * torch.exp(-d2 / (2 * s * s)) for s, wk in zip(sig, w))
    n, m = x.shape[0], y.shape[0]
    masks = torch.cat(list(split_chunks(n, m, P, seed, chunk)))
    assert masks.shape == (P + 1, n + m) and bool((masks.sum(1) == n).all())
    assert bool(masks[0, :n].all())  # column 0: the observed split
    brute = []
    for mask in masks:
        ix, iy = mask.nonzero()[:, 0], (~mask).nonzero()[:, 0]
        kxx, kyy, kxy = K[ix][:, ix], K[iy][:, iy], K[ix][:, iy]
        if estimator == "unbiased":
            t = (kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1))
        else:
            t = kxx.sum() / n**2 + kyy.sum() / m**2
        brute.append(t - 2 * kxy.sum() / (n * m))
    brute = torch.stack(brute)
    torch.testing.assert_close(res.null_samples, brute[1:], rtol=1e-10, atol=1e-13)
    assert res.statistic == pytest.approx(brute[0].item(), abs=1e-13)
    count = int((brute[1:] >= brute[0]).sum())
    assert res.p_value == (count + 1) / (P + 1)


def test_p_values_uniform_under_the_null():
    """200 same-distribution pairs, 99 permutations each: rejection rate at 0.05 near 0.05, mean p near 0.5."""
    g = torch.Generator().manual_seed(123)
    p_values = []
    for rep in range(200):
        x = torch.randn(12, 2, generator=g, dtype=torch.float64)
        y = torch.randn(15, 2, generator=g, dtype=torch.float64)
        p_values.append(dg.mmd_test(x, y, None, 99, "biased", seed=rep).p_value)
    p = torch.tensor(p_values)
    assert 0.01 <= float((p <= 0.05).double().mean()) <= 0.10
    assert abs(float(p.mean()) - 0.5) < 0.08
    # a coarse Kolmogorov-Smirnov distance to the uniform law (critical value 0.096 at 5% for 200 draws)
    ps = p.sort().values
    grid = torch.arange(1, 201, dtype=torch.float64) / 200
    assert float((ps - grid).abs().max()) < 0.15


def test_small_p_under_a_clear_shift(device):
    x, y = make_pair(60, 50, 4, torch.float32, device, shift=1.0)
    for estimator in ("biased", "unbiased"):
        res = dg.mmd_test(x, y, None, 199, estimator)
        assert res.p_value == pytest.approx(1 / 200) and res.rejects(0.05)
        assert float(res.null_samples.max()) < res.statistic


def test_reproducible_with_a_seed(device):
    x, y = make_pair(30, 30, 3, torch.float64, device, shift=0.1)
    a = dg.mmd_test(x, y, num_permutations=77, seed=5)
    b = dg.mmd_test(x, y, num_permutations=77, seed=5)
    c = dg.mmd_test(x, y, num_permutations=77, seed=6)
    assert torch.equal(a.null_samples, b.null_samples) and a.p_value == b.p_value
    assert not torch.equal(a.null_samples, c.null_samples)


def test_chunk_size_does_not_change_the_observed_statistic(device):
    x, y = make_pair(20, 25, 3, torch.float64, device)
    a = dg.mmd_test(x, y, 1.0, 30, chunk_size=4)
    b = dg.mmd_test(x, y, 1.0, 30, chunk_size=256)
    assert a.statistic == pytest.approx(b.statistic, abs=1e-14)


BAD_TEST_CASES = [
    (dict(num_permutations=0), ValueError, "num_permutations"),
    (dict(num_permutations=2.5), TypeError, "num_permutations"),
    (dict(num_permutations=True), TypeError, "num_permutations"),
    (dict(estimator="exact"), ValueError, "estimator"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(sigmas=-1.0), ValueError, "sigmas"),
    (dict(sigmas=torch.tensor([1, 2])), TypeError, "sigmas must be a floating-point"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
]


@pytest.mark.parametrize("kwargs,exc,fragment", BAD_TEST_CASES)
def test_mmd_test_bad_arguments(kwargs, exc, fragment):
    x, y = make_pair(5, 6, 2)
    with pytest.raises(exc, match=fragment):
        dg.mmd_test(x, y, **kwargs)


def test_mmd_test_bad_samples():
    x, y = make_pair(5, 6, 2)
    with pytest.raises(ValueError, match="same number of features"):
        dg.mmd_test(x, torch.randn(6, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be a numpy array, a torch.Tensor or a nested list"):
        dg.mmd_test("x.npy", y)
    with pytest.raises(ValueError, match="x must be a 2-D tensor"):
        dg.mmd_test(x[None], y)
    with pytest.raises(ValueError, match="y contains NaN"):
        dg.mmd_test(x, y.index_fill(0, torch.tensor([2]), math.nan))
    with pytest.raises(TypeError, match="same dtype"):
        dg.mmd_test(x, y.float())
    with pytest.raises(ValueError, match="at least 2 samples"):
        dg.mmd_test(x[:1], y, estimator="unbiased")
    # bandwidths and weights are checked by the op
    with pytest.raises(ValueError, match="at most 16 bandwidths"):
        dg.mmd_test(x, y, [1.0] * 17)
    with pytest.raises(ValueError, match="weights must have one entry per bandwidth"):
        dg.mmd_test(x, y, [1.0, 2.0], weights=[1.0])


def test_mmd_test_numpy_and_list_inputs():
    """numpy arrays and nested lists, like the trainer: the same test as on the tensors."""
    x, y = make_pair(25, 31, 3, shift=0.4)
    for estimator in ("biased", "unbiased"):
        want = dg.mmd_test(x, y, None, 49, estimator, seed=2)
        for a, b in [(x.numpy(), y.numpy()), (x.tolist(), y.tolist()), (x.numpy(), y)]:
            got = dg.mmd_test(a, b, None, 49, estimator, seed=2)
            assert got.statistic == want.statistic and got.p_value == want.p_value
            assert torch.equal(got.null_samples, want.null_samples) and got.sigmas == want.sigmas
    # integer arrays become float32, as in the trainer
    xi, yi = np.arange(12).reshape(6, 2), np.arange(10).reshape(5, 2) + 3
    got = dg.mmd_test(xi, yi, 2.0, 9, seed=0)
    want = dg.mmd_test(torch.from_numpy(xi).float(), torch.from_numpy(yi).float(), 2.0, 9, seed=0)
    assert got.statistic == want.statistic and torch.equal(got.null_samples, want.null_samples)


def test_proxy_a_distance_same_and_separated():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(400, 5, generator=g)
    xt = torch.randn(400, 5, generator=g)
    for clf in ("linear", "mlp"):
        assert dg.proxy_a_distance(xs, xt, classifier=clf) < 0.45
        assert dg.proxy_a_distance(xs, xt + 6.0, classifier=clf) > 1.9
    pad = dg.proxy_a_distance(xs, xt + 0.5)
    assert 0.0 <= pad <= 2.0
    assert dg.proxy_a_distance(xs, xt + 0.5, seed=3) == dg.proxy_a_distance(xs, xt + 0.5, seed=3)


def test_proxy_a_distance_bad_input():
    xs = torch.randn(10, 3)
    with pytest.raises(ValueError, match="at least 4 samples in each domain"):
        dg.proxy_a_distance(xs, torch.randn(3, 3))
    with pytest.raises(ValueError, match="classifier"):
        dg.proxy_a_distance(xs, xs, classifier="svm")
    with pytest.raises(ValueError, match="same number of features"):
        dg.proxy_a_distance(xs, torch.randn(10, 2))
    with pytest.raises(TypeError, match="xs must be a numpy array, a torch.Tensor or a nested list"):
        dg.proxy_a_distance({"xs": xs}, xs)
    with pytest.raises(ValueError, match="xt must be at least 2-D"):
        dg.proxy_a_distance(xs, xs[0])
    with pytest.raises(ValueError, match="max_samples"):
        dg.proxy_a_distance(xs, xs, max_samples=3)
    with pytest.raises(TypeError, match="seed"):
        dg.proxy_a_distance(xs, xs, seed=1.5)


def test_proxy_a_distance_numpy_and_list_inputs():
    g = torch.Generator().manual_seed(4)
    xs, xt = torch.randn(60, 3, generator=g), torch.randn(50, 3, generator=g) + 0.8
    for clf in ("linear", "mlp"):
        want = dg.proxy_a_distance(xs, xt, seed=1, classifier=clf)
        assert 0.0 < want <= 2.0
        assert dg.proxy_a_distance(xs.numpy(), xt.numpy(), seed=1, classifier=clf) == want
        assert dg.proxy_a_distance(xs.tolist(), xt, seed=1, classifier=clf) == want


def test_domain_divergence_verdicts():
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(150, 4, generator=g)
    same = dg.domain_divergence(xs, torch.randn(150, 4, generator=g), num_permutations=99)
    assert same.verdict == "low" and same.mmd2 < 0.1
    far = dg.domain_divergence(xs, torch.randn(150, 4, generator=g) + 5.0, num_permutations=99)
    assert far.verdict == "high" and far.p_value == pytest.approx(0.01) and far.proxy_a_distance > 1.9
    assert 0.5 < far.mmd2 <= 2.0
    text = far.explain()
    assert "high" in text and "p = 0.01" in text and "\n" not in text
    assert "cannot reject" in same.explain()


def test_verdict_rules():
    assert verdict(0.3, 0.2, 0.05) == "low"  # not significant
    assert verdict(0.05, 0.001, 0.05) == "low"
    assert verdict(0.3, 0.001, 0.05) == "moderate"
    assert verdict(0.7, 0.001, 0.05) == "high"


def test_domain_divergence_numpy_inputs():
    """numpy arrays (what `python -m pytl divergence` loads) give the report of the tensors."""
    g = torch.Generator().manual_seed(3)
    xs, xt = torch.randn(120, 4, generator=g, dtype=torch.float64), torch.randn(90, 4, generator=g) + 1.0
    want = dg.domain_divergence(xs, xt, num_permutations=49, max_samples=100)
    got = dg.domain_divergence(xs.numpy(), xt.numpy(), num_permutations=49, max_samples=100)
    assert got == want and want.verdict in ("moderate", "high")
    assert dg.domain_divergence(xs.tolist(), xt, num_permutations=49, max_samples=100) == want


def test_domain_divergence_subsamples_large_inputs():
    g = torch.Generator().manual_seed(2)
    xs, xt = torch.randn(400, 3, generator=g), torch.randn(300, 3, generator=g) + 0.3
    rep = dg.domain_divergence(xs, xt, num_permutations=49, max_samples=100)
    assert rep.num_source == 400 and rep.num_target == 300 and math.isfinite(rep.mmd2)
    with pytest.raises(ValueError, match="alpha"):
        dg.domain_divergence(xs, xt, alpha=1.5)
    with pytest.raises(TypeError, match="alpha"):
        dg.domain_divergence(xs, xt, alpha="0.05")
    with pytest.raises(ValueError, match="max_samples"):
        dg.domain_divergence(xs, xt, max_samples=1)
    with pytest.raises(ValueError, match="xs and xt must have the same number of features"):
        dg.domain_divergence(xs, xt[:, :2])
