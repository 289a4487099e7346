"""Typed wrappers over torch.ops.pytl.*: argument checks, bandwidths, mmd2 and MMDLoss.

Kernel: k(a, b) = sum_k w_k exp(-||a - b||^2 / (2 sigma_k^2)); weights default to 1/K.
The fused op returns the K per-bandwidth statistics T_k; mmd2 = sum_k w_k T_k, so gradients flow
to x, y, sigmas (a tensor that requires grad) and weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

from pytl import distributed as _dist
from pytl._loader import load_ops

load_ops()

SigmasLike = Union[None, float, Sequence[float], Tensor]
WeightsLike = Union[None, Sequence[float], Tensor]

ESTIMATORS = ("biased", "unbiased")
LADDER_EXPONENTS = (-2, -1, 0, 1, 2)  # default ladder: sigma^2 = sigma_0^2 * 2^j
MEDIAN_MAX_POINTS = 1024  # the median heuristic looks at most at this many pooled points


def mmd2_terms(x: Tensor, y: Tensor, sigmas: Tensor, unbiased: bool = False) -> Tensor:
    """The raw fused op: per-bandwidth statistics T (shape (K,), dtype of x). No Python checks."""
    return torch.ops.pytl.mmd2_terms.default(x, y, sigmas, unbiased)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _check_matrix(name: str, t: Tensor, layout: str = "(samples, features)") -> None:
    """The argument checks every matrix input shares: a floating-point 2-D torch.Tensor."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor {layout}, got shape {tuple(t.shape)}")


def _check_samples(x: Tensor, y: Tensor, estimator: str) -> None:
    for name, t in (("x", x), ("y", y)):
        _check_matrix(name, t)
        if t.shape[0] == 0:
            raise ValueError(f"{name} is empty: it needs at least one sample (row)")
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must have the same dtype, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of features, got x: {tuple(x.shape)}, y: {tuple(y.shape)}")
    if x.shape[1] == 0:
        raise ValueError("x and y must have at least one feature column")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "unbiased" and (x.shape[0] < 2 or y.shape[0] < 2):
        raise ValueError(
            f"the unbiased estimator needs at least 2 samples in x and in y, got {x.shape[0]} and {y.shape[0]}"
        )


