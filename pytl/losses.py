"""Alignment losses as nn.Modules: thin shells over the functions of pytl.ops."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pytl import distributed as _dist
from pytl._checks import check_choice
from pytl.ops import ESTIMATORS, SigmasLike, WeightsLike, mmd2

__all__ = ["MMDLoss"]


class MMDLoss(nn.Module):
    """nn.Module twin of :func:`pytl.mmd2`: ``MMDLoss(sigmas, weights, estimator)(x, y)``.

    Pass an nn.Parameter as sigmas or weights to learn them. ``distributed=True``: x and y are this
    rank's shards and the loss is the MMD² of the global batch, gathered over ``group`` (default:
    all ranks); it needs an initialised torch.distributed process group at call time."""

    def __init__(self, sigmas: SigmasLike = None, weights: WeightsLike = None, estimator: str = "biased", *,
                 distributed: bool = False, group: Any = None) -> None:
        super().__init__()
        check_choice(estimator, "estimator", ESTIMATORS)
        if not isinstance(distributed, bool):
            raise TypeError(f"distributed must be a bool, got {type(distributed).__name__}")
        if group is not None and not distributed:
            raise ValueError("group is only used with distributed=True")
        self.sigmas = sigmas
        self.weights = weights
        self.estimator = estimator
        self.distributed = distributed
        self.group = group

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        group = None
        if self.distributed:
            if not _dist.is_initialized():
                raise ValueError("MMDLoss(distributed=True) needs an initialised torch.distributed process group "
                                 "(run under torchrun and call torch.distributed.init_process_group, or "
                                 "pytl.distributed.init_from_env()); use distributed=False in a single process")
            group = self.group if self.group is not None else torch.distributed.group.WORLD
        return mmd2(x, y, self.sigmas, self.weights, estimator=self.estimator, group=group)

    def extra_repr(self) -> str:
        sig = "median heuristic ladder" if self.sigmas is None else self.sigmas
        dist = ", distributed=True" if self.distributed else ""
        return f"sigmas={sig}, estimator={self.estimator!r}{dist}"
