"""Reference implementations and shared test helpers: pytl's own tests use them, and so can the tests of
code built on pytl. Not used by the library itself.

The references compute what the fused ops compute by other formulas, in plain torch, materialising the
pairwise matrices (so only for small inputs):

* ``pair_sq_dists``, ``terms_reference``, ``mmd2_reference64``, ``kernel_matmul_reference``: float64
  oracles from the textbook definitions (squared distances from broadcast differences; no tiling, no
  exp tricks, no centring);
* ``weighted_mmd2_reference64``, ``class_conditional_mmd2_reference64``: float64 oracles of the
  sample-weighted and class-conditional MMD, class by class from the definitions;
* ``mmd2_reference``: MMD² as most code computes it (matrices from |a|² + |b|² − 2ab, one exp pass per
  bandwidth), with pytl.mmd2's signature: the "naive" implementation of the benchmarks;
* ``class_conditional_mmd2_naive``: LMMD as DSAN's code computes it (the pooled kernel matrix and the
  class-summed weight matrices, n x m each): the baseline of the class-conditional benchmark.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pytl._samples import check_pair
from pytl.bandwidths import SigmasLike, WeightsLike, resolve_bandwidths
from pytl.ops import is_unbiased

__all__ = [
    "class_conditional_mmd2_naive",
    "class_conditional_mmd2_reference64",
    "kernel_matmul_reference",
    "make_pair",
    "mmd2_reference",
    "mmd2_reference64",
    "pair_sq_dists",
    "terms_reference",
    "weighted_mmd2_reference64",
]


def pair_sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared distances by broadcasting the differences, in float64."""
    a, b = a.double(), b.double()
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def terms_reference(x: Tensor, y: Tensor, sigmas, unbiased: bool) -> Tensor:
    """T_k per bandwidth (float64) from the textbook definition of the V/U statistics."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).to(x.device)
    n, m = x.shape[0], y.shape[0]
    out = []
    for s in sig:
        kxx = torch.exp(-pair_sq_dists(x, x) / (2 * s * s))
        kyy = torch.exp(-pair_sq_dists(y, y) / (2 * s * s))
        kxy = torch.exp(-pair_sq_dists(x, y) / (2 * s * s))
        if unbiased:
            txx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
            tyy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        else:
            txx, tyy = kxx.sum() / n**2, kyy.sum() / m**2
        out.append(txx + tyy - 2 * kxy.sum() / (n * m))
    return torch.stack(out)


def mmd2_reference64(x: Tensor, y: Tensor, sigmas, weights=None, unbiased: bool = False) -> Tensor:
    """sum_k w_k T_k in float64 from terms_reference (weights default 1/K)."""
    terms = terms_reference(x, y, sigmas, unbiased)
    w = (torch.full_like(terms, 1 / terms.numel()) if weights is None
         else torch.as_tensor(weights, dtype=torch.float64).to(terms.device))
    return (w * terms).sum()


def _kernel64(a: Tensor, b: Tensor, sigma: Tensor) -> Tensor:
    return torch.exp(-pair_sq_dists(a, b) / (2 * sigma * sigma))


def _bandwidths64(sigmas, weights) -> tuple[Tensor, Tensor]:
    sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    w = (torch.full_like(sig, 1 / sig.numel()) if weights is None
         else torch.as_tensor(weights, dtype=torch.float64).reshape(-1))
    return sig, w


def weighted_mmd2_reference64(x: Tensor, y: Tensor, sigmas, weights, x_weights: Tensor, y_weights: Tensor,
                              unbiased: bool = False) -> Tensor:
    """sum_k w_k MMD²_k between the weighted samples, in float64, from the definition: the biased form
    a'Kxx a + b'Kyy b - 2 a'Kxy b; the unbiased one averages the self terms over distinct pairs with
    weights a_i a_j / sum_{i != j} a_i a_j."""
    x, y = x.double(), y.double()
    a = x_weights.double().to(x.device) / x_weights.double().sum()
    b = y_weights.double().to(x.device) / y_weights.double().sum()
    sig, w = _bandwidths64(sigmas, weights)

    def self_term(z: Tensor, p: Tensor, s: Tensor) -> Tensor:
        pair_w = p[:, None] * p[None, :]
        if unbiased:
            pair_w = pair_w * (1 - torch.eye(len(p), dtype=torch.float64, device=p.device))
            pair_w = pair_w / pair_w.sum()
        return (pair_w * _kernel64(z, z, s)).sum()

    total = x.new_zeros(())
    for k in range(sig.numel()):
        s = sig[k].to(x.device)
        cross = (a[:, None] * b[None, :] * _kernel64(x, y, s)).sum()
        total = total + w[k] * (self_term(x, a, s) + self_term(y, b, s) - 2 * cross)
    return total


def class_conditional_mmd2_reference64(x: Tensor, y: Tensor, x_probs: Tensor, y_probs: Tensor, sigmas,
                                       weights=None) -> Tensor:
    """sum over classes of the biased weighted MMD² (weights: a class's column over its sum), in float64,
    class by class; a class without weight on one side is skipped."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for c in range(y_probs.shape[1]):
        p, q = x_probs[:, c].double(), y_probs[:, c].double()
        if p.sum() <= 0 or q.sum() <= 0:
            continue
        total = total + weighted_mmd2_reference64(x, y, sigmas, weights, p, q)
    return total


def class_conditional_mmd2_naive(x: Tensor, y: Tensor, x_probs: Tensor, y_probs: Tensor, sigmas,
                                 weights=None) -> Tensor:
    """LMMD the way DSAN's code computes it: the pooled (n + m) x (n + m) squared distances and K kernel
    matrices, and the weight matrices A A', B B', A B' summed over classes (each n x m sized); sum_c
    MMD²_c = sum(Wxx Kxx) + sum(Wyy Kyy) - 2 sum(Wxy Kxy). For the benchmarks."""
    sig, w = resolve_bandwidths(x, y, sigmas, weights)
    sx, sy = x_probs.sum(0), y_probs.sum(0)
    present = ((sx > 0) & (sy > 0)).to(x.dtype)
    a = x_probs / torch.where(sx > 0, sx, torch.ones_like(sx)) * present
    b = y_probs / torch.where(sy > 0, sy, torch.ones_like(sy)) * present
    z = torch.cat([x, y])
    sq = (z * z).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp_min(0.0)
    kern = sum(w[k] * torch.exp(-d2 / (2.0 * sig[k] ** 2)) for k in range(sig.numel()))
    n = x.shape[0]
    return ((a @ a.T) * kern[:n, :n]).sum() + ((b @ b.T) * kern[n:, n:]).sum() - 2.0 * ((a @ b.T) * kern[:n, n:]).sum()


def kernel_matmul_reference(z: Tensor, s: Tensor, sigmas, weights) -> Tensor:
    """K(z, z) @ s in float64, K materialised from broadcast differences (a different formula from the kernels)."""
    d2 = pair_sq_dists(z, z)
    sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    k = sum(w[q] * torch.exp(-d2 / (2 * sig[q] ** 2)) for q in range(sig.numel()))
    return k @ s.double()


def mmd2_reference(
    x: Tensor,
    y: Tensor,
    sigmas: SigmasLike = None,
    weights: WeightsLike = None,
    *,
    estimator: str = "biased",
) -> Tensor:
    """Plain-torch MMD^2 that materialises the n x n, m x m and n x m matrices, one exp pass per
    bandwidth: what most code does today. Same arguments, bandwidths and bandwidth rules as
    pytl.mmd2. For tests and benchmark comparisons only."""
    unbiased = is_unbiased(estimator)
    check_pair(x, y, estimator)
    sig, w = resolve_bandwidths(x, y, sigmas, weights)
    _check_bandwidth_values(sig, w)
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, y, sig, w = x.to(dtype), y.to(dtype), sig.to(dtype), w.to(dtype)

    def sq_dists(a: Tensor, b: Tensor) -> Tensor:
        return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min(0.0)

    def block_mean(d2: Tensor, gamma: Tensor, self_block: bool) -> Tensor:
        e = torch.exp(-gamma * d2)
        if self_block and unbiased:
            k = e.shape[0]
            return (e.sum() - e.diagonal().sum()) / (k * (k - 1))
        return e.mean()

    dxx, dyy, dxy = sq_dists(x, x), sq_dists(y, y), sq_dists(x, y)
    total = x.new_zeros(())
    for k in range(sig.numel()):
        gamma = 1.0 / (2.0 * sig[k] ** 2)
        t = block_mean(dxx, gamma, True) + block_mean(dyy, gamma, True) - 2.0 * block_mean(dxy, gamma, False)
        total = total + w[k] * t
    return total


def _check_bandwidth_values(sig: Tensor, w: Tensor) -> None:
    """The op's rules for bandwidths and weights, for this plain-torch version that no op checks."""
    if sig.numel() == 0 or not bool(torch.isfinite(sig).all() and (sig > 0).all()):
        raise ValueError(f"sigmas must be positive and finite, got {sig.tolist()}")
    if w.numel() != sig.numel():
        raise ValueError(f"weights must have one entry per bandwidth: {w.numel()} weights for {sig.numel()} sigmas")
    if not bool(torch.isfinite(w).all() and (w >= 0).all()):
        raise ValueError(f"weights must be non-negative and finite, got {w.tolist()}")


def make_pair(n: int, m: int, d: int, dtype: torch.dtype = torch.float64, device="cpu", shift: float = 0.3,
              seed: int = 0) -> tuple[Tensor, Tensor]:
    """Seeded samples x ~ N(0, I) (n, d) and y ~ N(shift, 1.21 I) (m, d), drawn in float64 on the CPU."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) * 1.1 + shift
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
