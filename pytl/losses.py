"""Alignment losses: MMDLoss, the nn.Module shell over pytl.mmd2; ClassConditionalMMDLoss over
pytl.class_conditional_mmd2 (LMMD); coral_loss and CORALLoss (Deep CORAL)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pytl import distributed as _dist
from pytl._checks import check_choice
from pytl.ops import ESTIMATORS, METHODS, SigmasLike, WeightsLike, class_conditional_mmd2, mmd2

__all__ = ["CORALLoss", "ClassConditionalMMDLoss", "MMDLoss", "coral_loss"]

REDUCTIONS = ("mean", "sum")


class MMDLoss(nn.Module):
    """nn.Module twin of :func:`pytl.mmd2`: ``MMDLoss(sigmas, weights, estimator)(x, y)``.

    Pass an nn.Parameter as sigmas or weights to learn them. ``distributed=True``: x and y are this
    rank's shards and the loss is the MMD² of the global batch, gathered over ``group`` (default:
    all ranks); it needs an initialised torch.distributed process group at call time. ``method``,
    ``num_features``, ``block_size``: as in :func:`pytl.mmd2` ("rff" for large batches of wide embeddings);
    ``seed`` None (default) draws fresh random features or blocks at every call from torch's generator."""

    def __init__(self, sigmas: SigmasLike = None, weights: WeightsLike = None, estimator: str = "biased", *,
                 distributed: bool = False, group: Any = None, method: str = "exact", num_features: int | None = None,
                 block_size: int | None = None, seed: int | None = None) -> None:
        super().__init__()
        check_choice(estimator, "estimator", ESTIMATORS)
        check_choice(method, "method", METHODS)
        if method not in ("exact", "auto") and distributed:
            raise ValueError(f"method={method!r} does not support distributed=True yet; use method='exact'")
        _set_kernel_settings(self, sigmas, weights, distributed, group)
        self.estimator, self.method = estimator, method
        self.num_features, self.block_size, self.seed = num_features, block_size, seed

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        group = _loss_group(self, "MMDLoss")
        if self.method == "exact" or group is not None:  # a global batch under DDP: every pair, gathered
            return mmd2(x, y, self.sigmas, self.weights, estimator=self.estimator, group=group)
        return mmd2(x, y, self.sigmas, self.weights, estimator=self.estimator, method=self.method,
                    num_features=self.num_features, block_size=self.block_size, seed=self.seed)

    def extra_repr(self) -> str:
        sig = "median heuristic ladder" if self.sigmas is None else self.sigmas
        dist = ", distributed=True" if self.distributed else ""
        method = "" if self.method == "exact" else f", method={self.method!r}"
        return f"sigmas={sig}, estimator={self.estimator!r}{dist}{method}"


def _set_kernel_settings(loss: nn.Module, sigmas: Any, weights: Any, distributed: Any, group: Any) -> None:
    """The settings the MMD losses share: bandwidths, and whether (and over which group) to gather."""
    if not isinstance(distributed, bool):
        raise TypeError(f"distributed must be a bool, got {type(distributed).__name__}")
    if group is not None and not distributed:
        raise ValueError("group is only used with distributed=True")
    loss.sigmas, loss.weights, loss.distributed, loss.group = sigmas, weights, distributed, group


def _loss_group(loss: Any, name: str) -> Any:
    """The process group of a loss built with distributed=True (None otherwise)."""
    if not loss.distributed:
        return None
    if not _dist.is_initialized():
        raise ValueError(f"{name}(distributed=True) needs an initialised torch.distributed process group "
                         "(run under torchrun and call torch.distributed.init_process_group, or "
                         "pytl.distributed.init_from_env()); use distributed=False in a single process")
    return loss.group if loss.group is not None else torch.distributed.group.WORLD


