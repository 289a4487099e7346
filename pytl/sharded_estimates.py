"""The random-feature and block MMD² of samples sharded over torch.distributed ranks: one all-reduce of sums.

RFF: the statistic depends on the data only through each side's feature sums (and row counts), which add up
over shards, so every rank computes its shards' sums (the ``rff_sums`` op, features drawn from the same seed on
every rank) and one all-reduce gives the global sums: the single-process statistic of the concatenated samples.
Block: each rank cuts its own shards into blocks of the global layout's size (the rows per block that one
process would use on the global n and m) and one all-reduce of (sum of block statistics, count) gives their
mean: the B-test's estimator over the union of the ranks' blocks (a different random grouping than one process
would draw, the same estimator). Gradients follow pytl.distributed's convention: every rank computes the same
value from the same reduced sums, so the reduce's backward passes the gradient through unchanged, and each rank
gets the single-process gradient of its own rows, with no collective in backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from pytl import block_mmd as _block
from pytl import distributed as _dist
from pytl import random_features as _rff
from pytl.ring_mmd import global_bandwidths

__all__ = ["sharded_block_statistics", "sharded_mmd2"]


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) forward; identity backward: every rank computes the same loss from the same sums, so
    the gradient to this rank's share of the sum is the gradient to the sum itself."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        out = t.detach().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def sharded_mmd2(x: Tensor, y: Tensor, sigmas: Any, weights: Any, method: str, unbiased: bool,
                 num_features: int | None, block_size: int | None, seed: int | None, group: Any) -> Tensor:
    """mmd2(method="rff" | "block", group=...): the statistic of the concatenated shards, the same on every rank
    (for rff, equal to one process's with the same seed; module docstring)."""
    _dist.check_group(group)
    _dist.check_shard_tensors(x, y)
    ns, ms, _ = _dist.exchange_shapes(x, y, group)
    n, m = sum(ns), sum(ms)
    _dist.check_global_rows(ns, ms, 2 if unbiased else 1)
    seed = _common_seed(seed, group, x.device)
    sig, w = global_bandwidths(x, y, sigmas, weights, ns, ms, group)
    if sig.requires_grad:
        raise ValueError(f"method={method!r}: sigmas requires grad, but the {method} estimate does not differentiate "
                         "the bandwidths; detach them or use method='exact'")
    if method == "block":
        stats = sharded_block_statistics(x, y, sig, w, block_size, seed, unbiased, ns, ms, group)
        total = _SumOverRanks.apply(torch.stack([stats.sum().double(), stats.new_tensor(float(stats.numel()),
                                                                                          dtype=torch.float64)]), group)
        return (total[0] / total[1]).to(x.dtype)
    assert num_features is not None
    freq, phases = _rff.draw_features(x.shape[1], sig, num_features, seed, x)
    local = torch.cat([_side_sums(x, freq, phases, unbiased), _side_sums(y, freq, phases, unbiased)])
    sums = _SumOverRanks.apply(local, group)
    rows = 2 if unbiased else 1
    terms = _rff.rff_terms(sums[:rows], sums[rows:], n, m, sig.numel(), unbiased)
    return (terms * w.to(terms.dtype)).sum().to(x.dtype)


def sharded_block_statistics(x: Tensor, y: Tensor, sig: Tensor, w: Tensor, block_size: int | None, seed: int,
                             unbiased: bool, ns: list[int], ms: list[int], group: Any) -> Tensor:
    """This rank's block statistics (b_r,): its shards cut into blocks of the global layout's rows per block
    (block_layout on the global n, m), in a random order seeded by seed + rank; at least 2 blocks over all ranks."""
    blocks, bx, by = _block.block_layout(sum(ns), sum(ms), block_size)
    counts = [min(a // bx, b // by) for a, b in zip(ns, ms)]
    if sum(counts) < 2:
        raise ValueError(f"blocks of {bx} x rows and {by} y rows leave {sum(counts)} whole block(s) over the ranks' "
                         f"shards (x per rank {ns}, y per rank {ms}): the block estimator needs at least 2; give "
                         "each rank more rows of both samples, or a smaller block_size")
    me = dist.get_rank(group)
    if counts[me] == 0:  # no whole block here: nothing to the mean, and zero gradients (still connected to x and
        return (x[:0].sum() + y[:0].sum()).reshape(1)[:0]  # y, so that backward runs here as on the other ranks)
    g = torch.Generator().manual_seed(int(seed) + me)
    px = torch.randperm(x.shape[0], generator=g)[: counts[me] * bx].view(counts[me], bx).to(x.device)
    py = torch.randperm(y.shape[0], generator=g)[: counts[me] * by].view(counts[me], by).to(y.device)
    return torch.stack([torch.ops.pytl.mmd2.default(x[px[j]], y[py[j]], sig, w, unbiased) for j in range(counts[me])])


def _side_sums(z: Tensor, freq: Tensor, phases: Tensor, squares: bool) -> Tensor:
    """A shard's feature sums, (1|2, F) float64; a shard without rows adds zeros."""
    if z.shape[0] == 0:  # connected to z all the same: its (empty) gradient is defined, as in one process
        return torch.zeros(2 if squares else 1, freq.shape[0], dtype=torch.float64, device=z.device) + z[:0].sum()
    return _rff.feature_sums(z, freq, phases, squares)


def _common_seed(seed: int | None, group: Any, device: torch.device) -> int:
    """``seed``, or for None one drawn from rank 0's generator and broadcast: the features (or blocks) must
    agree on every rank."""
    if seed is not None:
        return int(seed)
    t = torch.randint(2**31 - 1, (1,), dtype=torch.int64).to(device)
    dist.broadcast(t, src=dist.get_global_rank(group, 0), group=group)
    return int(t.item())
