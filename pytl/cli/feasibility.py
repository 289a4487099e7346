"""``python -m pytl feasibility SRC TGT`` and ``python -m pytl rank-sources TGT SRC1 SRC2 ...``: before
training, Ben-David's bound term by term (``pytl.transfer_feasibility``) and the ranking of candidate sources
(``pytl.rank_sources``), on files.

Labelled files (a source, ``--target-labeled``): .npz with arrays ``X`` and ``y``, or .npy / .csv whose last
column holds the integer labels. Unlabelled target files: as for ``pytl divergence`` (.npy, .npz, .csv).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pytl.cli.divergence import load_features
from pytl.cli.options import non_negative_int
from pytl.diagnostics import CLASSIFIERS, rank_sources, transfer_feasibility

__all__ = ["add_parsers", "load_labeled", "run_feasibility", "run_rank_sources"]


def add_parsers(sub: Any) -> None:
    fea = sub.add_parser(
        "feasibility",
        help="before training: source error, divergence, joint error lambda* and a verdict",
        description="Estimate each term of Ben-David's bound for transferring from SRC (labelled) to TGT "
                    "(unlabelled), and print pytl.transfer_feasibility's report. " + _FILES,
    )
    fea.set_defaults(run=lambda args, argv: run_feasibility(args))
    fea.add_argument("source", help="labelled source: .npz with X and y, or .npy/.csv with the label last")
    fea.add_argument("target", help="unlabelled target features: .npy, .npz or .csv")
    _common(fea)

    rank = sub.add_parser(
        "rank-sources",
        help="which of several labelled sources to transfer from",
        description="Rank candidate labelled sources for one unlabelled target (pytl.rank_sources): by the "
                    "estimated bound with --target-labeled, by the divergence without. " + _FILES,
    )
    rank.set_defaults(run=lambda args, argv: run_rank_sources(args))
    rank.add_argument("target", help="unlabelled target features: .npy, .npz or .csv")
    rank.add_argument("sources", nargs="+", help="labelled candidate sources (named by their file names)")
    _common(rank)


_FILES = ("Labelled files: .npz with arrays X and y, or .npy/.csv whose last column is the integer label.")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-labeled", default=None, help="a few labelled target samples (gives lambda* and the bound)")
    p.add_argument("--classifier", choices=CLASSIFIERS, default="linear", help="hypothesis class (default linear)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the splits and classifiers")


def load_labeled(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) from .npz (arrays X and y) or .npy/.csv (the last column is the label, integer-valued)."""
    if Path(path).suffix.lower() == ".npz" and Path(path).is_file():
        with np.load(path, allow_pickle=False) as archive:
            names = {n.lower(): n for n in archive.keys()}
            if "x" not in names or "y" not in names:
                raise ValueError(f"{path}: a labelled .npz needs arrays X and y, it holds {list(archive.keys())}")
            x, y = archive[names["x"]], archive[names["y"]]
        return np.asarray(x, dtype=np.float64).reshape(len(x), -1), _labels(np.asarray(y), path)
    arr = load_features(path)
    if arr.shape[1] < 2:
        raise ValueError(f"{path}: a labelled .npy/.csv needs features and a last label column, got shape {arr.shape}")
    return arr[:, :-1], _labels(arr[:, -1], path)


def _labels(y: np.ndarray, path: str) -> np.ndarray:
    if y.ndim != 1 or not np.all(np.isfinite(y)) or not np.all(y == np.round(y)) or (y.size and y.min() < 0):
        raise ValueError(f"{path}: labels must be non-negative integers, one per row")
    return y.astype(np.int64)


def _target_labeled(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray] | None:
    return None if args.target_labeled is None else load_labeled(args.target_labeled)


def run_feasibility(args: argparse.Namespace) -> int:
    try:
        report = transfer_feasibility(load_labeled(args.source), load_features(args.target), _target_labeled(args),
                                      classifier=args.classifier, seed=args.seed)
    except (ValueError, TypeError) as exc:
        print(f"pytl feasibility: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    print()
    print(report.explain())
    return 0


def run_rank_sources(args: argparse.Namespace) -> int:
    try:
        names = [Path(p).stem for p in args.sources]
        if len(set(names)) != len(names):
            names = list(args.sources)  # the stems collide: the paths name them
        sources = {name: load_labeled(path) for name, path in zip(names, args.sources)}
        ranking = rank_sources(load_features(args.target), sources, _target_labeled(args), classifier=args.classifier,
                               seed=args.seed)
    except (ValueError, TypeError) as exc:
        print(f"pytl rank-sources: {exc}", file=sys.stderr)
        return 2
    print(ranking.table())
    print()
    print(ranking.explain())
    return 0
