"""Stratified k-fold splits of the few target labels, for cross-validated estimates without a test set."""

from __future__ import annotations

import torch
from torch import Tensor

from pytl._validation import check_int

__all__ = ["check_folds", "stratified_folds"]


def check_folds(folds: object, y: Tensor) -> int:
    """``folds`` as an int >= 2 that every class present in ``y`` can fill: each fold must hold out at
    least one label of every class, so a class with fewer labels than folds is an error (not a silently
    unbalanced split)."""
    k = check_int(folds, "folds", 2)
    classes, counts = torch.unique(y, return_counts=True)
    short = [(int(c), int(n)) for c, n in zip(classes, counts) if n < k]
    if short:
        listed = ", ".join(f"class {c} has {n}" for c, n in short[:5]) + (" ..." if len(short) > 5 else "")
        raise ValueError(f"folds={k} but {listed} target label(s); stratified cross-validation needs at least "
                         f"`folds` labels of every class (use folds<={int(counts.min())}, or folds=None to skip "
                         "the cross-validated estimate)")
    return k


def stratified_folds(y: Tensor, folds: int, seed: int) -> list[Tensor]:
    """The held-out indices of each of ``folds`` folds (sorted, disjoint, covering every sample).

    Each class's samples are shuffled with a generator seeded by ``seed`` and dealt round-robin, so every
    fold holds floor or ceil of (class count / folds) samples of each class; the dealing starts where the
    previous class stopped, which keeps the fold sizes within one of each other."""
    g = torch.Generator().manual_seed(seed)
    assignment = torch.empty(y.shape[0], dtype=torch.int64)
    start = 0
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero()[:, 0]
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        assignment[idx] = (torch.arange(idx.numel()) + start) % folds
        start = (start + idx.numel()) % folds
    return [(assignment == k).nonzero()[:, 0] for k in range(folds)]
