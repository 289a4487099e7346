"""Bandwidths of the multi-bandwidth RBF kernel: the median heuristic, the default ladder, and the
conversion of what users pass as ``sigmas`` / ``weights`` into the 1-D tensors the ops take.

Kernel: k(a, b) = sum_k w_k exp(-||a - b||^2 / (2 sigma_k^2)); weights default to 1/K. The values are
checked by the ops themselves, in C++ (positive, finite bandwidths; non-negative, finite weights);
here they are only converted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import Tensor


__all__ = [
    "LADDER_EXPONENTS",
    "MEDIAN_GRAM_BUDGET",
    "MEDIAN_MAX_POINTS",
    "MEDIAN_MIN_POINTS",
    "SigmasLike",
    "WeightsLike",
    "as_bandwidth_vector",
    "bandwidth_ladder",
    "median_heuristic",
    "median_points",
    "param_dtype",
    "resolve_bandwidths",
]

SigmasLike = Union[None, float, Sequence[float], Tensor]
WeightsLike = Union[None, Sequence[float], Tensor]

LADDER_EXPONENTS = (-2, -1, 0, 1, 2)  # default ladder: sigma^2 = sigma_0^2 * 2^j
MEDIAN_MAX_POINTS = 1024  # the median heuristic looks at most at this many pooled points...
MEDIAN_MIN_POINTS = 64  # ...and at least at this many (or all of them), however wide the features
MEDIAN_GRAM_BUDGET = 1 << 21  # ...between the two, at most p points with p^2 * d <= this (multiply-adds)


def param_dtype(x: Tensor) -> torch.dtype:
    """Bandwidths and weights are kept in x's dtype for float32/float64 inputs, else in float32."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def as_bandwidth_vector(value: Any, name: str, like: Tensor) -> Tensor:
    """``sigmas`` or ``weights`` as a tensor on like's device: a number or a sequence of numbers
    becomes a 1-D tensor of param_dtype(like); a tensor is moved, a 0-dim one made 1-D. Its dtype,
    shape and values are the op's to check."""
    if isinstance(value, Tensor):
        return (value.reshape(1) if value.dim() == 0 else value).to(like.device)
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, a sequence of numbers or a tensor, got a bool")
    if isinstance(value, (int, float)):
        value = [value]
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, a sequence of numbers or a 1-D tensor, got {value!r}") from None
    return torch.tensor(values, dtype=param_dtype(like), device=like.device)


def median_points(pooled: int, features: int) -> int:
    """How many pooled points the median heuristic looks at: all of them up to MEDIAN_MIN_POINTS; above,
    as many as a Gram of MEDIAN_GRAM_BUDGET multiply-adds allows, between MEDIAN_MIN_POINTS and
    MEDIAN_MAX_POINTS. With 64+ points the median of the 2,000+ pair distances is within a few percent
    of the full sample's (benchmarks/median_accuracy.py), far inside the ladder's sqrt(2) rungs."""
    budget = math.isqrt(MEDIAN_GRAM_BUDGET // max(features, 1))
    return min(pooled, max(MEDIAN_MIN_POINTS, min(MEDIAN_MAX_POINTS, budget)))


def median_heuristic(x: Tensor, y: Tensor) -> Tensor:
    """sigma_0 = sqrt(median off-diagonal squared distance of the pooled sample / 2), detached.

    Above MEDIAN_MIN_POINTS pooled points it looks at a fixed subsample whose size
    (median_points) keeps its Gram at MEDIAN_GRAM_BUDGET multiply-adds: O(1) time and memory in n,
    deterministic, no host synchronisation on a GPU. Pairs with NaN are ignored; if the median is 0
    (mostly duplicated points) the median of the non-zero distances is used, and 1.0 when there is
    none. Returns a 0-dim tensor (float32 for half inputs, else x's dtype). The op
    (csrc/median_heuristic.cpp) does the computing and checks x and y.
    """
    for name, value in (("x", x), ("y", y)):  # the op's schema would reject it too, without the name
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    points = median_points(x.shape[0] + y.shape[0], x.shape[-1]) if x.dim() == 2 and y.dim() == 2 else 2
    return torch.ops.pytl.median_heuristic.default(x.detach(), y.detach(), points)  # checks x and y


def bandwidth_ladder(sigma0: Tensor, exponents: Sequence[int] = LADDER_EXPONENTS) -> Tensor:
    """sigma_j = sigma_0 * 2^(j/2), i.e. sigma_j^2 = sigma_0^2 * 2^j (gamma ratio 2 between rungs)."""
    # Python-scalar products, not a factor tensor built from a list: on a GPU that is a blocking
    # host-to-device copy (a sync per call, illegal in CUDA-graph capture). Same values: the scalar is
    # rounded to sigma0's dtype either way.
    return torch.stack([sigma0 * (2.0 ** (j / 2.0)) for j in exponents])


def resolve_bandwidths(x: Tensor, y: Tensor, sigmas: SigmasLike, weights: WeightsLike,
                       caller: str | None = None) -> tuple[Tensor, Tensor]:
    """(sigmas, weights) as tensors on x's device; sigmas=None is the median ladder of (x, y),
    weights=None is 1/K each. Converted, not checked: the op that takes them checks them. ``caller``: the
    function the user called ("pytl.mmd2"), named in the median op's errors about x and y instead of it."""
    sig = bandwidth_ladder(_median(x, y, caller)) if sigmas is None else as_bandwidth_vector(sigmas, "sigmas", x)
    if weights is None:
        return sig, default_weights(sig.numel(), param_dtype(x), x.device)
    return sig, as_bandwidth_vector(weights, "weights", x)


def _median(x: Tensor, y: Tensor, caller: str | None) -> Tensor:
    try:
        return median_heuristic(x, y)
    except (ValueError, TypeError) as e:
        prefix = "pytl.median_heuristic: "
        if caller is None or not str(e).startswith(prefix):
            raise
        raise type(e)(f"{caller}: {str(e)[len(prefix):]}") from None


def default_weights(k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1/K for each of K bandwidths. K = 0 (sigmas=[]) is the op's to reject; the weights only need to exist."""
    return torch.full((k,), 1.0 / max(k, 1), dtype=dtype, device=device)
