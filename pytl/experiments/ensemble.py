"""The "ensemble" strategy's model: the mean class probabilities of its members."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EnsembleModel"]


class EnsembleModel(nn.Module):
    """Averages the class probabilities of its members, each softmax(logits / temperature) (default 1: as
    they are), with ``weights`` (default: equal; they must sum to 1); returns log(mean probability) as logits."""

    def __init__(self, members: Sequence[nn.Module], temperatures: Sequence[float] | None = None,
                 weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member")
        temperatures = [1.0] * len(members) if temperatures is None else [float(t) for t in temperatures]
        if len(temperatures) != len(members) or not all(t > 0 for t in temperatures):
            raise ValueError(f"temperatures must be one positive number per member ({len(members)}), got {temperatures}")
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(members) or not all(w >= 0 for w in weights) or abs(sum(weights) - 1) > 1e-6:
                raise ValueError(f"weights must be one number >= 0 per member ({len(members)}) summing to 1, got "
                                 f"{weights}")
        self.members = nn.ModuleList(members)
        self.temperatures = tuple(temperatures)
        self.weights = None if weights is None else tuple(weights)

    def forward(self, x: Tensor) -> Tensor:
        probs = torch.stack([F.softmax(m(x) / t, dim=1) for m, t in zip(self.members, self.temperatures)])
        if self.weights is None:
            probs = probs.mean(0)  # the "ensemble" strategy's equal mean, as it always was
        else:
            probs = torch.einsum("m,mnc->nc", probs.new_tensor(self.weights), probs)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