def _param_dtype(x: Tensor) -> torch.dtype:
    """Bandwidths and weights are kept in float32 for half inputs, else in x's dtype."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _as_vector(value, name: str, x: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        if not value.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        if value.dim() > 1:
            raise ValueError(f"{name} must be a scalar or a 1-D tensor, got shape {tuple(value.shape)}")
        return value.reshape(-1).to(x.device)
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, a sequence of numbers or a tensor, got a bool")
    if isinstance(value, (int, float)):
        value = [value]
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, a sequence of numbers or a 1-D tensor, got {value!r}") from None
    return torch.tensor(values, dtype=_param_dtype(x), device=x.device)


def _check_sigmas(sigmas: Tensor) -> None:
    if sigmas.numel() == 0:
        raise ValueError("sigmas must hold at least one bandwidth")
    if not _compiling():
        s = sigmas.detach()
        if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
            raise ValueError(f"every bandwidth in sigmas must be positive and finite, got {s.cpu().tolist()}")


def _check_weights(weights: Tensor, num_bandwidths: int) -> None:
    if weights.numel() != num_bandwidths:
        raise ValueError(f"weights must have one entry per bandwidth ({num_bandwidths}), got {weights.numel()}")
    if not _compiling():
        w = weights.detach()
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"weights must be non-negative and finite, got {w.cpu().tolist()}")


def _subsample(z: Tensor, max_points: int) -> Tensor:
    """A fixed, well-spread subset of rows: i * P mod N for a prime P > N (so all indices differ).

    Deterministic without a random generator, so that it also traces under torch.compile."""
    n = z.shape[0]
    if n <= max_points:
        return z
    prime = 2_147_483_647  # 2^31 - 1, prime and larger than any realistic row count
    idx = (torch.arange(max_points, device=z.device, dtype=torch.int64) * (prime % n)) % n
    return z.index_select(0, idx)


def median_heuristic(x: Tensor, y: Tensor) -> Tensor:
    """sigma_0 = sqrt(median off-diagonal squared distance of the pooled sample / 2), detached.

    Above MEDIAN_MAX_POINTS pooled points a fixed subsample is used (O(n) memory, deterministic).
    Pairs with NaN are ignored; if the median is 0 (mostly duplicated points) the median of the
    non-zero distances is used, and 1.0 when there is none. Returns a 0-dim tensor (float32 for
    half inputs, else x's dtype).
    """
    _check_samples(x, y, "biased")
    with torch.no_grad():
        z = _subsample(torch.cat([x.detach(), y.detach()]), MEDIAN_MAX_POINTS).to(torch.float64)
        z = z - z.nanmean(0, keepdim=True)  # centring keeps ||a||^2 + ||b||^2 - 2ab accurate far from 0
        sq = (z * z).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)).clamp_min(0.0)
        iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
        pairs = d2[iu[0], iu[1]]
        if pairs.numel() == 0:  # a single pooled point
            med = torch.ones((), dtype=torch.float64, device=z.device) * 2.0
        else:
            med_all = torch.nanmedian(pairs)
            med_pos = torch.nanmedian(torch.where(pairs > 0, pairs, torch.full_like(pairs, math.nan)))
            med = torch.where(med_all > 0, med_all, med_pos)
            med = torch.where(torch.isfinite(med) & (med > 0), med, torch.full_like(med, 2.0))
        return torch.sqrt(med / 2.0).to(_param_dtype(x))


def bandwidth_ladder(sigma0: Tensor, exponents: Sequence[int] = LADDER_EXPONENTS) -> Tensor:
    """sigma_j = sigma_0 * 2^(j/2), i.e. sigma_j^2 = sigma_0^2 * 2^j (gamma ratio 2 between rungs)."""
    factors = torch.tensor([2.0 ** (j / 2.0) for j in exponents], dtype=sigma0.dtype, device=sigma0.device)
    return sigma0 * factors


def resolve_bandwidths(x: Tensor, y: Tensor, sigmas: SigmasLike, weights: WeightsLike) -> tuple[Tensor, Tensor]:
    """Checked (sigmas, weights) as 1-D tensors on x's device; sigmas=None is the median ladder."""
    if sigmas is None:
        sig = bandwidth_ladder(median_heuristic(x, y))
    else:
        sig = _as_vector(sigmas, "sigmas", x)
        _check_sigmas(sig)
    if weights is None:
        w = torch.full((sig.numel(),), 1.0 / sig.numel(), dtype=_param_dtype(x), device=x.device)
    else:
        w = _as_vector(weights, "weights", x)
        _check_weights(w, sig.numel())
    return sig, w


def mmd2(
    x: Tensor,
    y: Tensor,
    sigmas: SigmasLike = None,
    weights: WeightsLike = None,
    *,
    estimator: str = "biased",
    group: Any = None,
) -> Tensor:
    """Squared MMD between samples x (n, d) and y (m, d) under a multi-bandwidth RBF kernel.

    sigmas: a float, a sequence or a 1-D tensor of K bandwidths sigma (kernel exp(-D/(2 sigma^2)));
    None means the median-heuristic ladder sigma_0^2 * 2^j, j = -2..2. weights: K non-negative
    weights (default 1/K). estimator: "biased" (V-statistic, >= 0) or "unbiased" (U-statistic,
    needs n, m >= 2; can be slightly negative when the distributions agree). Returns a 0-dim
    tensor of x's dtype. Fused kernels: no n x m matrix is built, forward or backward.

    group: a torch.distributed process group (``torch.distributed.group.WORLD`` for all ranks) when
    x and y are this rank's shards of a global batch: the statistic (median heuristic included) is
    that of the concatenated batch, the same on every rank, and the gradient to this rank's rows
    equals the single-process gradient (one all-gather per call; see pytl.distributed).
    """
    if group is not None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        _check_matrix("x", x)
        _check_matrix("y", y)
        x, y = _dist.gather_samples(x, y, group, min_rows=2 if estimator == "unbiased" else 1)
    _check_samples(x, y, estimator)
    sig, w = resolve_bandwidths(x, y, sigmas, weights)
    return torch.ops.pytl.mmd2.default(x, y, sig, w, estimator == "unbiased")


class MMDLoss(nn.Module):
    """nn.Module twin of :func:`mmd2`: ``MMDLoss(sigmas, weights, estimator)(x, y)``.

    Pass an nn.Parameter as sigmas or weights to learn them. ``distributed=True``: x and y are this
    rank's shards and the loss is the MMD² of the global batch, gathered over ``group`` (default:
    all ranks); it needs an initialised torch.distributed process group at call time."""

    def __init__(self, sigmas: SigmasLike = None, weights: WeightsLike = None, estimator: str = "biased", *,
                 distributed: bool = False, group: Any = None) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if not isinstance(distributed, bool):
            raise TypeError(f"distributed must be a bool, got {type(distributed).__name__}")
        if group is not None and not distributed:
            raise ValueError("group is only used with distributed=True")
        self.sigmas = sigmas
        self.weights = weights
        self.estimator = estimator
        self.distributed = distributed
        self.group = group

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        group = None
        if self.distributed:
            if not _dist.is_initialized():
                raise ValueError("MMDLoss(distributed=True) needs an initialised torch.distributed process group "
                                 "(run under torchrun and call torch.distributed.init_process_group, or "
                                 "pytl.distributed.init_from_env()); use distributed=False in a single process")
            group = self.group if self.group is not None else torch.distributed.group.WORLD
        return mmd2(x, y, self.sigmas, self.weights, estimator=self.estimator, group=group)

    def extra_repr(self) -> str:
        sig = "median heuristic ladder" if self.sigmas is None else self.sigmas
        dist = ", distributed=True" if self.distributed else ""
        return f"sigmas={sig}, estimator={self.estimator!r}{dist}"


def mmd2_reference(
    x: Tensor,
    y: Tensor,
    sigmas: SigmasLike = None,
    weights: WeightsLike = None,
    *,
    estimator: str = "biased",
) -> Tensor:
    """Plain-torch MMD^2 that materialises the n x n, m x m and n x m matrices, one exp pass per
    bandwidth: what most code does today. For tests and benchmark comparisons only."""
    _check_samples(x, y, estimator)
    sig, w = resolve_bandwidths(x, y, sigmas, weights)
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, y, sig, w = x.to(dtype), y.to(dtype), sig.to(dtype), w.to(dtype)
    unbiased = estimator == "unbiased"

    def sq_dists(a: Tensor, b: Tensor) -> Tensor:
        return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min(0.0)

    def block_mean(d2: Tensor, gamma: Tensor, self_block: bool) -> Tensor:
        e = torch.exp(-gamma * d2)
        if self_block and unbiased:
            k = e.shape[0]
            return (e.sum() - e.diagonal().sum()) / (k * (k - 1))
        return e.mean()

    dxx, dyy, dxy = sq_dists(x, x), sq_dists(y, y), sq_dists(x, y)
    total = x.new_zeros(())
    for k in range(sig.numel()):
        gamma = 1.0 / (2.0 * sig[k] ** 2)
        t = block_mean(dxx, gamma, True) + block_mean(dyy, gamma, True) - 2.0 * block_mean(dxy, gamma, False)
        total = total + w[k] * t
    return total
