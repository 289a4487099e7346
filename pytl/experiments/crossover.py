"""Where transfer stops paying: the first sign change of (transfer − scratch) accuracy over a grid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from pytl.experiments.tables import format_x

__all__ = ["Crossover", "find_crossover"]


class Crossover(NamedTuple):
    """Where transfer minus scratch accuracy crosses zero (linear interpolation), or None and why."""

    x: float | None
    reason: str


def find_crossover(xs: Sequence[float], gaps: Sequence[float], what: str = "transfer") -> Crossover:
    """The first x where ``gaps`` (transfer minus scratch accuracy) goes from >= 0 to < 0.

    Linear interpolation between the two grid points that bracket the sign change:
    x = x0 + (x1 - x0) * g0 / (g0 - g1). Returns ``Crossover(None, reason)`` when the first gap is
    already negative (transfer never pays on this grid) or no gap is negative (transfer pays, or ties,
    everywhere). xs must be strictly increasing and finite, gaps finite, of the same length."""
    xs = [float(x) for x in xs]
    gaps = [float(g) for g in gaps]
    if len(xs) != len(gaps) or not xs:
        raise ValueError(f"xs and gaps must be non-empty and of the same length, got {len(xs)} and {len(gaps)}")
    if not all(math.isfinite(v) for v in xs + gaps):
        raise ValueError("xs and gaps must be finite")
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError(f"xs must be strictly increasing, got {xs}")
    if gaps[0] < 0:
        return Crossover(None, f"{what} is already below scratch at the first grid point, {format_x(xs[0])} "
                               f"({100 * gaps[0]:+.1f} points): it does not pay anywhere on this grid")
    for i in range(1, len(xs)):
        if gaps[i] < 0:
            g0, g1 = gaps[i - 1], gaps[i]
            x = xs[i - 1] + (xs[i] - xs[i - 1]) * g0 / (g0 - g1)
            reason = (f"{what} stops paying at about {x:.3g}, between {format_x(xs[i - 1])} ({100 * g0:+.1f} points "
                      f"vs scratch) and {format_x(xs[i])} ({100 * g1:+.1f}), linearly interpolated")
            back = [xs[j] for j in range(i + 1, len(xs)) if gaps[j] >= 0]
            if back:
                reason += f"; it is level or ahead again at {', '.join(format_x(v) for v in back)}"
            return Crossover(x, reason)
    j = min(range(len(gaps)), key=gaps.__getitem__)
    return Crossover(None, f"{what} stays at or above scratch over the whole grid (smallest gap "
                           f"{100 * gaps[j]:+.1f} points, at {format_x(xs[j])}): no crossover")
