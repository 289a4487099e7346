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

from typing import Any

import torch
from torch import Tensor

from pytl import block_mmd as _block
from pytl import distributed as _dist
from pytl import random_features as _rff
from pytl import ring_mmd as _ring
from pytl import sharded_estimates as _sharded
from pytl._loader import load_ops
from pytl._checks import check_choice, check_int, check_optional_int
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
    "EXCHANGES",
    "LADDER_EXPONENTS",
    "AUTO_EXACT_PAIRS",
    "METHODS",
    "MEDIAN_MAX_POINTS",
    "SigmasLike",
    "WeightsLike",
    "bandwidth_ladder",
    "class_conditional_mmd2",
    "median_heuristic",
    "mmd2",
    "mmd2_terms",
    "rbf_kernel_matmul",
    "resolve_bandwidths",
]

ESTIMATORS = ("biased", "unbiased")
#: how mmd2 computes: every pair ("exact"), random Fourier features ("rff"), or the B-test's blocks ("block");
#: "auto": exact up to AUTO_EXACT_PAIRS pairs, rff above
METHODS = ("exact", "rff", "block", "auto")
#: how mmd2(group=...) meets the other ranks' rows: all of them on every rank, or shard by shard around a ring
EXCHANGES = ("gather", "ring")
#: n·m up to which method="auto" computes every pair: 2^30 (32 768 per side) takes about 5 s at d = 64 on two CPU
#: cores and a few ms on a GPU; beyond, the exact cost grows as n·m and rff's as n + m (benchmarks/scalable_mmd.py)
AUTO_EXACT_PAIRS = 1 << 30


def resolve_method(method: str, n: int, m: int) -> str:
    """The method mmd2 runs: ``method`` as given, or for "auto" exact up to AUTO_EXACT_PAIRS pairs, else rff."""
    method = check_choice(method, "method", METHODS)
    if method != "auto":
        return method
    return "exact" if n * m <= AUTO_EXACT_PAIRS else "rff"


