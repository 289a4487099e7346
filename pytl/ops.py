"""Typed wrappers over the compiled ops (torch.ops.pytl.*): they convert arguments and call the op.

The ops check their arguments themselves, once, in C++ (csrc/common/checks.h), and raise ValueError
or TypeError with a message that names the argument; on CUDA the values of sigmas and weights are
checked on the GPU instead, without waiting for it (a bad one is a device-side assertion that names
the argument; checks.h, "Value checks on CUDA"). The wrappers only check what C++ cannot see: an
argument that is not a tensor at all, a ``sigmas`` that cannot become one, the ``estimator`` name.
(With ``sigmas=None`` the median heuristic computes on x and y before the op does, so it checks them
first, in the op's words.)

Kernel: k(a, b) = sum_k w_k exp(-||a - b||^2 / (2 sigma_k^2)); weights default to 1/K.
The fused op returns the K per-bandwidth statistics T_k; mmd2 = sum_k w_k T_k, so gradients flow
to x, y, sigmas (a tensor that requires grad) and weights.

Also importable from here, for code written against the earlier single-module layout: the bandwidth
helpers (pytl.bandwidths), MMDLoss (pytl.losses), and mmd2_reference (deprecated: pytl.testing).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from pytl import distributed as _dist
from pytl._loader import load_ops
from pytl._checks import check_choice
from pytl.bandwidths import (  # noqa: F401  (re-exported: the bandwidth helpers lived here)
    LADDER_EXPONENTS,
    MEDIAN_MAX_POINTS,
    SigmasLike,
    WeightsLike,
    as_bandwidth_vector,
    bandwidth_ladder,
    default_weights,
    median_heuristic,
    resolve_bandwidths,
)

load_ops()

__all__ = [
    "ESTIMATORS",
    "LADDER_EXPONENTS",
    "MEDIAN_MAX_POINTS",
    "MMDLoss",
    "SigmasLike",
    "WeightsLike",
    "bandwidth_ladder",
    "median_heuristic",
    "mmd2",
    "mmd2_terms",
    "rbf_kernel_matmul",
    "resolve_bandwidths",
]

ESTIMATORS = ("biased", "unbiased")


def is_unbiased(estimator: str) -> bool:
    """The op's ``unbiased`` flag for an estimator name ("biased" or "unbiased")."""
    return check_choice(estimator, "estimator", ESTIMATORS) == "unbiased"


def _require_tensor(value: Any, name: str) -> None:
    # The op's schema would reject it too, but with a RuntimeError that does not name the argument.
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def mmd2_terms(x: Tensor, y: Tensor, sigmas: Tensor, unbiased: bool = False) -> Tensor:
    """The raw fused op: per-bandwidth statistics T (shape (K,), dtype of x)."""
    return torch.ops.pytl.mmd2_terms.default(x, y, sigmas, unbiased)


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
    unbiased = is_unbiased(estimator)
    _require_tensor(x, "x")
    _require_tensor(y, "y")
    if group is not None:
        x, y = _dist.gather_samples(x, y, group, min_rows=2 if unbiased else 1)
    sig, w = resolve_bandwidths(x, y, sigmas, weights)
    return torch.ops.pytl.mmd2.default(x, y, sig, w, unbiased)


def rbf_kernel_matmul(z: Tensor, s: Tensor, sigmas: SigmasLike, weights: WeightsLike = None) -> Tensor:
    """K(z, z) @ s without the N x N kernel matrix, K(a, b) = sum_k w_k exp(-||a - b||^2 / (2 sigma_k^2)).

    z: (N, d) float tensor; s: (N, P) with z's dtype and device; sigmas: a float, sequence or 1-D tensor
    of K <= 16 positive bandwidths; weights: K non-negative weights (default 1/K). The diagonal is
    included (K(z_i, z_i) = sum_k w_k). Returns (N, P) in z's dtype (half/bfloat16 computed in float32).
    Deterministic (bitwise, for any thread count). Not differentiable.
    """
    _require_tensor(z, "z")
    _require_tensor(s, "s")
    if sigmas is None:
        raise ValueError("sigmas is required (for example pytl.bandwidth_ladder(pytl.median_heuristic(x, y)))")
    sig = as_bandwidth_vector(sigmas, "sigmas", z)
    w = default_weights(sig.numel(), sig.dtype, z.device) if weights is None else as_bandwidth_vector(weights, "weights", z)
    return torch.ops.pytl.rbf_kernel_matmul.default(z, s, sig, w)


def __getattr__(name: str) -> Any:
    # Names that moved out of this module, resolved on first use: pytl.losses and pytl.testing sit
    # above the op layer and import it, so they cannot be imported from here up front.
    if name == "MMDLoss":
        from pytl.losses import MMDLoss

        return MMDLoss
    if name == "mmd2_reference":
        warnings.warn("pytl.ops.mmd2_reference moved to pytl.testing.mmd2_reference (a test oracle, not an op)",
                      DeprecationWarning, stacklevel=2)
        from pytl.testing import mmd2_reference

        return mmd2_reference
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
