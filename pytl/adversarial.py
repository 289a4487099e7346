"""Adversarial domain alignment (DANN, Ganin et al., JMLR 2016): the gradient reversal layer and the domain
discriminator.

The discriminator learns to tell source embeddings from target embeddings; the gradient reversal layer
between it and the encoder passes its gradient back negated and scaled by λ, so the encoder learns
embeddings that the discriminator cannot tell apart. Minimising CE + BCE(D(GRL_λ(z))) trains both at
once: the discriminator descends the BCE, the encoder ascends λ·BCE.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pytl._checks import check_float, check_int

__all__ = ["DomainDiscriminator", "GradientReversal", "domain_adversarial_loss", "grad_reverse"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def grad_reverse(z: Tensor, scale: float = 1.0) -> Tensor:
    """Identity forward; the backward multiplies the gradient by -scale."""
    return _GradReverse.apply(z, float(scale))


class GradientReversal(nn.Module):
    """nn.Module twin of :func:`grad_reverse` with a settable ``scale``."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = check_float(scale, "scale", 0.0)

    def forward(self, z: Tensor) -> Tensor:
        return grad_reverse(z, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


class DomainDiscriminator(nn.Module):
    """A small MLP from an embedding (features,) to one logit: source (1) or target (0).

    One hidden layer of ``hidden`` ReLU units with dropout, as DANN's domain classifier on its small
    problems (Ganin et al. 2016, section 5.1). Capacity and dropout matter: with a second hidden layer, or
    without dropout, the discriminator separates the domains within a few epochs, its loss saturates and
    the reversed gradient vanishes (measured on the tutorial problem: domain BCE 1e-5 instead of about
    ln 2). No BatchNorm, whose statistics would differ between the domains."""

    def __init__(self, features: int, hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        features = check_int(features, "features", 1)
        hidden = check_int(hidden, "hidden", 1)
        dropout = check_float(dropout, "dropout", 0.0, 1.0, strict_max=True)
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.flatten(1)).squeeze(1)


def domain_adversarial_loss(discriminator: nn.Module, source: Tensor, target: Tensor, scale: float = 1.0,
                            source_weights: Tensor | None = None) -> Tensor:
    """DANN's domain loss: the binary cross-entropy of ``discriminator`` telling source (label 1) from target
    (label 0) embeddings, each domain weighing half (unequal batch sizes do not tilt it), seen through a
    gradient reversal layer of ``scale`` (the encoder's gradient is -scale times the BCE's). About ln 2 =
    0.693 when the discriminator cannot tell the domains apart. source_weights (n_s,): optional
    non-negative weights of the source rows (label-shift correction)."""
    z = grad_reverse(torch.cat([source, target]), scale)
    logits = discriminator(z)
    ns = source.shape[0]
    src = F.binary_cross_entropy_with_logits(logits[:ns], torch.ones_like(logits[:ns]), reduction="none")
    tgt = F.binary_cross_entropy_with_logits(logits[ns:], torch.zeros_like(logits[ns:]))
    if source_weights is None:
        src_mean = src.mean()
    else:
        w = source_weights.to(src.dtype)
        src_mean = (w * src).sum() / w.sum().clamp_min(torch.finfo(src.dtype).tiny)
    return 0.5 * (src_mean + tgt)
