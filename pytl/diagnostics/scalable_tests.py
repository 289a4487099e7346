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

__all__ = ["CHUNKS_PER_SIDE", "block_test", "rff_chunk_test"]

#: chunks of the smaller sample in the rff test: the permutation null's resolution (C(2c, c) distinct splits)
CHUNKS_PER_SIDE = 64


def block_test(x: Tensor, y: Tensor, sigmas: Tensor, weights: Tensor, block_size: int | None,
               seed: int) -> tuple[float, float, Tensor]:
    """(statistic, one-sided p-value of its normal null, the block statistics)."""
    with torch.no_grad():
        stats = block_mmd.block_statistics(x, y, sigmas, weights, block_size, seed, unbiased=True).double().cpu()
    mean, b = float(stats.mean()), stats.numel()
    se = float(stats.std()) / math.sqrt(b)
    if se == 0.0:
        return mean, (1.0 if mean <= 0 else 0.0), stats
    return mean, 0.5 * math.erfc(mean / se / math.sqrt(2.0)), stats


def rff_chunk_test(x: Tensor, y: Tensor, sigmas: Tensor, weights: Tensor, num_features: int, num_permutations: int,
                   seed: int) -> tuple[float, float, Tensor]:
    """(statistic, permutation p-value, the permuted statistics)."""
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
    sums = sums.cpu()  # (cx + cy, F) float64
    k = sigmas.numel()
    w = weights.detach().to("cpu", torch.float64)
    total = cx + cy

    def statistics(as_x: Tensor) -> Tensor:  # (P, total) 0/1 memberships -> (P,) biased RFF statistics
        mx = as_x @ sums / (cx * size)
        my = (1.0 - as_x) @ sums / (cy * size)
        diff = (mx - my).view(as_x.shape[0], k, -1)
        return (2.0 / diff.shape[2]) * (diff.pow(2).sum(2) * w).sum(1)

    observed = torch.zeros(1, total, dtype=torch.float64)
    observed[0, :cx] = 1.0
    statistic = float(statistics(observed)[0])
    null = []
    for start in range(0, num_permutations, 256):
        c = min(256, num_permutations - start)
        picks = torch.stack([torch.randperm(total, generator=g)[:cx] for _ in range(c)])
        as_x = torch.zeros(c, total, dtype=torch.float64).scatter_(1, picks, 1.0)
        null.append(statistics(as_x))
    null_t = torch.cat(null)
    return statistic, (int((null_t >= statistic).sum()) + 1) / (num_permutations + 1), null_t
