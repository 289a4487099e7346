"""The criteria by name, and ``score``: one entry point for all of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from pytl.validation.dev import deep_embedded
from pytl.validation.entropy import prediction_entropy
from pytl.validation.im import information_maximization
from pytl.validation.iwv import importance_weighted
from pytl.validation.snd import soft_neighborhood_density

__all__ = ["CRITERIA", "check_criterion", "score"]

Criterion = Callable[..., float]

#: name → criterion ``f(model, source_val, target_unlabeled, **options) -> float`` (higher is better)
CRITERIA: Mapping[str, Criterion] = MappingProxyType({
    "iwv": importance_weighted,
    "dev": deep_embedded,
    "snd": soft_neighborhood_density,
    "entropy": prediction_entropy,
    "im": information_maximization,
})


def check_criterion(criterion: Any) -> str:
    """``criterion`` if it is a name of CRITERIA: TypeError for a non-string, ValueError naming the valid ones."""
    if not isinstance(criterion, str):
        raise TypeError(f"criterion must be one of {tuple(CRITERIA)}, got {criterion!r} ({type(criterion).__name__})")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {tuple(CRITERIA)}, got {criterion!r}")
    return criterion


def score(criterion: str, model: Any, source_val: Any, target_unlabeled: Any, **options: Any) -> float:
    """``CRITERIA[criterion](model, source_val, target_unlabeled, **options)``: a label-free score of ``model``
    for the target domain, higher is better. It ranks models; it is not an accuracy or an error rate."""
    return CRITERIA[check_criterion(criterion)](model, source_val, target_unlabeled, **options)
