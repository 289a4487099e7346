"""An epoch's training metrics: sample-weighted running means of the step losses, and the divergence stop."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pytl import distributed as pd

EPOCH_KEYS = ("loss", "ce", "mmd2", "penalty")  # always in a record (None when the stage has no such term)


class Sums:
    """Sample-weighted running means of the per-batch losses (tensors, synced once per epoch).

    A step only appends its detached values and its batch size; the weighting and the sums happen once
    per epoch (each step's tensor ops cost microseconds, which small models notice)."""

    def __init__(self) -> None:
        self.n = 0
        self.values: dict[str, list[Tensor]] = {}
        self.sizes: dict[str, list[int]] = {}

    def add(self, n: int, **values: Tensor | None) -> None:
        self.n += n
        for k, v in values.items():
            if v is None:
                continue
            self.values.setdefault(k, []).append(v.detach())
            self.sizes.setdefault(k, []).append(1 if k == "correct" else n)

    def means(self, reduce_on: torch.device | None = None) -> dict[str, float | None]:
        """The epoch's means; with ``reduce_on`` (a device), of the sums over all ranks (one all-reduce)."""
        out: dict[str, float | None] = {k: None for k in EPOCH_KEYS}
        totals = {}
        for k, vs in self.values.items():
            stacked = torch.stack([v.reshape(()) for v in vs]).float()
            totals[k] = (stacked * torch.tensor(self.sizes[k], dtype=stacked.dtype, device=stacked.device)).sum()
        n: float = self.n
        if reduce_on is not None:
            *summed, n_all = pd.all_reduce_sum([*totals.values(), torch.tensor(float(self.n), device=reduce_on)])
            totals, n = dict(zip(totals, summed)), float(n_all)
        for k, total in totals.items():
            out["train_acc" if k == "correct" else k] = float(total) / max(n, 1)
        return out


def check_finite(record: dict[str, Any], advice: str) -> None:
    """Once per epoch (no per-step GPU sync): a diverged loss stops training with a clear error."""
    loss = record.get("loss")
    if loss is not None and not math.isfinite(loss):
        raise FloatingPointError(f"{record['stage']} epoch {record['epoch']}: the loss became {loss}; {advice}")
