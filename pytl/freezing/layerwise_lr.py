"""``LayerwiseLR``: learning rates that shrink geometrically from the head down."""

from __future__ import annotations

from pytl._checks import check_float
from pytl.freezing.block import Block
from pytl.freezing.policy import FreezingPolicy

__all__ = ["LayerwiseLR"]


class LayerwiseLR(FreezingPolicy):
    """Per-depth learning rates: the head gets lr, each block below ``decay`` times the one above."""

    order = 3

    def __init__(self, decay: float) -> None:
        self.decay = check_float(decay, "decay", 0.0, 1.0, strict_min=True)

    def lr_scale(self, block_index: int, num_blocks: int, block: Block) -> float:
        return self.decay ** (num_blocks - 1 - block_index)

    def __repr__(self) -> str:
        return f"LayerwiseLR(decay={self.decay:g})"
