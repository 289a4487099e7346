"""The library's one set of argument checks for the settings the Python layer owns.

One convention everywhere: a value of the wrong *type* (a float or a bool where an int is expected,
text where a number is) raises TypeError; a value of the right type outside its range, a non-finite
number or an unknown choice raises ValueError. Every message names the argument, says what was
expected and shows what was given. Op arguments (tensors, bandwidths, weights) are checked by the ops,
in C++ (csrc/common/checks.h), and by pytl._samples only where Python computes on the samples before
an op sees them; data (arrays, labels, DataLoaders) in pytl._inputs. ``warn_user`` attributes a
warning about the user's data to the user's line.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["DataWarning", "check_bool", "check_choice", "check_float", "check_int", "check_optional_int", "warn_user"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class DataWarning(UserWarning):
    """A warning about the user's data (classes missing from a label set): a caller that checks the data once
    and then trains many models on it (compare_strategies) shows it once, not once per model."""


def _is_int(value: Any) -> bool:
    # numbers.Integral covers int and numpy's integer types; bool is an int subclass but never a count
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (either bound optional)."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int{_range(minimum, maximum, '>=', '<=')}, got {value!r} "
                        f"({type(value).__name__})")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise ValueError(f"{name} must be an int{_range(minimum, maximum, '>=', '<=')}, got {value!r}")
    return v


def check_optional_int(value: Any, name: str, minimum: int | None = None) -> int | None:
    """None, or ``value`` as an int >= minimum (the message says that None is allowed too)."""
    if value is None:
        return None
    try:
        return check_int(value, name, minimum)
    except (TypeError, ValueError) as e:
        raise type(e)(str(e).replace(f"{name} must be an int", f"{name} must be None or an int", 1)) from None


def check_float(value: Any, name: str, minimum: float | None = None, maximum: float | None = None, *,
                strict_min: bool = False, strict_max: bool = False) -> float:
    """``value`` as a finite float within the bounds (``strict_*``: the bound itself is excluded)."""
    lo, hi = (">" if strict_min else ">="), ("<" if strict_max else "<=")
    if not _is_real(value):
        raise TypeError(f"{name} must be a finite number{_range(minimum, maximum, lo, hi)}, got {value!r} "
                        f"({type(value).__name__})")
    v = float(value)
    ok = math.isfinite(v)
    if ok and minimum is not None:
        ok = v > minimum if strict_min else v >= minimum
    if ok and maximum is not None:
        ok = v < maximum if strict_max else v <= maximum
    if not ok:
        raise ValueError(f"{name} must be a finite number{_range(minimum, maximum, lo, hi)}, got {value!r}")
    return v


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_choice(value: Any, name: str, choices: Sequence[Any], extra: str = "") -> Any:
    """``value`` if it is one of ``choices`` (``extra`` adds to the message, e.g. "or a callable")."""
    try:
        known = value in choices
    except TypeError:  # unhashable values against a set
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {tuple(choices)}{' ' + extra if extra else ''}, got {value!r}")
    return value


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """A warning about the user's data or settings, attributed to the user's line: the first frame outside
    the pytl package, however deep inside pytl it was raised (a fixed stacklevel breaks when a new layer,
    e.g. compare_strategies over the trainer, calls the same check)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)


def _range(minimum: Any, maximum: Any, lo: str, hi: str) -> str:
    parts = ([f"{lo} {minimum}"] if minimum is not None else []) + ([f"{hi} {maximum}"] if maximum is not None else [])
    return (" " + " and ".join(parts)) if parts else ""
