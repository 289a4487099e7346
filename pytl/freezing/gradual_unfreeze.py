"""``GradualUnfreeze``: train the head first, then unfreeze the blocks below it on a schedule."""

from __future__ import annotations

import torch
from torch import nn

from pytl._checks import check_float, check_int, check_optional_int
from pytl.freezing.block import blocks
from pytl.freezing.freeze_functions import freeze
from pytl.freezing.policy import FreezingPolicy

__all__ = ["GradualUnfreeze"]


class GradualUnfreeze(FreezingPolicy):
    """Freeze everything below the head, then unfreeze on a schedule at ``lr_factor`` × the lr.

    ``start``: the epoch (0-based) at which unfreezing begins. ``every=None`` unfreezes all blocks at
    ``start`` ("freeze the backbone for the first few epochs, then unfreeze with a 10× smaller lr");
    ``every=n`` unfreezes one block every n epochs, top block first (ULMFiT-style). Blocks frozen by
    other policies (FreezeFirst, FreezeByName) stay frozen.
    """

    order = 1

    def __init__(self, start: int, every: int | None = None, lr_factor: float = 0.1) -> None:
        self.start = check_int(start, "start", minimum=0)
        self.every = check_optional_int(every, "every", minimum=1)
        self.lr_factor = check_float(lr_factor, "lr_factor", 0.0, strict_min=True)
        self._pending: list[str] = []  # block names to unfreeze, top first
        self._param_names: dict[str, list[str]] = {}
        self._num_frozen_blocks = 0

    def apply(self, model: nn.Module) -> None:
        self._pending = []
        frozen_here: set[str] = set()
        for b in reversed(blocks(model)[:-1]):
            trainable = [n for n, p in b.params.items() if p.requires_grad]
            if trainable:
                freeze(b.params[n] for n in trainable)
                frozen_here.update(trainable)
                self._pending.append(b.name)
        # only the parameters this policy froze come back (others may be frozen by FreezeFirst etc.)
        self._param_names = {b.name: [n for n, p in b.params.items() if n in frozen_here]
                             for b in blocks(model) if b.name in self._pending}
        self._num_frozen_blocks = len(self._pending)

    def on_epoch_start(self, model: nn.Module, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
        if epoch < self.start or not self._pending:
            return []
        due = len(self._pending) if self.every is None else 1 + (epoch - self.start) // self.every
        done = self._num_frozen_blocks - len(self._pending)
        todo = max(0, due - done)
        names, self._pending = self._pending[:todo], self._pending[todo:]
        params = dict(model.named_parameters())
        for name in names:
            for pname in self._param_names[name]:
                params[pname].requires_grad_(True)
            if optimizer is not None:
                for group in optimizer.param_groups:
                    if group.get("block") == name:
                        group["lr"] = group.get("base_lr", group["lr"]) * self.lr_factor
        return names

    def __repr__(self) -> str:
        return f"GradualUnfreeze(start={self.start}, every={self.every}, lr_factor={self.lr_factor:g})"