def method_options(method: str, num_features: int | None, block_size: int | None) -> tuple[int | None, int | None]:
    """(num_features, block_size) checked against the method that takes them: rff's features (default
    DEFAULT_FEATURES), block's rows per block (default None: about sqrt(n)); an option given to another method is
    refused by name. Shared by mmd2 and mmd_test."""
    for name, value, owner in (("num_features", num_features, "rff"), ("block_size", block_size, "block")):
        if value is not None and method != owner:
            raise ValueError(f"{name}={value!r} is an option of method={owner!r}, not of method={method!r}")
    if method == "rff":
        return check_int(_rff.DEFAULT_FEATURES if num_features is None else num_features, "num_features", 1), None
    return None, check_optional_int(block_size, "block_size", 2)


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
    x_weights: Any = None,
    y_weights: Any = None,
    estimator: str = "biased",
    group: Any = None,
    method: str = "exact",
    num_features: int | None = None,
    block_size: int | None = None,
    seed: int | None = 0,
    exchange: str = "gather",
) -> Tensor:
    """Squared MMD between samples x (n, d) and y (m, d) under a multi-bandwidth RBF kernel.

    sigmas: a float, a sequence or a 1-D tensor of K bandwidths sigma (kernel exp(-D/(2 sigma^2)));
    None means the median-heuristic ladder sigma_0^2 * 2^j, j = -2..2. weights: K non-negative
    weights (default 1/K). estimator: "biased" (V-statistic, >= 0) or "unbiased" (U-statistic,
    needs n, m >= 2; can be slightly negative when the distributions agree). Returns a 0-dim
    tensor of x's dtype. Fused kernels: no n x m matrix is built, forward or backward.

    method: "exact" (every pair, the default); "auto": exact up to 2^30 pairs (32 768 rows per side), rff
    beyond; "rff": random Fourier features, ``num_features`` per bandwidth
    (default 256) drawn with ``seed``, one streamed pass, cost linear in n + m, an unbiased estimate of the
    exact statistic whose error shrinks as 1/sqrt(num_features) (pytl.random_features); "block": the B-test's
    mean of per-block statistics over a ``seed``-ed random split into blocks of ``block_size`` rows (default
    about sqrt(n)), cost (n + m)·block_size (pytl.block_mmd). Both are differentiable in x and y; neither takes
    sample weights or a sigmas that requires grad yet; with a group, one all-reduce of sums (pytl.sharded_estimates,
    the same seed on every rank: None is rank 0's, broadcast). ``seed=None`` draws the seed from torch's global
    generator (fresh features or blocks per call, reproducible under torch.manual_seed: what training wants).

    x_weights (n,), y_weights (m,): non-negative sample weights (a tensor, sequence or array; one side
    may be None, meaning uniform), normalised to sum 1 inside, differentiable: the MMD between the
    weighted empirical distributions, biased a'Kxx a + b'Kyy b - 2 a'Kxy b; "unbiased" drops the
    diagonal and divides the self terms by 1 - sum a_i^2 (the weighted U-statistic; uniform weights
    give the usual one). The median heuristic (sigmas=None) ignores the weights. Without weights the
    unweighted op runs, bit for bit as before.

    group: a torch.distributed process group (``torch.distributed.group.WORLD`` for all ranks) when
    x and y are this rank's shards of a global batch: the statistic (median heuristic included) is
    that of the concatenated batch, the same on every rank, and the gradient to this rank's rows
    equals the single-process gradient (one all-gather per call; see pytl.distributed). exchange (with a group and
    method="exact"): "gather" (the default: every rank gets every row and computes the whole statistic, right for
    training mini-batches) or "ring" (data sets: the shards travel around the ring and each rank computes about
    1/W of the pairs, memory O(shard), the same value and gradients; pytl.ring_mmd).
    """
    unbiased = is_unbiased(estimator)
    exchange = check_choice(exchange, "exchange", EXCHANGES)
    if exchange == "ring":
        if group is None or method != "exact" or x_weights is not None or y_weights is not None:
            raise ValueError("exchange='ring' computes the exact, unweighted statistic of sharded samples: it needs a "
                             f"group and method='exact' without sample weights (got group={group!r}, "
                             f"method={method!r}, weights {'given' if x_weights is not None or y_weights is not None else 'none'})")
        return _ring.ring_mmd2(x, y, sigmas, weights, group=group, estimator=estimator)
    _require_tensor(x, "x")
    _require_tensor(y, "y")
    if group is not None and method == "auto":  # each rank sees only its shards: "auto" could pick differently
        raise ValueError("method='auto' with a group: the ranks must agree on the method, and each sees only its own "
                         "shards; choose 'exact' (exchange 'gather' or 'ring'), 'rff' or 'block'")
    method = resolve_method(method, x.shape[0] if x.dim() else 0, y.shape[0] if y.dim() else 0)
    num_features, block_size = method_options(method, num_features, block_size)
    if method != "exact":
        return _scalable_mmd2(x, y, sigmas, weights, method, unbiased, num_features, block_size, seed,
                              x_weights is not None or y_weights is not None, group)
    if x_weights is None and y_weights is None:
        if group is not None:
            x, y = _dist.gather_samples(x, y, group, min_rows=2 if unbiased else 1)
        sig, w = resolve_bandwidths(x, y, sigmas, weights, "pytl.mmd2")
        return torch.ops.pytl.mmd2.default(x, y, sig, w, unbiased)
    xw = _weight_tensor(x_weights, x, "x_weights", column=False)
    yw = _weight_tensor(y_weights, y, "y_weights", column=False)
    if group is not None:
        x, y, xw, yw = _gather_weighted(x, y, xw, yw, group, min_rows=2 if unbiased else 1)
    sig, w = resolve_bandwidths(x, y, sigmas, weights, "pytl.mmd2")
    return torch.ops.pytl.weighted_mmd2.default(x, y, sig, w, xw, yw, unbiased)


def class_conditional_mmd2(
    x: Tensor,
    y: Tensor,
    x_probs: Any,
    y_probs: Any,
    sigmas: SigmasLike = None,
    weights: WeightsLike = None,
    *,
    group: Any = None,
) -> Tensor:
    """The class-conditional MMD (LMMD of DSAN, Zhu et al. 2020): sum over classes c of the MMD² between
    the class-c weighted samples of x (n, d) and y (m, d), in one fused sweep for all C classes.

    x_probs: source class memberships, (n, C) one-hot labels or probabilities, or (n,) integer labels
    (then C is y_probs' width); y_probs: (m, C) target class probabilities (soft predictions, usually
    detached). Class c weighs x_i by x_probs[i, c] / sum_i x_probs[i, c] (the same for y), so each class
    term is the biased MMD² between two weighted samples; a class without weight on either side adds 0.
    sigmas, weights: as for :func:`mmd2` (None: the median-heuristic ladder of the pooled samples).
    Differentiable in x, y, x_probs, y_probs, sigmas and weights; no n x m matrix is built.
    group: this rank's shards of a global batch, as for :func:`mmd2`. Returns a 0-dim tensor of x's dtype.
    """
    _require_tensor(x, "x")
    _require_tensor(y, "y")
    yp = _weight_tensor(y_probs, y, "y_probs", column=True)
    xp = _class_memberships(x_probs, x, yp)
    if group is not None:
        x, y, xp, yp = _gather_weighted(x, y, xp, yp, group, min_rows=1)
    sig, w = resolve_bandwidths(x, y, sigmas, weights, "pytl.class_conditional_mmd2")
    return torch.ops.pytl.class_conditional_mmd2.default(x, y, xp, yp, sig, w)


