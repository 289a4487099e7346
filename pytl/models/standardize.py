"""``Standardize``: (x − mean) / std per input feature, with fixed statistics."""

from __future__ import annotations

import torch
from torch import Tensor, nn

class Standardize(nn.Module):
    """(x − mean) / std per input feature, with fixed statistics (buffers, not parameters).

    Raw features far from the origin or on very different scales slow an MLP down badly; the default
    model therefore standardises with statistics of the pooled training inputs (both domains, one
    transform, so the shift between domains is kept for MMD to remove)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.shape != std.shape:
            raise ValueError(f"mean and std must have the same shape, got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool(torch.isfinite(mean).all()) or not bool(torch.isfinite(std).all()):
            raise ValueError("mean and std must be finite")
        std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features are left as they are
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    @classmethod
    def fit(cls, *samples: Tensor) -> Standardize:
        """Statistics of the pooled samples (each (N, ...), flattened per sample)."""
        x = torch.cat([s.detach().reshape(s.shape[0], -1).double() for s in samples])
        return cls(x.mean(0), x.std(0, unbiased=False))

    @classmethod
    def fit_channels(cls, *samples: Tensor) -> Standardize:
        """Per-channel statistics of pooled images (each (N, C, H, W)): C features, for ``ConvEncoder``."""
        for s in samples:
            if not isinstance(s, Tensor) or s.dim() != 4:
                shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise ValueError(f"fit_channels takes image tensors (N, C, H, W), got {shape}")
        x = torch.cat([s.detach().double().transpose(0, 1).reshape(s.shape[1], -1) for s in samples], dim=1)
        return cls(x.mean(1), x.std(1, unbiased=False))

    def forward(self, x: Tensor) -> Tensor:
        return (x.flatten(1) - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"features={self.mean.numel()}"