class ClassConditionalMMDLoss(nn.Module):
    """nn.Module twin of :func:`pytl.class_conditional_mmd2` (LMMD):
    ``ClassConditionalMMDLoss()(source, target, source_labels_or_probs, target_probs)``.

    reduction: "mean" (default) divides the sum over classes by the number of classes that have weight on
    both sides (at least 1), so that the loss has the scale of one MMD² and a λ tuned for the marginal
    MMD keeps its meaning (DSAN divides the same way); "sum" is the op's Σ_c MMD²_c. distributed and group
    as for :class:`MMDLoss`."""

    def __init__(self, sigmas: SigmasLike = None, weights: WeightsLike = None, reduction: str = "mean", *,
                 distributed: bool = False, group: Any = None) -> None:
        super().__init__()
        check_choice(reduction, "reduction", REDUCTIONS)
        _set_kernel_settings(self, sigmas, weights, distributed, group)
        self.reduction = reduction

    def forward(self, x: Tensor, y: Tensor, x_probs: Any, y_probs: Tensor) -> Tensor:
        group = _loss_group(self, "ClassConditionalMMDLoss")
        total = class_conditional_mmd2(x, y, x_probs, y_probs, self.sigmas, self.weights, group=group)
        if self.reduction == "sum":
            return total
        return total / classes_on_both_sides(x_probs, y_probs, group)

    def extra_repr(self) -> str:
        sig = "median heuristic ladder" if self.sigmas is None else self.sigmas
        dist = ", distributed=True" if self.distributed else ""
        return f"sigmas={sig}, reduction={self.reduction!r}{dist}"


def classes_on_both_sides(x_probs: Any, y_probs: Tensor, group: Any = None) -> Tensor:
    """How many classes have weight in x_probs and in y_probs (over the global batch with a group), at least 1."""
    yp = torch.as_tensor(y_probs).detach()
    xp = torch.as_tensor(x_probs, device=yp.device).detach()
    classes = yp.shape[-1]
    x_mass = (torch.bincount(xp.long(), minlength=classes).to(yp.dtype) if xp.dim() == 1 and not xp.is_floating_point()
              else xp.reshape(-1, classes).sum(0))
    mass = torch.stack([x_mass.to(yp.dtype), yp.reshape(-1, classes).sum(0)])
    if group is not None:
        torch.distributed.all_reduce(mass, group=group)
    return ((mass[0] > 0) & (mass[1] > 0)).sum().clamp_min(1).to(yp.dtype)


def _covariance(z: Tensor) -> Tensor:
    """The (d, d) sample covariance (ddof 1) of the rows of z, in float32 or float64; 0 for a single row."""
    z = z.flatten(1)
    z = z if z.dtype in (torch.float32, torch.float64) else z.float()
    centred = z - z.mean(0, keepdim=True)
    return centred.T @ centred / max(z.shape[0] - 1, 1)


def coral_loss(source: Tensor, target: Tensor) -> Tensor:
    """Deep CORAL (Sun & Saenko, ECCV-W 2016): ||C_s - C_t||_F^2 / (4 d^2), C the (d, d) feature
    covariances (ddof 1) of a source batch (n_s, d) and a target batch (n_t, d); differentiable in both.
    Half inputs are computed in float32. A batch of one row has covariance 0."""
    for name, z in (("source", source), ("target", target)):
        if not isinstance(z, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() < 2 or z.shape[0] == 0 or z[0].numel() == 0:
            raise ValueError(f"{name} must be a non-empty batch of features (samples, features), got shape "
                             f"{tuple(z.shape)}")
    if source[0].numel() != target[0].numel():
        raise ValueError(f"source and target must have the same number of features, got {tuple(source.shape)} and "
                         f"{tuple(target.shape)}")
    d = source[0].numel()
    diff = _covariance(source) - _covariance(target)
    return (diff * diff).sum() / (4.0 * d * d)


class CORALLoss(nn.Module):
    """nn.Module twin of :func:`coral_loss`: ``CORALLoss()(source_features, target_features)``."""

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        return coral_loss(source, target)
