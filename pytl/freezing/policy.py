"""The policy protocol the trainer drives (``FreezingPolicy``) and ``Compose``, what ``a + b`` builds."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pytl.freezing.block import Block
from pytl.freezing.optim import summary

__all__ = ["Compose", "FreezingPolicy"]


class FreezingPolicy:
    """Base class. Subclasses override what they need; ``a + b`` combines policies."""

    #: application order inside Compose: freezers, then unfreezing schedules, then everything else
    order: int = 0

    def apply(self, model: nn.Module) -> None:
        """Called once at the start of a training stage."""

    def on_epoch_start(self, model: nn.Module, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
        """Called before each epoch (0-based); returns the names of blocks it unfroze."""
        return []

    def lr_scale(self, block_index: int, num_blocks: int, block: Block) -> float:
        """Multiplier of the base learning rate for a block."""
        return 1.0

    def penalty(self, model: nn.Module) -> Tensor | None:
        """A regularisation term added to the loss, or None."""
        return None

    def release(self, model: nn.Module) -> None:
        """Remove anything installed on the model (hooks) at the end of a stage."""

    def policies(self) -> list[FreezingPolicy]:
        return [self]

    def __add__(self, other: FreezingPolicy) -> Compose:
        if not isinstance(other, FreezingPolicy):
            return NotImplemented
        return Compose(self.policies() + other.policies())

    def summary(self, model: nn.Module) -> str:
        """What the policy does and, per block, what it would leave trainable (the model is not touched)."""
        probe = copy.deepcopy(model)
        self.apply(probe)
        self.release(probe)
        return f"policy: {self}\n{summary(probe, policy=self)}"


class Compose(FreezingPolicy):
    """Several policies applied together (freezers first, then schedules, then the rest)."""

    def __init__(self, policies: Sequence[FreezingPolicy]) -> None:
        flat: list[FreezingPolicy] = []
        for p in policies:
            if not isinstance(p, FreezingPolicy):
                raise TypeError(f"Compose takes FreezingPolicy objects, got {type(p).__name__}")
            flat += p.policies()
        self._policies = sorted(flat, key=lambda p: p.order)

    def policies(self) -> list[FreezingPolicy]:
        return list(self._policies)

    def apply(self, model: nn.Module) -> None:
        for p in self._policies:
            p.apply(model)

    def on_epoch_start(self, model: nn.Module, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
        out: list[str] = []
        for p in self._policies:
            out += p.on_epoch_start(model, epoch, optimizer)
        return out

    def lr_scale(self, block_index: int, num_blocks: int, block: Block) -> float:
        s = 1.0
        for p in self._policies:
            s *= p.lr_scale(block_index, num_blocks, block)
        return s

    def penalty(self, model: nn.Module) -> Tensor | None:
        terms = [t for t in (p.penalty(model) for p in self._policies) if t is not None]
        return None if not terms else torch.stack([t.reshape(()) for t in terms]).sum()

    def release(self, model: nn.Module) -> None:
        for p in self._policies:
            p.release(model)

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self._policies) or "Compose([])"
