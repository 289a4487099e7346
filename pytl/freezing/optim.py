"""The optimizer's view of the blocks: one parameter group per block, and the per-block table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from pytl._checks import check_float
from pytl.freezing.block import blocks

if TYPE_CHECKING:  # policy.py imports summary from here
    from pytl.freezing.policy import FreezingPolicy

__all__ = ["param_groups", "summary"]


def param_groups(model: nn.Module, lr: float, policy: FreezingPolicy | None = None,
                 weight_decay: float = 0.0) -> list[dict]:
    """One optimizer parameter group per block, with ``lr = lr × policy.lr_scale(...)``.

    Every parameter is included, frozen or not (torch optimizers skip parameters without a grad), so
    that a schedule can unfreeze a block later. Each group carries ``block`` (its name) and
    ``base_lr`` (its lr before any unfreezing factor)."""
    lr = check_float(lr, "lr", 0.0, strict_min=True)
    weight_decay = check_float(weight_decay, "weight_decay", 0.0)
    bs = blocks(model)
    groups = []
    for i, b in enumerate(bs):
        scale = policy.lr_scale(i, len(bs), b) if policy is not None else 1.0
        groups.append({
            "params": list(b.params.values()),
            "lr": lr * scale,
            "base_lr": lr * scale,
            "block": b.name,
            "weight_decay": weight_decay,
        })
    return groups


def _fmt_count(n: int) -> str:
    return f"{n:,}"


def summary(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
            policy: FreezingPolicy | None = None) -> str:
    """A table: per block, trainable and frozen parameter counts, and its lr when known."""
    bs = blocks(model)
    lrs: dict[str, float] = {}
    if optimizer is not None:
        for g in optimizer.param_groups:
            if "block" in g:
                lrs[g["block"]] = g["lr"]
    elif policy is not None:
        for i, b in enumerate(bs):
            lrs[b.name] = policy.lr_scale(i, len(bs), b)
    lr_head = "lr" if optimizer is not None else "lr scale"
    rows = [("block", "trainable", "frozen", lr_head if lrs else "")]
    for b in bs:
        rows.append((b.name, _fmt_count(b.trainable), _fmt_count(b.frozen),
                     f"{lrs[b.name]:.3g}" if b.name in lrs else ""))
    tot_t, tot_f = sum(b.trainable for b in bs), sum(b.frozen for b in bs)
    rows.append(("total", _fmt_count(tot_t), _fmt_count(tot_f), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for j, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in (1, 2, 3)]
        lines.append("  ".join(cells).rstrip())
        if j == 0 or j == len(rows) - 2:
            lines.append("-" * len(lines[0]) if j == 0 else "-" * max(len(line) for line in lines))
    return "\n".join(lines)
