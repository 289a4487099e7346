"""The op cross_pair_sums(_and_grad): the x-y block alone of the weighted pair sweep, with weight rows of either
sign (what the ring's blocks between two shards need), against a float64 reference that builds the pairs."""

from __future__ import annotations

import pytest
import torch

import pytl  # noqa: F401  (loads the ops)


def reference(x, y, a, b, sig, coefs):
    """S_k = sum_ij (a_i . b_j) exp(-|x_i - y_j|^2 / (2 sigma_k^2)) from the full distance matrix, and the
    gradients of sum_k coefs_k S_k by autograd."""
    leaves = [t.detach().double().requires_grad_() for t in (x, y, a, b, sig)]
    xd, yd, ad, bd, sd = leaves
    dist2 = (xd.unsqueeze(1) - yd.unsqueeze(0)).pow(2).sum(-1)
    pair = ad @ bd.t()
    sums = torch.stack([(pair * torch.exp(-dist2 / (2 * s * s))).sum() for s in sd])
    grads = torch.autograd.grad((coefs.double() * sums).sum(), leaves)
    return sums.detach(), grads


# (n, m, d, C): small (the ATen tile route on the CPU for wide features), and large enough for the register sweep
CASES = [(7, 5, 3, 1), (37, 53, 5, 2), (300, 700, 7, 2), (1500, 900, 16, 1)]


@pytest.mark.parametrize("route", ["sweep", "tiles"])
@pytest.mark.parametrize("n, m, d, C", CASES)
def test_sums_and_gradients_match_the_pairwise_reference(n, m, d, C, route, monkeypatch):
    monkeypatch.setenv("PYTL_CPU_WEIGHTED_ROUTE", route)
    g = torch.Generator().manual_seed(n + m)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + 0.3
    a = torch.randn(n, C, generator=g, dtype=torch.float64)  # either sign: the ring weighs y rows by -1/m
    b = torch.randn(m, C, generator=g, dtype=torch.float64)
    sig = torch.tensor([0.7, 1.3, 2.0], dtype=torch.float64)
    coefs = torch.tensor([0.2, -0.5, 1.0], dtype=torch.float64)
    want, grads = reference(x, y, a, b, sig, coefs)
    got = torch.ops.pytl.cross_pair_sums_and_grad(coefs, x, y, a, b, sig)
    plain = torch.ops.pytl.cross_pair_sums(x, y, a, b, sig)
    scale = float(want.abs().max())
    assert float((got[0] - want).abs().max()) <= 1e-12 * scale
    assert float((plain - want).abs().max()) <= 1e-12 * scale
    for out, ref in zip(got[1:], grads):
        assert float((out - ref).abs().max()) <= 1e-11 * float(ref.abs().max())
    # float32 inputs: computed in float32, to its precision
    got32 = torch.ops.pytl.cross_pair_sums(x.float(), y.float(), a.float(), b.float(), sig.float())
    assert float((got32.double() - want).abs().max()) <= 1e-4 * scale


def test_meta_shapes():
    x, y = torch.empty(5, 3, device="meta"), torch.empty(4, 3, device="meta")
    a, b, sig = torch.empty(5, 2, device="meta"), torch.empty(4, 2, device="meta"), torch.empty(3, device="meta")
    assert torch.ops.pytl.cross_pair_sums(x, y, a, b, sig).shape == (3,)
    out = torch.ops.pytl.cross_pair_sums_and_grad(torch.empty(3, device="meta"), x, y, a, b, sig)
    assert [t.shape for t in out] == [(3,), (5, 3), (4, 3), (5, 2), (4, 2), (3,)]


X, Y, A, B, SIG = torch.randn(5, 3), torch.randn(4, 3), torch.ones(5, 1), torch.ones(4, 1), torch.tensor([1.0])


@pytest.mark.parametrize("args, exc, message", [
    ((X, Y, torch.ones(4, 1), B, SIG), ValueError, "x_weights must have one row per row of x"),
    ((X, Y, A, torch.ones(4, 2), SIG), ValueError, "the same number of columns"),
    ((X, Y, A.int(), B, SIG), TypeError, "x_weights must be a floating-point tensor"),
    ((X, Y, torch.full((5, 1), float("nan")), B, SIG), ValueError, "x_weights must be finite"),
    ((X, Y, A, B, torch.tensor([-1.0])), ValueError, "sigmas must be positive"),
    ((X, torch.randn(4, 2), A, B, SIG), ValueError, "features"),
])
def test_bad_arguments_are_named(args, exc, message):
    with pytest.raises(exc, match=message):
        torch.ops.pytl.cross_pair_sums(*args)


def test_coefs_shape_is_checked():
    with pytest.raises(ValueError, match=r"coefs must have shape \(K,\) = \(1,\)"):
        torch.ops.pytl.cross_pair_sums_and_grad(torch.ones(2), X, Y, A, B, SIG)


def test_not_differentiable_through_autograd():
    x = X.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="derivative|differentiable|autograd"):
        torch.ops.pytl.cross_pair_sums(x, Y, A, B, SIG).sum().backward()


def test_ring_exchange_needs_a_group_and_the_exact_method():
    x, y = torch.randn(6, 2), torch.randn(5, 2)
    with pytest.raises(ValueError, match="exchange='ring' computes the exact, unweighted statistic"):
        pytl.mmd2(x, y, exchange="ring")
    with pytest.raises(ValueError, match="exchange must be one of"):
        pytl.mmd2(x, y, exchange="scatter")
