"""``LayerwiseLR``: learning rates that shrink geometrically from the head down."""

from __future__ import annotations

from pytl.freezing.block import Block
from pytl.freezing.policy import FreezingPolicy

__all__ = ["LayerwiseLR"]


class LayerwiseLR(FreezingPolicy):
    """Per-depth learning rates: the head gets lr, each block below ``decay`` times the one above."""

    order = 3

    def __init__(self, decay: float) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(f"decay must be a number in (0, 1], got {decay!r}")
        self.decay = float(decay)

    def lr_scale(self, block_index: int, num_blocks: int, block: Block) -> float:
        return self.decay ** (num_blocks - 1 - block_index)

    def __repr__(self) -> str:
        return f"LayerwiseLR(decay={self.decay:g})"
