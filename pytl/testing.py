"""Reference implementations and shared test helpers: pytl's own tests use them, and so can the tests of
code built on pytl. Not used by the library itself.

The references compute what the fused ops compute by other formulas, in plain torch, materialising the
pairwise matrices (so only for small inputs):

* ``pair_sq_dists``, ``terms_reference``, ``mmd2_reference64``, ``kernel_matmul_reference``: float64
  oracles from the textbook definitions (squared distances from broadcast differences; no tiling, no
  exp tricks, no centring);
* ``mmd2_reference``: MMD² as most code computes it (matrices from |a|² + |b|² − 2ab, one exp pass per
  bandwidth), with pytl.mmd2's signature: the "naive" implementation of the benchmarks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pytl._samples import check_pair
from pytl.bandwidths import SigmasLike, WeightsLike, resolve_bandwidths
from pytl.ops import is_unbiased

__all__ = [
    "cli_exit_code",
    "kernel_matmul_reference",
    "make_pair",
    "mmd2_reference",
    "mmd2_reference64",
    "pair_sq_dists",
    "terms_reference",
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


def cli_exit_code(argv: list[str]) -> int | str | None:
    """``python -m pytl ARGV``'s exit status, run in this process (argparse errors exit with status 2)."""
    from pytl.cli import main  # the top layer: imported only by the tests that drive the CLI

    try:
        return main(argv)
    except SystemExit as e:
        return e.code
