"""pytl.bandwidths: the median heuristic, the default ladder, and the conversion of sigmas / weights."""

import numpy as np
import pytest
import torch

import pytl
from pytl.bandwidths import as_bandwidth_vector, param_dtype, resolve_bandwidths
from pytl.testing import make_pair, mmd2_reference64, pair_sq_dists


def test_median_heuristic_matches_numpy():
    x, y = make_pair(60, 45, 3, torch.float64)
    z = torch.cat([x, y]).numpy()
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)[np.triu_indices(len(z), 1)]
    lower_median = np.sort(d2)[(len(d2) - 1) // 2]  # torch's median convention: the lower middle value
    assert pytl.median_heuristic(x, y).item() == pytest.approx(np.sqrt(lower_median / 2), rel=1e-12)
    assert not pytl.median_heuristic(x.requires_grad_(), y).requires_grad


def test_default_bandwidths_are_the_median_ladder(device):
    x, y = make_pair(50, 40, 4, torch.float64, device)
    s0 = pytl.median_heuristic(x, y).item()
    ladder = [s0 * 2 ** (j / 2) for j in (-2, -1, 0, 1, 2)]
    torch.testing.assert_close(pytl.mmd2(x, y).cpu(), mmd2_reference64(x.cpu(), y.cpu(), ladder))


def test_median_heuristic_large_input_subsamples():
    x, y = make_pair(20_000, 20_000, 8, torch.float32, shift=0.0)
    # for N(0, I) and N(0, 1.21 I) pooled, D = ||a - b||^2 concentrates near 2.21 * 8 ~ 17.7
    exact_sample = torch.cat([x[:1500], y[:1500]]).double()
    d2 = pair_sq_dists(exact_sample, exact_sample)
    med = d2[torch.triu_indices(3000, 3000, 1).unbind()].median()
    assert pytl.median_heuristic(x, y).item() == pytest.approx(torch.sqrt(med / 2).item(), rel=0.03)


def test_degenerate_median_falls_back():
    x = torch.zeros(10, 2)
    y = torch.zeros(10, 2)
    y[0, 0] = 1.0  # almost all pairwise distances are 0; the others are 1
    assert pytl.median_heuristic(x, y).item() == pytest.approx(np.sqrt(0.5))
    assert pytl.median_heuristic(torch.zeros(3, 2), torch.zeros(2, 2)).item() == 1.0


def test_conversion_keeps_dtype_rules_and_leaves_checks_to_the_op():
    x16 = torch.zeros(3, 2, dtype=torch.float16)
    x64 = torch.zeros(3, 2, dtype=torch.float64)
    assert param_dtype(x16) == torch.float32 and param_dtype(x64) == torch.float64
    assert as_bandwidth_vector(1.5, "sigmas", x64).tolist() == [1.5]
    assert as_bandwidth_vector((1, 2.5), "sigmas", x16).dtype == torch.float32
    t = torch.tensor(2.0, dtype=torch.float64)
    assert as_bandwidth_vector(t, "sigmas", x16).shape == (1,)  # 0-dim becomes 1-D; its dtype is kept
    bad = torch.tensor([[1.0, -1.0]])
    assert as_bandwidth_vector(bad, "sigmas", x64) is bad  # shape and values are the op's to check
    for value in ("wide", True, [1.0, "x"], None):
        with pytest.raises(TypeError, match="sigmas must be a number"):
            as_bandwidth_vector(value, "sigmas", x64)
    sig, w = resolve_bandwidths(x64, x64, [1.0, 2.0, 4.0], None)
    assert sig.tolist() == [1.0, 2.0, 4.0] and w.tolist() == [1 / 3] * 3 and w.dtype == torch.float64
    assert resolve_bandwidths(x64, x64, [], None)[1].numel() == 0  # the op rejects K = 0


def test_median_heuristic_checks_the_samples_it_computes_on():
    x, y = make_pair(5, 4, 3)
    for args, exc, fragment in [
        ((x.numpy(), y), TypeError, "x must be a torch.Tensor"),
        ((x[0], y), ValueError, "x must be a 2-D"),
        ((x, y[:, :2]), ValueError, "same number of features"),
        ((x, y.float()), TypeError, "same dtype"),
        ((x.long(), y.long()), TypeError, "x must be a floating-point"),
        ((x, y.to("meta")), ValueError, "same device"),
    ]:
        with pytest.raises(exc, match=fragment):
            pytl.median_heuristic(*args)


def _spread(n, count):
    """The subsample's rows, written out independently: i * (2^31 - 1 mod n) mod n."""
    return [(i * ((2**31 - 1) % n)) % n for i in range(count)] if count < n else list(range(n))


@pytest.mark.parametrize("n,m,d", [(60, 68, 2048), (300, 212, 256), (700, 90, 64), (1500, 1500, 3)])
def test_median_heuristic_subsample_is_the_documented_one(n, m, d):
    # <= 64 pooled points: all of them; above, p = min(1024, max(64, isqrt(2^21 // d))) in proportion
    from pytl.bandwidths import median_points
    p = median_points(n + m, d)
    assert p == min(n + m, max(64, min(1024, int(np.sqrt(2**21 // d)))))
    x, y = make_pair(n, m, d, torch.float64, seed=d)
    if p >= n + m:
        z = torch.cat([x, y]).numpy()
    else:
        px = min(n, max(1, round(p * n / (n + m))))
        z = np.concatenate([x.numpy()[_spread(n, px)], y.numpy()[_spread(m, p - px)]])
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)[np.triu_indices(len(z), 1)]
    lower_median = np.sort(d2)[(len(d2) - 1) // 2]
    assert pytl.median_heuristic(x, y).item() == pytest.approx(np.sqrt(lower_median / 2), rel=1e-12)


def test_median_heuristic_traces_without_host_reads():
    # fullgraph compile fails on any data-dependent Python value (.item(), a tensor used as an index):
    # the same property that keeps the median on a GPU with no synchronisation
    x, y = make_pair(150, 120, 40, torch.float32, seed=4)
    x[0, 0] = float("nan")
    compiled = torch.compile(pytl.median_heuristic, fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(x, y), pytl.median_heuristic(x, y))
    z = torch.zeros(70, 3)
    torch.testing.assert_close(compiled(z, z), torch.tensor(1.0))  # the fallback, also traced


def test_median_heuristic_host_and_device_selection_agree(monkeypatch):
    # the CPU picks the medians with nth_element on the host, other devices with one device sort;
    # PYTL_MEDIAN_SELECTION=sort runs the device path here: both must pick the same element
    z = torch.zeros(40, 3)
    dup = torch.cat([torch.zeros(30, 2), torch.ones(3, 2)])
    nan_x, nan_y = make_pair(90, 70, 5, torch.float32, seed=8)
    nan_x[[1, 5, 9]] = float("nan")
    cases = [make_pair(n, m, d, dt, seed=n + d) for n, m, d, dt in
             [(1, 1, 2, torch.float64), (3, 4, 1, torch.float32), (60, 68, 700, torch.float32),
              (300, 212, 256, torch.float64), (800, 900, 3, torch.float32), (5, 6, 2, torch.float16)]]
    cases += [(z, z[:5]), (dup, dup[:1]), (nan_x, nan_y), (torch.full((4, 2), float("nan")), torch.zeros(1, 2))]
    host = [pytl.median_heuristic(x, y) for x, y in cases]
    monkeypatch.setenv("PYTL_MEDIAN_SELECTION", "sort")
    for (x, y), want in zip(cases, host):
        got = pytl.median_heuristic(x, y)
        assert got.dtype == want.dtype and torch.equal(got, want), (x.shape, y.shape, got, want)
