"""mmd_test(group=...): the scalable two-sample tests of samples sharded over torch.distributed ranks.

Each rank holds its shards of x and y (tensors, memmaps or DataLoaders) and every rank gets the same result, the
test of the concatenated samples:

- "rff": each rank's rows go to the chunks of the permutation null by keys of its own (pytl.diagnostics.streaming),
  its feature sums per chunk are computed in one pass, and one all-reduce adds the (2c, F) chunk sums and counts;
  the permutation null then runs on every rank from the same seed. The statistic is the single-process rff
  statistic of the concatenated samples (the chunks' sums add up to each side's sums).
- "block": each rank's block statistics (pytl.sharded_estimates: its shards cut into blocks of the global
  layout's size), gathered in one collective, and the normal null of the B-test over all of them.

"exact" is refused: its permutations re-split the pooled rows across ranks, an n² exchange per permutation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pytl import distributed as _dist
from pytl._inputs import as_features
from pytl.bandwidths import SigmasLike, WeightsLike
from pytl.diagnostics import scalable_tests, streaming
from pytl.ring_mmd import global_bandwidths
from pytl.sharded_data import agree
from pytl.sharded_estimates import sharded_block_statistics

__all__ = ["sharded_test"]


def sharded_test(x: Any, y: Any, sigmas: SigmasLike, weights: WeightsLike, method: str, estimator: str,
                 num_permutations: int, num_features: int | None, block_size: int | None, seed: int,
                 group: Any, progress: bool = False) -> tuple[str, float, float, Tensor, Tensor, Tensor]:
    """(method run, statistic, p-value, null, sigmas, weights) of the test of the ranks' concatenated samples."""
    _dist.check_group(group)
    if method == "exact":
        raise ValueError("mmd_test(group=...) runs the scalable tests only: the exact test's permutations re-split "
                         "the pooled rows across ranks; use method='rff' (or 'block' with estimator='unbiased'), or "
                         "'auto'")
    if method == "rff":
        if estimator != "biased":
            raise ValueError("method='rff' tests with the biased random-feature statistic: pass estimator='biased'")
        assert num_features is not None
        stat, p, null, sig, w = streaming.stream_rff_test(x, y, sigmas, weights, num_features=num_features,
                                                          num_permutations=num_permutations, seed=seed, group=group,
                                                          progress=progress)
        return method, stat, p, null, sig, w
    if estimator != "unbiased":
        raise ValueError("method='block' tests with the unbiased per-block statistic (its null has mean 0): "
                         "pass estimator='unbiased'")
    if streaming.is_stream(x) or streaming.is_stream(y):
        raise ValueError("method='block' with a group needs each rank's shards as arrays or tensors; a memmap or a "
                         "stream of batches is tested by method='rff'")
    xt, yt = agree(lambda: _shards(x, y), group)
    ns, ms, _ = _dist.exchange_shapes(xt, yt, group)
    sig, w = global_bandwidths(xt, yt, sigmas, weights, ns, ms, group)
    with torch.no_grad():
        mine = sharded_block_statistics(xt, yt, sig, w, block_size, seed, True, ns, ms, group).double().cpu()
    stat, p, stats = scalable_tests.block_null(_dist.gather_rows(mine, group))
    return method, stat, p, stats, sig, w


def _shards(x: Any, y: Any) -> tuple[Tensor, Tensor]:
    """This rank's shards as checked 2-D tensors (a shard may be empty: the global samples are checked later)."""
    xt, yt = as_features(x, "x", allow_empty=True), as_features(y, "y", allow_empty=True)
    for name, t in (("x", xt), ("y", yt)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows, features), got shape {tuple(t.shape)}")
    return xt, yt
