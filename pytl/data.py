"""The tutorial's synthetic domain-shift problem: two classes in 2-D, a rotated and shifted target.

A controlled covariate shift: the target domain is the source distribution rotated by ``rotation``
degrees and moved by ``shift``, so P(X) changes while the labelling rule moves with it. The
source has plenty of labels, the target a few (``n_target_labeled``) plus unlabelled samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pytl._checks import check_choice, check_float, check_int

__all__ = ["SHAPES", "DomainShift", "make_domain_shift"]

SHAPES = ("moons", "blobs")


@dataclass(frozen=True)
class DomainShift:
    """The four splits of a domain-shift problem (float32 features, int64 labels)."""

    source: tuple[np.ndarray, np.ndarray]
    target_unlabeled: np.ndarray
    target_labeled: tuple[np.ndarray, np.ndarray]
    target_test: tuple[np.ndarray, np.ndarray]
    rotation: float
    shift: tuple[float, float]

    def as_dict(self) -> dict[str, Any]:
        """The splits as keyword arguments of ``compare_strategies``: ``compare_strategies(**d.as_dict())``."""
        return {
            "source": self.source,
            "target_unlabeled": self.target_unlabeled,
            "target_labeled": self.target_labeled,
            "target_test": self.target_test,
        }

    def __repr__(self) -> str:
        return (f"DomainShift(source={len(self.source[0])}, target_unlabeled={len(self.target_unlabeled)}, "
                f"target_labeled={len(self.target_labeled[0])}, target_test={len(self.target_test[0])}, "
                f"rotation={self.rotation:g}°, shift={self.shift})")


def _class_counts(n: int, num_classes: int) -> list[int]:
    """Stratified: every class gets n // C samples, the first n % C classes one more."""
    return [n // num_classes + (1 if c < n % num_classes else 0) for c in range(num_classes)]


def _moons(counts: list[int], noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles (scikit-learn's make_moons), centred on the origin."""
    t0 = rng.uniform(0.0, math.pi, counts[0])
    t1 = rng.uniform(0.0, math.pi, counts[1])
    upper = np.stack([np.cos(t0), np.sin(t0)], axis=1)
    lower = np.stack([1.0 - np.cos(t1), 0.5 - np.sin(t1)], axis=1)
    x = np.concatenate([upper, lower]) - np.array([0.5, 0.25])
    x = x + rng.normal(0.0, noise, size=x.shape)
    y = np.concatenate([np.zeros(counts[0]), np.ones(counts[1])])
    return x, y


def _blobs(counts: list[int], noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One isotropic Gaussian per class, centres evenly spaced on a circle of radius 1.5."""
    xs, ys = [], []
    k = len(counts)
    for c, n in enumerate(counts):
        angle = 2 * math.pi * c / k
        centre = 1.5 * np.array([math.cos(angle), math.sin(angle)])
        xs.append(centre + rng.normal(0.0, noise, size=(n, 2)))
        ys.append(np.full(n, c))
    return np.concatenate(xs), np.concatenate(ys)


def _check_shift(shift: Any) -> np.ndarray:
    """(dx, dy) as a float64 array; text or anything that is not numbers is a TypeError."""
    if isinstance(shift, (str, bytes)) or not hasattr(shift, "__len__"):
        raise TypeError(f"shift must be two numbers (dx, dy), got {shift!r} ({type(shift).__name__})")
    try:
        shift_arr = np.asarray(shift, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"shift must be two numbers (dx, dy), got {shift!r}") from None
    if shift_arr.shape != (2,) or not np.isfinite(shift_arr).all():
        raise ValueError(f"shift must be two finite numbers (dx, dy), got {shift!r}")
    return shift_arr


def make_domain_shift(
    seed: int = 0,
    *,
    n_source: int = 1000,
    n_target_unlabeled: int = 1000,
    n_target_labeled: int = 50,
    n_target_test: int = 1000,
    rotation: float = 30.0,
    shift: Sequence[float] = (3.0, 3.0),
    noise: float = 0.15,
    shape: str = "moons",
    num_classes: int = 2,
) -> DomainShift:
    """Source: ``shape`` in 2-D with Gaussian ``noise``; target: the same, rotated by ``rotation``
    degrees about the origin, then moved by ``shift``.

    shape "moons" (two classes) has a curved boundary that a few labels pin down only roughly;
    "blobs" has one Gaussian per class (``num_classes`` of them). Every split is stratified (class
    counts differ by at most one) and drawn independently; the same seed gives the same arrays.
    """
    seed = check_int(seed, "seed", minimum=0)
    n_source = check_int(n_source, "n_source", minimum=2)
    n_target_unlabeled = check_int(n_target_unlabeled, "n_target_unlabeled", minimum=2)
    n_target_labeled = check_int(n_target_labeled, "n_target_labeled", minimum=0)
    n_target_test = check_int(n_target_test, "n_target_test", minimum=1)
    shape = check_choice(shape, "shape", SHAPES)
    num_classes = check_int(num_classes, "num_classes", minimum=2)
    if shape == "moons" and num_classes != 2:
        raise ValueError(f"shape='moons' has exactly 2 classes, got num_classes={num_classes}; use shape='blobs'")
    noise = check_float(noise, "noise", 0.0)
    rotation = check_float(rotation, "rotation (degrees)")
    shift_arr = _check_shift(shift)

    rng = np.random.default_rng(seed)
    gen = _moons if shape == "moons" else _blobs
    theta = math.radians(rotation)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])

    def draw(n: int, target: bool) -> tuple[np.ndarray, np.ndarray]:
        x, y = gen(_class_counts(n, num_classes), noise, rng)
        if target:
            x = x @ rot.T + shift_arr
        order = rng.permutation(n)
        return x[order].astype(np.float32), y[order].astype(np.int64)

    source = draw(n_source, target=False)
    target_unlabeled = draw(n_target_unlabeled, target=True)[0]
    target_labeled = draw(n_target_labeled, target=True) if n_target_labeled else (
        np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
    target_test = draw(n_target_test, target=True)
    return DomainShift(source, target_unlabeled, target_labeled, target_test, rotation,
                       (float(shift_arr[0]), float(shift_arr[1])))
