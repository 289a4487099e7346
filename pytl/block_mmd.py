"""The block (linear-time) MMD² of the B-test (Zaremba, Gretton & Blaschko, NeurIPS 2013): the rows, in a
seeded random order, are cut into b blocks of about B rows per side, and the statistic is the mean of the
b per-block MMD² (each by the exact fused op, O(B²)); the cost is O((n + m)·B) and, with B ≈ sqrt(n), it is
O(n^1.5) pairs instead of n². Over blocks of i.i.d. rows the block statistics are i.i.d. too, so the mean is
asymptotically normal with a variance estimated from them: a null without permutations.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pytl._loader import load_ops

load_ops()

__all__ = ["block_layout", "block_statistics"]


def block_layout(n: int, m: int, block_size: int | None) -> tuple[int, int, int]:
    """(blocks, rows of x per block, rows of y per block); block_size None: about sqrt(min(n, m)) rows, at
    least 2 (the unbiased per-block statistic), with at least 2 blocks. Leftover rows (fewer than a block's
    worth) are left out."""
    small = min(n, m)
    size = max(2, math.isqrt(small)) if block_size is None else int(block_size)
    if size < 2:
        raise ValueError(f"block_size={block_size}: a block needs at least 2 rows per side")
    blocks = small // size
    if blocks < 2:
        raise ValueError(f"block_size={size} leaves {blocks} block(s) of n={n}, m={m} rows: the block estimator "
                         "needs at least 2 blocks (a smaller block_size, or method='exact' for this little data)")
    return blocks, n // blocks, m // blocks


def block_statistics(x: Tensor, y: Tensor, sigmas: Tensor, weights: Tensor, block_size: int | None, seed: int,
                     unbiased: bool = True) -> Tensor:
    """The b per-block MMD² (b,), differentiable in x and y: block j pairs x's and y's j-th slices of a seeded
    random row order (a CPU generator: the same blocks on every device)."""
    blocks, bx, by = block_layout(x.shape[0], y.shape[0], block_size)
    g = torch.Generator().manual_seed(int(seed))
    px = torch.randperm(x.shape[0], generator=g)[: blocks * bx].view(blocks, bx).to(x.device)
    py = torch.randperm(y.shape[0], generator=g)[: blocks * by].view(blocks, by).to(y.device)
    stats = [torch.ops.pytl.mmd2.default(x[px[j]], y[py[j]], sigmas, weights, unbiased) for j in range(blocks)]
    return torch.stack(stats)
