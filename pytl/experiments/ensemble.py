"""The "ensemble" strategy's model: the mean class probabilities of its members."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EnsembleModel"]


class EnsembleModel(nn.Module):
    """Averages the class probabilities of its members, each softmax(logits / temperature) (default 1: as
    they are); returns log(mean probability) as logits."""

    def __init__(self, members: Sequence[nn.Module], temperatures: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member")
        temperatures = [1.0] * len(members) if temperatures is None else [float(t) for t in temperatures]
        if len(temperatures) != len(members) or not all(t > 0 for t in temperatures):
            raise ValueError(f"temperatures must be one positive number per member ({len(members)}), got {temperatures}")
        self.members = nn.ModuleList(members)
        self.temperatures = tuple(temperatures)

    def forward(self, x: Tensor) -> Tensor:
        probs = torch.stack([F.softmax(m(x) / t, dim=1) for m, t in zip(self.members, self.temperatures)]).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
