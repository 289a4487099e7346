"""``L2SP``: a penalty that keeps fine-tuned weights near the pretrained ones (Li et al. 2018)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pytl._checks import check_float
from pytl.freezing.policy import FreezingPolicy

__all__ = ["L2SP"]


def _check_globs(new: Any) -> tuple[str, ...]:
    """``new`` as a tuple of glob strings (one string is one glob)."""
    if isinstance(new, str):
        return (new,)
    try:
        globs = tuple(new)
    except TypeError:  # not iterable
        globs = None
    if globs is None or not all(isinstance(g, str) for g in globs):
        raise TypeError(f"new must be a glob string or a sequence of them (names of the new parameters), got {new!r}")
    return globs


class L2SP(FreezingPolicy):
    """L2-SP: α·‖w − w₀‖² over transferred parameters + β·‖w‖² over new ones (trainable ones only).

    w₀ is snapshotted when the policy is applied (the start of fine-tuning), so fine-tuning cannot
    drift far from the pretrained solution. Parameters whose names match ``new`` (globs, default the
    head) are "new"; all others are "transferred". Pass ``new=()`` when the head was trained on the
    source with the same classes and should be pulled back too.
    """

    order = 3

    def __init__(self, alpha: float = 0.01, beta: float = 0.0, new: Sequence[str] = ("head", "head.*")) -> None:
        self.alpha = check_float(alpha, "alpha", 0.0)
        self.beta = check_float(beta, "beta", 0.0)
        self.new = _check_globs(new)
        self._w0: dict[str, Tensor] | None = None

    def is_new(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pat) for pat in self.new)

    def apply(self, model: nn.Module) -> None:
        self._w0 = {n: p.detach().clone() for n, p in model.named_parameters() if not self.is_new(n)}

    def penalty(self, model: nn.Module) -> Tensor | None:
        if self._w0 is None:
            raise RuntimeError("L2SP.penalty called before apply(model): no starting weights w0")
        sp, new = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name in self._w0:
                sp.append((p - self._w0[name].to(p.device)).pow(2).sum())
            elif self.is_new(name):
                new.append(p.pow(2).sum())
            else:
                raise RuntimeError(f"L2SP: parameter {name!r} has no starting weight; re-apply the policy")
        zero = next(model.parameters()).new_zeros(())
        total = zero
        if sp and self.alpha > 0:
            total = total + self.alpha * torch.stack(sp).sum()
        if new and self.beta > 0:
            total = total + self.beta * torch.stack(new).sum()
        return total

    def __repr__(self) -> str:
        return f"L2SP(alpha={self.alpha:g}, beta={self.beta:g}, new={list(self.new)})"
