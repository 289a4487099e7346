"""The λ schedules of stage 1: the factor of λ at each point of the training."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

__all__ = ["LAMBDA_SCHEDULES", "ScheduleLike", "lambda_factor"]

LAMBDA_SCHEDULES = ("constant", "linear", "dann")
ScheduleLike = Union[str, Callable[[float], float]]


def lambda_factor(schedule: ScheduleLike, progress: float) -> float:
    """Multiplier of λ at training progress p ∈ [0, 1].

    "constant": 1. "linear": p. "dann": 2/(1+exp(−10p)) − 1 (Ganin et al.): the alignment starts weak while
    the features are still random and reaches full strength after about a third of the training. A
    callable gets p and returns the multiplier."""
    if callable(schedule):
        return float(schedule(progress))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return progress
    if schedule == "dann":
        return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0
    raise ValueError(f"lambda_schedule must be one of {LAMBDA_SCHEDULES} or a callable, got {schedule!r}")
