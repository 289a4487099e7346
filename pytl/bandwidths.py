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

from pytl._samples import check_pair

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
MEDIAN_MIN_POINTS = 128  # ...and at least at this many (or all of them), however wide the features
MEDIAN_GRAM_BUDGET = 1 << 22  # ...between the two, at most p points with p^2 * d <= this (multiply-adds)


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
    MEDIAN_MAX_POINTS. With 128+ points the median of the ~8,000+ pair distances is within a few percent
    of the full sample's (benchmarks/RESULTS.md, issue 15), far inside the ladder's factor-of-2 rungs."""
    budget = math.isqrt(MEDIAN_GRAM_BUDGET // max(features, 1))
    return min(pooled, max(MEDIAN_MIN_POINTS, min(MEDIAN_MAX_POINTS, budget)))


def _spread_rows(s: Tensor, count: int) -> Tensor:
    """count well-spread rows of s: i * P mod n for a prime P > n (distinct indices). Deterministic
    without a random generator, computed on s's device with no host round trip (CUDA graphs, compile)."""
    n = s.shape[0]
    if count >= n:
        return s
    prime = 2_147_483_647  # 2^31 - 1, prime and larger than any realistic row count
    idx = (torch.arange(count, device=s.device, dtype=torch.int64) * (prime % n)) % n
    return s.index_select(0, idx)


def _median_sample(x: Tensor, y: Tensor) -> Tensor:
    """The pooled points the median looks at: all of (x, y), or x's and y's shares of median_points."""
    n, m = x.shape[0], y.shape[0]
    p = median_points(n + m, x.shape[1])
    if p >= n + m:
        return torch.cat([x, y])
    px = min(n, max(1, round(p * n / (n + m))))  # each side in proportion, at least one row of each
    px = min(px, p - 1)
    return torch.cat([_spread_rows(x, px), _spread_rows(y, p - px)])


def _lower_medians(values: Tensor) -> tuple[Tensor, Tensor]:
    """torch's (lower) nanmedian of values and of its positive values, from one sort and no host sync.
    Either is NaN when there is no such value."""
    ordered = torch.sort(values).values  # NaN sort last
    valid = (~torch.isnan(values)).sum()
    zeros = (values <= 0).sum()
    nan = torch.full((1,), math.nan, dtype=values.dtype, device=values.device)
    padded = torch.cat([ordered, nan])  # index len(values): "no such value"
    none = torch.full_like(valid, values.numel())
    all_idx = torch.where(valid > 0, (valid - 1) // 2, none)
    pos_idx = torch.where(valid > zeros, zeros + (valid - zeros - 1) // 2, none)
    # index_select, not padded[idx]: a 0-dim index tensor would be read to the host as a Python int
    picked = padded.index_select(0, torch.stack([all_idx, pos_idx]))
    return picked[0], picked[1]


def median_heuristic(x: Tensor, y: Tensor) -> Tensor:
    """sigma_0 = sqrt(median off-diagonal squared distance of the pooled sample / 2), detached.

    Above MEDIAN_MIN_POINTS pooled points it looks at a fixed subsample whose size
    (median_points) keeps its Gram at MEDIAN_GRAM_BUDGET multiply-adds: O(1) time and memory in n,
    deterministic, no host synchronisation. Pairs with NaN are ignored; if the median is 0 (mostly
    duplicated points) the median of the non-zero distances is used, and 1.0 when there is none.
    Returns a 0-dim tensor (float32 for half inputs, else x's dtype).
    """
    check_pair(x, y)  # computed here in torch, before any op sees the samples
    with torch.no_grad():
        z = _median_sample(x.detach(), y.detach()).to(torch.float64)
        z = z - z.nanmean(0, keepdim=True)  # centring keeps ||a||^2 + ||b||^2 - 2ab accurate far from 0
        sq = (z * z).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)).clamp_min(0.0)
        iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
        med_all, med_pos = _lower_medians(d2[iu[0], iu[1]])
        med = torch.where(med_all > 0, med_all, med_pos)
        med = torch.where(torch.isfinite(med) & (med > 0), med, torch.full_like(med, 2.0))  # sigma 1.0
        return torch.sqrt(med / 2.0).to(param_dtype(x))


def bandwidth_ladder(sigma0: Tensor, exponents: Sequence[int] = LADDER_EXPONENTS) -> Tensor:
    """sigma_j = sigma_0 * 2^(j/2), i.e. sigma_j^2 = sigma_0^2 * 2^j (gamma ratio 2 between rungs)."""
    # Python-scalar products, not a factor tensor built from a list: on a GPU that is a blocking
    # host-to-device copy (a sync per call, illegal in CUDA-graph capture). Same values: the scalar is
    # rounded to sigma0's dtype either way.
    return torch.stack([sigma0 * (2.0 ** (j / 2.0)) for j in exponents])


def resolve_bandwidths(x: Tensor, y: Tensor, sigmas: SigmasLike, weights: WeightsLike) -> tuple[Tensor, Tensor]:
    """(sigmas, weights) as tensors on x's device; sigmas=None is the median ladder of (x, y),
    weights=None is 1/K each. Converted, not checked: the op that takes them checks them."""
    sig = bandwidth_ladder(median_heuristic(x, y)) if sigmas is None else as_bandwidth_vector(sigmas, "sigmas", x)
    if weights is None:
        return sig, default_weights(sig.numel(), param_dtype(x), x.device)
    return sig, as_bandwidth_vector(weights, "weights", x)


def default_weights(k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1/K for each of K bandwidths. K = 0 (sigmas=[]) is the op's to reject; the weights only need to exist."""
    return torch.full((k,), 1.0 / max(k, 1), dtype=dtype, device=device)
