"""Two-sample tests whose cost grows linearly with the data (``mmd_test(method="block" | "rff")``): neither
builds an N × N matrix nor re-reads the data per permutation.

- "block" (the B-test, Zaremba et al. 2013): the mean of b per-block unbiased MMD² (pytl.block_mmd), whose null
  is asymptotically normal with mean 0 and a variance estimated from the b block statistics: a one-sided z-test,
  no permutation. Cost O((n + m)·B) with B ≈ sqrt(n) rows per block.
- "rff": the random-feature statistic ‖mean φ(x) − mean φ(y)‖² (pytl.random_features) with a permutation null
  over *chunks*: the rows, in a seeded random order, are cut into equal chunks whose feature sums are computed
  in the one pass over the data; each permutation re-assigns whole chunks to x and y, so its statistic costs
  O(chunks × F), not a pass. Under H0 the chunks are i.i.d., so the test is exact at any size (rows beyond a
  whole number of chunks are left out).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pytl import block_mmd, random_features

__all__ = ["CHUNKS_PER_SIDE", "block_null", "block_test", "chunk_permutation_test", "rff_chunk_test"]

#: chunks of the smaller sample in the rff test: the permutation null's resolution (C(2c, c) distinct splits)
CHUNKS_PER_SIDE = 64


def block_test(x: Tensor, y: Tensor, sigmas: Tensor, weights: Tensor, block_size: int | None,
               seed: int) -> tuple[float, float, Tensor]:
    """(statistic, one-sided p-value of its normal null, the block statistics)."""
    with torch.no_grad():
        stats = block_mmd.block_statistics(x, y, sigmas, weights, block_size, seed, unbiased=True).double().cpu()
    return block_null(stats)


def block_null(stats: Tensor) -> tuple[float, float, Tensor]:
    """(mean, one-sided p-value of the normal null N(0, var/b), the statistics) from b block statistics."""
    mean, b = float(stats.mean()), stats.numel()
    se = float(stats.std()) / math.sqrt(b)
    if se == 0.0:
        return mean, (1.0 if mean <= 0 else 0.0), stats
    return mean, 0.5 * math.erfc(mean / se / math.sqrt(2.0)), stats


def rff_chunk_test(x: Tensor, y: Tensor, sigmas: Tensor, weights: Tensor, num_features: int, num_permutations: int,
                   seed: int) -> tuple[float, float, Tensor]:
    """(statistic, permutation p-value, the permuted statistics) of tensors in memory: the chunks are equal
    slices of a seeded random row order."""
    n, m = x.shape[0], y.shape[0]
    size = max(1, min(n, m) // CHUNKS_PER_SIDE)
    cx, cy = n // size, m // size
    g = torch.Generator().manual_seed(int(seed))
    freq, phases = random_features.draw_features(x.shape[1], sigmas, num_features, seed, x)
    order_x = torch.randperm(n, generator=g)[: cx * size].view(cx, size)
    order_y = torch.randperm(m, generator=g)[: cy * size].view(cy, size)
    with torch.no_grad():
        sums = torch.stack([random_features.feature_sums(x[rows.to(x.device)], freq, phases)[0] for rows in order_x]
                           + [random_features.feature_sums(y[rows.to(y.device)], freq, phases)[0] for rows in order_y])
    counts = torch.full((cx + cy,), float(size), dtype=torch.float64)
    return chunk_permutation_test(sums.cpu(), counts, cx, sigmas.numel(), weights, num_permutations, seed)


def chunk_permutation_test(sums: Tensor, counts: Tensor, cx: int, num_bandwidths: int, weights: Tensor,
                           num_permutations: int, seed: int) -> tuple[float, float, Tensor]:
    """The biased random-feature statistic of the first ``cx`` chunks against the others, from the chunks'
    feature sums (C, F) and row counts (C,), and its null over ``num_permutations`` re-assignments of whole
    chunks (a generator seeded by ``seed``): (statistic, p-value, null)."""
    total = sums.shape[0]
    w = weights.detach().to("cpu", torch.float64)
    g = torch.Generator().manual_seed(int(seed) + 1)

    def statistics(as_x: Tensor) -> Tensor:  # (P, C) 0/1 memberships -> (P,) statistics
        mx = (as_x @ sums) / (as_x @ counts)[:, None]
        my = ((1.0 - as_x) @ sums) / ((1.0 - as_x) @ counts)[:, None]
        diff = (mx - my).view(as_x.shape[0], num_bandwidths, -1)
        return (2.0 / diff.shape[2]) * (diff.pow(2).sum(2) * w).sum(1)

    observed = torch.zeros(1, total, dtype=torch.float64)
    observed[0, :cx] = 1.0
    statistic = float(statistics(observed)[0])
    null = []
    for start in range(0, num_permutations, 256):
        c = min(256, num_permutations - start)
        picks = torch.stack([torch.randperm(total, generator=g)[:cx] for _ in range(c)])
        null.append(statistics(torch.zeros(c, total, dtype=torch.float64).scatter_(1, picks, 1.0)))
    null_t = torch.cat(null)
    return statistic, (int((null_t >= statistic).sum()) + 1) / (num_permutations + 1), null_t