def _weight_tensor(value: Any, samples: Tensor, name: str, *, column: bool) -> Tensor:
    """Weights as a tensor on the samples' device: None is uniform; a sequence or array becomes the samples'
    floating dtype. Shapes and values are the op's to check."""
    if value is None:
        shape = (samples.shape[0], 1) if column else (samples.shape[0],)
        return torch.ones(shape, dtype=samples.dtype if samples.is_floating_point() else torch.float32,
                          device=samples.device)
    if isinstance(value, Tensor):
        return value
    dtype = samples.dtype if samples.is_floating_point() else torch.float32
    try:
        return torch.as_tensor(value, dtype=dtype, device=samples.device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a tensor, sequence or array of numbers, got {type(value).__name__}") from exc


def _class_memberships(x_probs: Any, x: Tensor, y_probs: Tensor) -> Tensor:
    """Source memberships (n, C): integer labels (n,) become one-hot rows over y_probs' C classes."""
    if x_probs is None:
        raise TypeError("x_probs must be the source labels (n,) or class memberships (n, C), got None")
    xp = x_probs if isinstance(x_probs, Tensor) else torch.as_tensor(x_probs, device=x.device)
    if xp.dim() == 1 and not xp.is_floating_point() and not xp.is_complex():
        classes = y_probs.shape[1] if y_probs.dim() == 2 else 0
        if xp.numel() and (int(xp.min()) < 0 or int(xp.max()) >= classes):
            raise ValueError(f"x_probs: integer labels must lie in [0, {classes}) (the columns of y_probs), got "
                             f"labels from {int(xp.min())} to {int(xp.max())}")
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return torch.nn.functional.one_hot(xp.long(), classes).to(dtype)
    if not xp.is_floating_point():
        xp = xp.to(x.dtype if x.is_floating_point() else torch.float32)
    return xp


def _gather_weighted(x: Tensor, y: Tensor, xw: Tensor, yw: Tensor, group: Any,
                     min_rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The global samples and their weights, by one all-gather of the weights as extra feature columns."""
    for name, w, z in (("x_weights", xw, x), ("y_weights", yw, y)):
        if w.shape[:1] != z.shape[:1]:
            raise ValueError(f"{name} must have one row per sample ({z.shape[0]}), got shape {tuple(w.shape)}")
    gx, gy, gxw, gyw = _dist.gather_with_columns(x, y, xw.reshape(xw.shape[0], -1), yw.reshape(yw.shape[0], -1),
                                                 group, min_rows=min_rows)
    gxw, gyw = gxw.to(xw.dtype), gyw.to(yw.dtype)
    if xw.dim() == 1:
        gxw, gyw = gxw.reshape(-1), gyw.reshape(-1)
    return gx, gy, gxw, gyw


def _scalable_mmd2(x: Tensor, y: Tensor, sigmas: SigmasLike, weights: WeightsLike, method: str, unbiased: bool,
                   num_features: int | None, block_size: int | None, seed: int | None, weighted: bool,
                   group: Any) -> Tensor:
    """mmd2's "rff" and "block" methods, their options checked by ``method_options`` (what they do not support
    yet is refused by name)."""
    if weighted:
        raise ValueError(f"method={method!r} does not take x_weights or y_weights yet; use method='exact'")
    if seed is not None:
        seed = check_int(seed, "seed", 0)
    if group is not None:  # one all-reduce of sums (pytl.sharded_estimates)
        return _sharded.sharded_mmd2(x, y, sigmas, weights, method, unbiased, num_features, block_size, seed, group)
    seed = int(torch.randint(2**31 - 1, ())) if seed is None else seed
    sig, w = resolve_bandwidths(x, y, sigmas, weights, "pytl.mmd2")
    if sig.requires_grad:
        raise ValueError(f"method={method!r}: sigmas requires grad, but the {method} estimate does not differentiate "
                         "the bandwidths; detach them or use method='exact'")
    if method == "block":
        return _block.block_statistics(x, y, sig, w, block_size, seed, unbiased).mean()
    if unbiased and (x.shape[0] < 2 or y.shape[0] < 2):
        raise ValueError(f"the unbiased estimator needs at least 2 samples (rows) in x and in y, got n={x.shape[0]}, "
                         f"m={y.shape[0]}")
    assert num_features is not None
    freq, phases = _rff.draw_features(x.shape[1] if x.dim() == 2 else 1, sig, num_features, seed, x)
    sx, sy = _rff.feature_sums(x, freq, phases, unbiased), _rff.feature_sums(y, freq, phases, unbiased)
    terms = _rff.rff_terms(sx, sy, x.shape[0], y.shape[0], sig.numel(), unbiased)
    return (terms * w.to(terms.dtype)).sum().to(x.dtype)


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
