"""The curve drivers' arguments: grids, seeds, strategies, options and the model, checked before the
first training step, and resolved per seed.

The element checks are the library's own (pytl._checks: a wrong type is a TypeError, a value out
of range a ValueError); the messages name the whole grid, which is what the caller passed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import nn

from pytl._checks import check_float, check_int
from pytl.experiments.strategies import resolve_config

__all__ = ["RESERVED", "check_angles", "check_int_grid", "check_model_arg", "check_seeds", "curve_config", "log",
           "model_for"]

#: options that the curves set themselves (one call per seed and grid point)
RESERVED = ("seed", "strategies", "model", "source", "target_unlabeled", "target_labeled", "target_test")

T = TypeVar("T", int, float)


def _grid(values: Any, name: str, what: str, check: Callable[[Any], T], *, sort: bool,
          example: str | None = None) -> tuple[T, ...]:
    """A non-empty sequence of distinct values, each passed through ``check``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of {what}" + (f" such as {example}" if example else "")
                        + f", got {values!r}")
    out = [check(v) for v in values]
    if not out:
        raise ValueError(f"{name} is empty" + (f": give at least one, e.g. {name}={example}" if example else ""))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has duplicates: {out}")
    return tuple(sorted(out) if sort else out)


def check_int_grid(values: Any, name: str, minimum: int, *, sort: bool = True,
                   example: str | None = None) -> tuple[int, ...]:
    """Distinct ints >= minimum (sorted unless ``sort=False``): label counts, layer counts, seeds."""
    def element(v: Any) -> int:
        try:
            return check_int(v, name, minimum)
        except (TypeError, ValueError) as exc:  # check_int decides which; the message speaks of the grid
            raise type(exc)(f"{name} must hold ints >= {minimum}, got {v!r} ({type(v).__name__})") from None

    return _grid(values, name, f"ints >= {minimum}", element, sort=sort, example=example)


def check_seeds(seeds: Any) -> tuple[int, ...]:
    """Distinct ints >= 0, in the order given."""
    return check_int_grid(seeds, "seeds", 0, sort=False, example="range(3)")


def check_angles(angles: Any) -> tuple[float, ...]:
    """Distinct finite numbers (degrees), sorted."""
    def element(a: Any) -> float:
        try:
            return check_float(a, "angles")
        except TypeError:
            raise TypeError(f"angles must hold numbers, got {a!r} ({type(a).__name__})") from None
        except ValueError:
            raise ValueError(f"angles must be finite, got {a!r}") from None

    return _grid(angles, "angles", "numbers (degrees)", element, sort=True)


def curve_config(config: dict[str, Any], caller: str) -> dict[str, Any]:
    """A curve's compare_strategies options: none of those it sets itself, none unknown; one CPU thread
    unless asked otherwise."""
    clash = sorted(set(config) & set(RESERVED))
    if clash:
        raise TypeError(f"{caller} sets {clash} itself (pass seeds=, strategies=, model=, data=)")
    resolve_config(config, caller)  # unknown options raise a TypeError listing the valid ones
    cfg = dict(config)
    cfg.setdefault("num_threads", 1)  # tiny models: one thread beats two (see TwoStageTrainer)
    return cfg


def check_model_arg(model: Any) -> None:
    if model is not None and not isinstance(model, nn.Module) and not callable(model):
        raise TypeError(f"model must be an nn.Module, a callable(seed) -> nn.Module, or None, got {type(model).__name__}")


def model_for(model: Any, seed: int) -> nn.Module | None:
    """The model argument for one seed: None, the module itself, or ``model(seed)``."""
    if model is None or isinstance(model, nn.Module):
        return model
    m = model(seed)
    if not isinstance(m, nn.Module):
        raise TypeError(f"model(seed) must return an nn.Module, got {type(m).__name__}")
    return m


def log(verbose: bool, text: str) -> None:
    """``verbose=True``: one progress line on stderr."""
    if verbose:
        print(text, file=sys.stderr, flush=True)
