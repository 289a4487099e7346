"""Batches for training and evaluation: seeded passes over arrays, DataLoaders, and stage 1's target stream.

Under DDP every batch is a *global* batch: arrays are split batch by batch between the ranks
(``pytl.distributed.shard``), a DataLoader has a DistributedSampler (ddp.py), and each batch comes
with its global size so that the losses can be reweighted (steps.objective).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from pytl import _inputs as inp
from pytl import distributed as pd

if TYPE_CHECKING:
    from pytl.train.state import RunState

Batch = tuple[Tensor, Tensor | None, int]  # (x, y or None, global batch size)


class ArrayBatches:
    """Shuffled index batches over an in-memory array, reshuffled each pass (seeded)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, min_last: int = 2) -> None:
        self.n, self.batch_size, self.gen, self.min_last = n, batch_size, generator, min_last

    def epoch(self) -> list[Tensor]:
        perm = torch.randperm(self.n, generator=self.gen)
        out = list(perm.split(self.batch_size))
        # a batch of one breaks BatchNorm and the unbiased MMD; under W ranks the last batch is split
        # W ways, so it needs 2·W samples (min_last)
        if len(out) > 1 and out[-1].numel() < self.min_last:
            out.pop()
        return out


def steps_per_epoch(data: Any, batch_size: int, world: int) -> int:
    """The number of batches ``batches`` yields in one pass (1 for a DataLoader without a length)."""
    if isinstance(data, DataLoader):
        try:
            return len(data)
        except TypeError:
            return 1
    n = data[0].shape[0]
    k = math.ceil(n / batch_size)
    last = n - (k - 1) * batch_size
    return k - 1 if k > 1 and last < 2 * world else k  # as ArrayBatches drops a too small last batch


def batches(run: RunState, data: Any, batch_size: int, gen: torch.Generator, labeled: bool, name: str,
            min_size: int = 2, epoch: int = 0) -> Iterator[Batch]:
    """One pass over the data as (x, y, n) batches on the run's device and dtype (training skips batches of one).

    Under DDP, x and y are this rank's part of a global batch of n samples."""
    dtype = run.dtype
    if isinstance(data, DataLoader):
        assert run.sample_shape is not None and run.num_classes is not None
        if isinstance(data.sampler, DistributedSampler):
            data.sampler.set_epoch(epoch)  # a new shuffle per pass, the same on every rank
        for batch in data:
            x, y = inp.split_batch(batch, labeled, name)
            x, y = inp.check_batch(x, y, run.num_classes, run.sample_shape, name)
            if x.shape[0] < min_size:
                continue
            yield x.to(run.device, dtype), (None if y is None else y.to(run.device)), x.shape[0] * run.world
        return
    x, y = (data if labeled else (data, None))
    for idx in ArrayBatches(x.shape[0], batch_size, gen, min_last=2 * run.world).epoch():
        n = idx.numel()
        if run.world > 1:
            idx = pd.shard(idx, run.rank, run.world)
        yield x[idx].to(run.device, dtype), (None if y is None else y[idx].to(run.device)), n


class TargetBatches:
    """Stage 1's unlabelled target batches, one per source batch, cycled pass after pass.

    Its position (the global batches left in the current pass, the number of passes) is saved in
    checkpoints, so that a resumed run draws the same batches; a DataLoader restarts at a new pass."""

    def __init__(self, run: RunState, data: Any, gen: torch.Generator) -> None:
        self.run, self.data, self.gen = run, data, gen
        self.passes = 0
        self.pending: list[Tensor] = []  # arrays: global index batches left in this pass
        self._loader_pass: Iterator[Batch] | None = None
        self._fresh = False

    def next(self) -> tuple[Tensor, int]:
        """This rank's part of the next target batch, and the global batch size."""
        run = self.run
        if isinstance(self.data, DataLoader):
            x = self._next_from_loader()
            return x, x.shape[0] * run.world
        if not self.pending:  # drawn when first needed, so the generator's draws keep their order
            self.pending = ArrayBatches(self.data.shape[0], run.settings.target_batch_size_value, self.gen,
                                        2 * run.world).epoch()
            self.passes += 1
        idx = self.pending.pop(0)
        n = idx.numel()
        if run.world > 1:
            idx = pd.shard(idx, run.rank, run.world)
        return self.data[idx].to(run.device, run.dtype), n

    def _next_from_loader(self) -> Tensor:
        while True:
            if self._loader_pass is None:
                self._loader_pass = batches(self.run, self.data, 0, self.gen, labeled=False,
                                            name="target_unlabeled", epoch=self.passes)
                self.passes += 1
                self._fresh = True
            batch = next(self._loader_pass, None)
            if batch is not None:
                self._fresh = False
                return batch[0]
            if self._fresh:
                raise ValueError("target_unlabeled yields no batch of at least 2 samples")
            self._loader_pass = None

    def state_dict(self) -> dict[str, Any]:
        return {"pending": [p.clone() for p in self.pending], "passes": self.passes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending, self.passes = list(state["pending"]), int(state["passes"])


class LabeledTargetBatches:
    """Semi-supervised stage 1's labelled target batches (arrays), cycled pass after pass, from a generator of
    their own (seed·1009 + 4): the source and unlabelled streams draw exactly as without them. Its position
    and generator go through checkpoints."""

    def __init__(self, run: RunState, data: tuple[Tensor, Tensor], batch_size: int) -> None:
        self.run, self.x, self.y = run, data[0], data[1]
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(run.settings.seed * 1009 + 4)
        self.pending: list[Tensor] = []

    def next(self) -> tuple[Tensor, Tensor]:
        if not self.pending:
            self.pending = ArrayBatches(self.x.shape[0], self.batch_size, self.gen, min_last=1).epoch()
        idx = self.pending.pop(0)
        return self.x[idx].to(self.run.device, self.run.dtype), self.y[idx].to(self.run.device)

    def state_dict(self) -> dict[str, Any]:
        return {"pending": [p.clone() for p in self.pending], "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = list(state["pending"])
        self.gen.set_state(state["generator"])
