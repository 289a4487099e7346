"""The two-sample convention of the Python code that computes on the samples itself: x (n, d) and y (m, d).

The ops check their own arguments, once, in C++ (csrc/common/checks.h). These checks are for what runs
before an op sees the samples, or instead of it: the permutation
test, which hands the op the pooled sample, and the domain classifier (pytl.diagnostics). Their
messages use the ops' wording. ``as_matrix`` first converts what a user may pass (numpy arrays, lists,
tensors) with pytl._inputs.as_features, the library's one input convention.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pytl._inputs import as_features

__all__ = ["as_matrix", "check_matrix", "check_pair", "check_same_features"]


def check_matrix(t: Any, name: str) -> None:
    """A floating-point 2-D torch.Tensor (samples, features) with at least one row and one column."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor (samples, features), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs at least one row (sample), got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} must have at least one feature column, got shape {tuple(t.shape)}")


def check_same_features(x: Tensor, y: Tensor, names: tuple[str, str] = ("x", "y")) -> None:
    if x.shape[1] != y.shape[1]:
        a, b = names
        raise ValueError(f"{a} and {b} must have the same number of features, got {a}: {tuple(x.shape)} and "
                         f"{b}: {tuple(y.shape)}")


def check_pair(x: Any, y: Any, estimator: str = "biased", names: tuple[str, str] = ("x", "y")) -> None:
    """Two samples for one MMD: matrices with the same features, dtype and device; the unbiased
    estimator needs at least 2 rows in each."""
    a, b = names
    check_matrix(x, a)
    check_matrix(y, b)
    check_same_features(x, y, names)
    if x.dtype != y.dtype:
        raise TypeError(f"{a} and {b} must have the same dtype, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"{a} and {b} must be on the same device, got {x.device} and {y.device}")
    if estimator == "unbiased" and (x.shape[0] < 2 or y.shape[0] < 2):
        raise ValueError(f"the unbiased estimator needs at least 2 samples (rows) in {a} and in {b}, got "
                         f"{x.shape[0]} and {y.shape[0]}")


def as_matrix(value: Any, name: str) -> Tensor:
    """A numpy array, nested list or tensor as a checked (samples, features) tensor: floats keep their
    dtype, integers and bools become float32, NaN and inf are rejected (pytl._inputs.as_features)."""
    t = as_features(value, name)
    check_matrix(t, name)
    return t
