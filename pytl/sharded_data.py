"""Data sets sharded over torch.distributed ranks (not training mini-batches): what the sharded tests, reports and
the CLI's ``--distributed`` runs need beside pytl.distributed's collectives. A subsample of the concatenated
shards for the terms that a classifier estimates, and the checks of each rank's inputs made collective, so that an
error one rank sees is raised on every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from pytl.distributed import check_group, gather_rows, rows_per_rank

__all__ = ["agree", "gather_subsample"]

T = TypeVar("T")


def gather_subsample(t: Tensor, max_rows: int, seed: int, group: Any) -> Tensor:
    """About ``max_rows`` rows of the concatenated shards, the same on every rank: each rank draws its share
    (max_rows · n_r / N, rounded up) at random (a generator seeded with seed + rank) and one all-gather (shards
    padded to the longest, trimmed) pools them in rank order; all of them when N ≤ max_rows. For the terms that
    a subsample estimates (a domain classifier, Ben-David's bound) while the MMD test reads every row."""
    check_group(group)
    total = sum(rows_per_rank(t, group))
    take = t.shape[0] if total <= max_rows else min(t.shape[0], -(-max_rows * t.shape[0] // total))
    g = torch.Generator().manual_seed(int(seed) + dist.get_rank(group))
    mine = t[torch.randperm(t.shape[0], generator=g)[:take].sort().values.to(t.device)] if take < t.shape[0] else t
    return gather_rows(mine, group)


def agree(fn: Callable[[], T], group: Any = None) -> T:
    """``fn()`` on every rank, then one small exchange: when it raised ValueError or TypeError on some rank (its
    own file unreadable, a NaN in its shard), every rank raises that error, naming the rank, instead of the
    others waiting in their next collective for a rank that has left. Errors of other kinds propagate as they
    are. For the checks of sharded inputs, before the first collective on them."""
    outcome, error = None, None
    try:
        outcome = fn()
    except (ValueError, TypeError) as exc:
        error = (type(exc).__name__, str(exc))
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, error, group=group)
    failed = [(r, e) for r, e in enumerate(everyone) if e is not None]
    if failed:
        r, (kind, message) = failed[0]
        more = f" (and {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
        raise (TypeError if kind == "TypeError" else ValueError)(f"rank {r}{more}: {message}")
    return outcome  # type: ignore[return-value]
