"""Splits of labelled data: stratified k-fold splits of the few target labels (cross-validated estimates
without a test set), and the held-out source rows that label-free criteria score on."""

from __future__ import annotations

import torch
from torch import Tensor

from pytl._checks import check_int
from pytl.train import stratified_split

__all__ = ["DEFAULT_FOLDS", "check_folds", "split_source", "stratified_folds", "training_rows"]

#: compare_strategies' (and the demo's) folds of the target labels
DEFAULT_FOLDS = 5


def check_folds(folds: object, y: Tensor | None = None) -> int | None:
    """The one check of ``folds``: None or 0 (the command line's spelling of None) skip the cross-validation
    (returns None); otherwise an int >= 2 that every class present in ``y`` (when given) can fill: each fold
    must hold out at least one label of every class, so a class with fewer labels than folds is an error
    (not a silently unbalanced split)."""
    if folds is None:
        return None
    k = check_int(folds, "folds (None or 0: no cross-validation)", 0)
    if k == 0:
        return None
    if k == 1:
        raise ValueError(f"folds must be an int >= 2 (or None or 0: no cross-validation), got {folds!r}")
    if y is None:
        return k
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


def training_rows(n: int, held: Tensor) -> Tensor:
    """The boolean mask of the rows a fold trains (or chooses) on: every one of ``n`` rows but its ``held`` ones."""
    rows = torch.ones(n, dtype=torch.bool)
    rows[held] = False
    return rows


def split_source(ys: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """The held-out source rows: the trainer's stratified, seeded split (``pytl.train.stratified_split``,
    the one ``finetune_validation`` uses), which must leave every class on both sides. Returns (train,
    held-out) indices, each sorted."""
    train, val = stratified_split(ys, fraction, seed)
    for c, n_c in zip(*(t.tolist() for t in torch.unique(ys, return_counts=True))):
        k = int((ys[val] == c).sum())
        if k < 1 or k > n_c - 1:
            raise ValueError(f"source_validation={fraction:g} holds out {k} of the {n_c} source samples of class {c}; "
                             "every class needs at least one sample to train on and one to validate on (change "
                             "source_validation or add source samples)")
    return train, val
