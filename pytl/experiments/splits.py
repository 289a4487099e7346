"""A curve's data: any DomainShift-like object as four checked splits, per seed, and the seeded
class-balanced order in which the labelled target samples are drawn."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pytl import _inputs as inp

__all__ = ["Splits", "as_splits", "data_for", "stratified_order"]


class Splits(NamedTuple):
    """The four splits of a domain-shift problem as checked tensors (target_labeled may be None)."""

    source: tuple[Tensor, Tensor]
    target_unlabeled: Tensor
    target_labeled: tuple[Tensor, Tensor] | None
    target_test: tuple[Tensor, Tensor]

    def as_dict(self) -> dict[str, Any]:
        """The splits as ``compare_strategies``' keyword arguments."""
        return self._asdict()

    def num_classes(self) -> int:
        """Largest label of any labelled split + 1."""
        ys = [self.source[1], self.target_test[1]] + ([self.target_labeled[1]] if self.target_labeled else [])
        return max(int(y.max()) for y in ys) + 1


def as_splits(d: Any, where: str) -> Splits:
    """A DomainShift, or any object / mapping with source, target_unlabeled, target_labeled, target_test,
    converted and checked; ``where`` names it in errors."""
    def get(key: str) -> Any:
        if isinstance(d, Mapping):
            if key not in d:
                raise TypeError(f"{where} has no {key!r}; it needs source, target_unlabeled, target_labeled and "
                                "target_test (a pytl.data.DomainShift or a dict)")
            return d[key]
        if not hasattr(d, key):
            raise TypeError(f"{where} ({type(d).__name__}) has no attribute {key!r}; it needs source, "
                            "target_unlabeled, target_labeled and target_test (a pytl.data.DomainShift or a dict)")
        return getattr(d, key)

    def labeled(key: str) -> tuple[Tensor, Tensor]:
        v = inp.as_labeled(get(key), f"{where}.{key}")
        if not isinstance(v, tuple):
            raise TypeError(f"{where}.{key} must be arrays or tensors (X, y), not a DataLoader")
        return v

    xu = inp.as_unlabeled(get("target_unlabeled"), f"{where}.target_unlabeled")
    if not isinstance(xu, Tensor):
        raise TypeError(f"{where}.target_unlabeled must be an array or tensor, not a DataLoader")
    tl = get("target_labeled")
    return Splits(labeled("source"), xu, labeled("target_labeled") if tl is not None else None,
                  labeled("target_test"))


def data_for(data: Any, *args: Any) -> Any:
    """data(*args) for a callable, else data itself (the same data for every seed)."""
    return data(*args) if callable(data) else data


def stratified_order(y: Tensor, seed: int) -> Tensor:
    """A seeded order of the samples whose every prefix is as class-balanced as possible: a random
    permutation, then re-ordered by (rank within its class, class). Prefixes are nested, so the
    n-label subset contains the smaller ones."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(y.shape[0], generator=g)
    yp = y[perm]
    classes = torch.unique(yp)
    rank = torch.empty_like(perm)
    pos = torch.empty_like(perm)
    for i, c in enumerate(classes.tolist()):
        idx = (yp == c).nonzero()[:, 0]
        rank[idx] = torch.arange(idx.numel())
        pos[idx] = i
    key = rank * classes.numel() + pos
    return perm[torch.sort(key, stable=True).indices]
