"""``python -m pytl divergence SRC TGT``: how far apart are two feature sets? The MMD test, the proxy
A-distance and a verdict (``pytl.domain_divergence``) on features loaded from .npy, .npz or .csv."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pytl.cli.options import non_negative_int, positive_int
from pytl.diagnostics import domain_divergence

__all__ = ["add_parser", "load_features", "run_divergence"]


def add_parser(sub: Any) -> None:
    div = sub.add_parser(
        "divergence",
        help="how far apart are two feature sets? MMD test, proxy A-distance and a verdict",
        description="Load source and target features (.npy, .npz with one array or --key, .csv) of the same "
                    "width, one sample per row, and print pytl.domain_divergence's report.",
    )
    div.set_defaults(run=lambda args, argv: run_divergence(args))
    div.add_argument("source", help="source features: .npy, .npz or .csv")
    div.add_argument("target", help="target features: .npy, .npz or .csv")
    div.add_argument("--key", default=None, help="array name inside .npz files with several arrays")
    div.add_argument("--permutations", type=positive_int, default=500, help="permutations of the MMD test (default 500)")
    div.add_argument("--seed", type=non_negative_int, default=0, help="seed of the test and the classifier split")


def load_features(path: str, key: str | None = None) -> np.ndarray:
    """A 2-D float array from .npy, .npz (its only array, or `key`) or .csv (comma-separated, no header)."""
    suffix = Path(path).suffix.lower()
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.keys())
            if key is None and len(names) != 1:
                raise ValueError(f"{path} holds {len(names)} arrays {names}: choose one with --key")
            name = key if key is not None else names[0]
            if name not in names:
                raise ValueError(f"{path} has no array {name!r}; it holds {names}")
            arr = archive[name]
    elif suffix == ".csv":
        arr = np.loadtxt(path, delimiter=",", ndmin=2)
    else:
        raise ValueError(f"{path}: expected a .npy, .npz or .csv file, got {suffix or 'no extension'!r}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: expected a 2-D numeric array (samples, features), got shape {arr.shape}, dtype {arr.dtype}")
    return arr.astype(np.float64)


def run_divergence(args: argparse.Namespace) -> int:
    try:
        xs, xt = load_features(args.source, args.key), load_features(args.target, args.key)
        report = domain_divergence(xs, xt,
                                   num_permutations=args.permutations, seed=args.seed)
    except (ValueError, TypeError) as exc:
        print(f"pytl divergence: {exc}", file=sys.stderr)
        return 2
    print(f"MMD² {report.mmd2:.5f}   p-value {report.p_value:.4f}   proxy A-distance {report.proxy_a_distance:.3f}   "
          f"verdict: {report.verdict}")
    print(report.explain())
    return 0
