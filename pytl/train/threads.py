"""How many CPU threads a training stage uses: ``num_threads="auto"`` (the default) sizes it by the step's work.

A parallel region waits for every one of its threads to be scheduled. On a machine whose cores are shared
(DataLoader workers, other jobs: the usual case) a small model's step, a few milliseconds of work split in
many short ops, then waits a time slice per op: ``compare_strategies`` on 784-wide inputs took 5.8x longer
with torch's 2 threads than with 1 beside two busy processes (benchmarks/busy_machine.py). "auto" trains on
one thread unless a step's work gives a second thread ``AUTO_FLOPS_PER_THREAD`` of its own; above that, on
torch's setting.
The rule reads only the model and the batch sizes, so the same settings always give the same thread
count (and the same bits: some torch CPU kernels round differently with more threads).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["AUTO_FLOPS_PER_THREAD", "stage_threads", "using_threads"]

#: a step's forward + backward floating-point work (about 6 x parameters x rows) below which one thread is
#: used: ~10 ms on one core here, where a second thread saves at most that much on an idle machine and a
#: busy one charges milliseconds per op
AUTO_FLOPS_PER_THREAD = 1e9


def stage_threads(setting: Any, model: nn.Module | None, rows_per_step: int) -> int | None:
    """The thread count of a stage: an int as given; None: torch's setting (returned as None); "auto": 1 when
    the step's estimated work (6 x trainable-or-not parameters x rows) is below AUTO_FLOPS_PER_THREAD x 2,
    else None. Convolutions reuse their weights across positions, so the estimate is low for CNNs: a large
    CNN still gets torch's threads, a small one one thread, which is what it trains fastest on here."""
    if setting != "auto":
        return setting
    params = 0 if model is None else sum(p.numel() for p in model.parameters())
    flops = 6.0 * params * max(1, rows_per_step)
    return 1 if flops < 2 * AUTO_FLOPS_PER_THREAD or torch.get_num_threads() <= 1 else None


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` inside (None: left as they are), restored after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
