"""The random-feature MMD test on data that does not fit in one tensor: numpy memmaps (or arrays) and
DataLoaders (or any iterable of batches), read once, block by block, with memory independent of n.

Each side's rows go to ``CHUNKS_PER_SIDE`` chunks at random (a hash of the row's index in the stream and the seed,
so the same whatever the batch boundaries): every chunk is a random subsample of its side, as the permutation
null needs, even when the file is sorted (dealing rows in turn would make the chunks more alike than random
subsamples, the null too narrow and the test reject too often; contiguous chunks would make it too wide). Per
block of rows, each chunk's rows go through the ``rff_sums`` op and add to that chunk's feature sums; the
statistic and the chunk-permutation null of pytl.diagnostics.scalable_tests need only the (2c, F) sums and the
row counts: one pass over the data in all.

The bandwidths (``sigmas=None``): the median heuristic on up to ``MEDIAN_ROWS`` rows per side, evenly spaced
through a memmap, the first rows of a stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from pytl import distributed as _dist
from pytl import random_features
from pytl._progress import progress_bar
from pytl.bandwidths import SigmasLike, WeightsLike, resolve_bandwidths
from pytl.diagnostics.scalable_tests import CHUNKS_PER_SIDE, chunk_permutation_test

__all__ = ["BLOCK_ROWS", "MEDIAN_ROWS", "TENSOR_BLOCK_ROWS", "chunk_of", "is_stream", "stream_rff_test"]

#: rows read at a time (a block); 65 536 rows of 64 float32 features are 16 MiB
BLOCK_ROWS = 1 << 16
#: rows per block of a tensor already in memory (a copy of this many rows is made to sort them by chunk)
TENSOR_BLOCK_ROWS = 1 << 20
#: rows per side for the median heuristic
MEDIAN_ROWS = 2048


def is_stream(data: Any) -> bool:
    """Whether ``data`` should be streamed rather than loaded: a numpy memmap, or an iterable of batches that is
    neither an array, a tensor nor a list (a DataLoader, a generator)."""
    if isinstance(data, np.memmap):
        return True
    return isinstance(data, Iterable) and not isinstance(data, (np.ndarray, Tensor, list, tuple, str, bytes))


def _as_block(batch: Any, name: str) -> Tensor:
    """A batch as a float tensor (n, d): the first element of an (x,) or (x, y) batch, a numpy block converted."""
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        batch = batch[0]
    t = torch.as_tensor(np.asarray(batch)) if not isinstance(batch, Tensor) else batch
    if t.dim() != 2:
        raise ValueError(f"{name}: every batch must be a 2-D (rows, features) block, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: a batch holds NaN or infinite values")
    return t


def _blocks(data: Any, name: str) -> Iterator[Tensor]:
    if isinstance(data, Tensor):  # a rank's shard in memory (mmd_test(group=...)): already read, so larger
        if data.dim() != 2:      # blocks, whose chunks make fewer, longer op calls
            raise ValueError(f"{name} must be 2-D (rows, features), got shape {tuple(data.shape)}")
        for r0 in range(0, data.shape[0], TENSOR_BLOCK_ROWS):
            yield _as_block(data[r0:r0 + TENSOR_BLOCK_ROWS].detach(), name)
        return
    if isinstance(data, np.ndarray):  # a memmap (or an array): consecutive slices, read as they are needed
        if data.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows, features), got shape {data.shape}")
        for r0 in range(0, data.shape[0], BLOCK_ROWS):
            yield _as_block(np.array(data[r0:r0 + BLOCK_ROWS]), name)
        return
    for batch in data:
        yield _as_block(batch, name)


def _median_rows(data: Any, name: str) -> tuple[Tensor, Iterator[Tensor]]:
    """Rows for the median heuristic, and the blocks of the whole side (the rows it read first included)."""
    if isinstance(data, Tensor) and data.dim() == 2:  # evenly spaced rows, as from a memmap; blocks of the tensor
        rows = torch.linspace(0, data.shape[0] - 1, min(MEDIAN_ROWS, data.shape[0])).long().unique()
        return _as_block(data.detach()[rows.to(data.device)].cpu(), name), _blocks(data, name)
    if isinstance(data, np.ndarray):
        rows = np.unique(np.linspace(0, data.shape[0] - 1, min(MEDIAN_ROWS, data.shape[0])).astype(np.int64))
        return _as_block(np.array(data[rows]), name), _blocks(data, name)
    it = _blocks(data, name)
    first: list[Tensor] = []
    seen = 0
    for block in it:
        first.append(block)
        seen += block.shape[0]
        if seen >= MEDIAN_ROWS:
            break
    if not first:
        raise ValueError(f"{name} yielded no batch")

    def chained() -> Iterator[Tensor]:
        yield from first
        yield from it
    return torch.cat(first)[:MEDIAN_ROWS], chained()


def chunk_of(index: Tensor, seed: int, chunks: int) -> Tensor:
    """The chunk of each row index: a mixing hash (splitmix64's finaliser, int64 arithmetic wrapping) of the
    index and the seed, reduced modulo ``chunks``; uniform and independent-looking across rows."""
    salt = (int(seed) * 1442695040888963407) % 2**64  # the seed's own odd multiplier, as a signed int64
    z = index.to(torch.int64) * -7046029254386353131 + (salt - 2**64 if salt >= 2**63 else salt)  # 0x9E3779B97F4A7C15
    z = z ^ (z >> 31)
    z = z * -4658895280553007687  # 0xBF58476D1CE4E5B9
    z = z ^ (z >> 29)
    return z.remainder(chunks)


def _block_count(data: Any) -> int | None:
    """How many blocks _blocks yields for ``data``, or None when a stream does not say (no len())."""
    if isinstance(data, Tensor):
        return -(-data.shape[0] // TENSOR_BLOCK_ROWS) if data.dim() >= 1 else None
    if isinstance(data, np.ndarray):
        return -(-data.shape[0] // BLOCK_ROWS) if data.ndim >= 1 else None
    try:
        return len(data)
    except TypeError:
        return None


def _chunk_sums(blocks: Iterator[Tensor], freq: Tensor, phases: Tensor, chunks: int,
                seed: int, first_key: int = 0, bar: Any = None) -> tuple[Tensor, Tensor]:
    """(chunks, F) float64 feature sums and (chunks,) row counts; row i of the stream in chunk_of(first_key + i)
    (a rank's shard: keys of its own, first_key = rank · 2^40). Per block, one stable sort by chunk puts each
    chunk's rows together (in stream order), then one op call per chunk."""
    sums = torch.zeros(chunks, freq.shape[0], dtype=torch.float64)
    counts = torch.zeros(chunks, dtype=torch.float64)
    offset = first_key
    for block in blocks:
        ids = chunk_of(torch.arange(offset, offset + block.shape[0]), seed, chunks)
        ids, order = torch.sort(ids, stable=True)
        per_chunk = torch.bincount(ids, minlength=chunks)
        grouped = block[order].to(freq.device, freq.dtype)
        for c, rows in enumerate(grouped.split(per_chunk.tolist())):
            if rows.shape[0]:
                sums[c] += random_features.feature_sums(rows, freq, phases)[0].cpu()
        counts += per_chunk.double()
        offset += block.shape[0]
        if bar is not None:
            bar.update(1)
    return sums, counts


def stream_rff_test(x: Any, y: Any, sigmas: SigmasLike = None, weights: WeightsLike = None, *, num_features: int,
                    num_permutations: int, seed: int, group: Any = None,
                    progress: bool = False) -> tuple[float, float, Tensor, Tensor, Tensor]:
    """(statistic, p-value, null, sigmas, weights) of the random-feature test, reading x and y once each.
    progress: a bar over the blocks read (on rank 0 under a group), when both sides say how many they hold (a
    memmap, an array, a DataLoader with len()); tqdm's in a notebook or a terminal, else pytl's line.

    group: x and y are this rank's shards (tensors, memmaps or streams): the median rows of every rank are
    gathered, each rank's rows go to chunks by keys of its own, and one all-reduce adds the chunk sums, so every
    rank computes the same test of the concatenated samples."""
    mx, x_blocks = _median_rows(x, "x")
    my, y_blocks = _median_rows(y, "y")
    if mx.shape[1] != my.shape[1]:
        raise ValueError(f"x and y must have the same number of features, got {mx.shape[1]} and {my.shape[1]}")
    first_key = 0
    if group is not None:
        mx, my = _dist.gather_samples(mx, my, group)  # in the data's dtype: the features' (float32 stays float32)
        first_key = dist.get_rank(group) << 40
    sig, w = resolve_bandwidths(mx.double(), my.double(), sigmas, weights, "pytl.mmd_test")
    freq, phases = random_features.draw_features(mx.shape[1], sig, num_features, seed, mx)
    counts = [_block_count(x), _block_count(y)]
    shown = progress and None not in counts and (group is None or dist.get_rank(group) == 0)
    bar = progress_bar(sum(c or 0 for c in counts), "mmd_test (rff, one pass)", enabled=shown) if shown else None
    with torch.no_grad():
        sx, nx = _chunk_sums(x_blocks, freq, phases, CHUNKS_PER_SIDE, seed, first_key, bar)
        sy, ny = _chunk_sums(y_blocks, freq, phases, CHUNKS_PER_SIDE, seed + 1, first_key, bar)
    if bar is not None:
        bar.close()
    if group is not None:
        reduced = torch.cat([torch.cat([sx, nx[:, None]], 1), torch.cat([sy, ny[:, None]], 1)])  # sums | count
        reduced = _dist.on_collective_device(reduced, group)
        dist.all_reduce(reduced, group=group)
        reduced = reduced.cpu()
        c = CHUNKS_PER_SIDE
        sx, nx, sy, ny = reduced[:c, :-1], reduced[:c, -1], reduced[c:, :-1], reduced[c:, -1]
    if float(nx.min()) < 1 or float(ny.min()) < 1:
        raise ValueError(f"the rff test deals rows to {CHUNKS_PER_SIDE} chunks per side and needs every chunk to get "
                         f"rows (at least that many rows in x and in y), got {int(nx.sum())} and {int(ny.sum())}")
    stat, p, null = chunk_permutation_test(torch.cat([sx, sy]), torch.cat([nx, ny]), CHUNKS_PER_SIDE,
                                           sig.numel(), w, num_permutations, seed)
    return stat, p, null, sig, w
