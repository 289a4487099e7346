"""95% intervals of held-out error rates that hold at the boundary, and of sums of them (the feasibility report).

A normal (Wald) interval p +- z sqrt(p (1 - p) / n) collapses to a point when no held-out sample, or every
one, is misclassified: an error of 0 measured on 20 labels would be "0 [0, 0]". The Wilson score interval
keeps a positive width there (0 of 20: [0, 0.161]), and its coverage is close to nominal for small n.

A sum of k estimated rates (lambda* = eps_S + eps_T, the bound eps_S + 1/2 d_HdH + lambda*) gets the sum of
the rates' Wilson bounds, each at the level 1 - alpha / k (Bonferroni): with probability at least 1 - alpha
every rate lies in its interval at once, and then the sum lies in the sum of the intervals, however the
rates depend on each other (several of them are measured on the same held-out rows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

__all__ = ["CONFIDENCE", "simultaneous_wilson", "wilson", "z_value"]

CONFIDENCE = 0.95


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of ``confidence`` (0.95: 1.95996...)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(rate: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``rate`` measured on ``n`` samples (rate may be a mean of
    per-sample rates in [0, 1], e.g. the error of two classifiers on the same rows: their variance is at most
    rate (1 - rate), so the interval is conservative for them). n = 0: [0, 1]."""
    if n == 0:
        return 0.0, 1.0
    z = z_value(confidence)
    denom = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denom
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denom
    return max(0.0, min(rate, centre - half)), min(1.0, max(rate, centre + half))


def simultaneous_wilson(parts: Sequence[tuple[float, int]], confidence: float = CONFIDENCE) -> list[tuple[float, float]]:
    """Wilson intervals of k rates (rate, n) that hold all at once with probability >= ``confidence``: each at
    1 - (1 - confidence) / k (Bonferroni). Sums and monotone maps of the rates take their bounds from these."""
    level = 1 - (1 - confidence) / len(parts)
    return [wilson(rate, n, level) for rate, n in parts]
