"""``python -m pytl feasibility SRC TGT`` and ``python -m pytl rank-sources TGT SRC1 SRC2 ...``: before
training, Ben-David's bound term by term (``pytl.transfer_feasibility``) and the ranking of candidate sources
(``pytl.rank_sources``), on files.

Labelled files (a source, ``--target-labeled``): .npz with arrays ``X`` and ``y``, or .npy / .csv whose last
column holds the integer labels. Unlabelled target files: as for ``pytl divergence`` (.npy, .npz with one
array or ``--key``, .csv). files.py reads and checks them all, before anything is computed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pytl import distributed as pd
from pytl import sharded_data as sd
from pytl.cli import torchrun
from pytl.cli.files import (
    LABELED_FILES,
    Note,
    add_key_option,
    check_distinct,
    check_samples,
    file_label,
    load_features,
    load_labeled,
    stderr_note,
)
from pytl.cli.options import add_distributed_option, non_negative_int
from pytl.cli.shards import SUBSAMPLE_ROWS, load_feature_shard, load_labeled_shard
from pytl.diagnostics import CLASSIFIERS, rank_sources, transfer_feasibility

__all__ = ["add_parsers", "load_labeled", "run_feasibility", "run_rank_sources"]

_FILES = LABELED_FILES + " A .csv first row that is not numbers is taken as a header and skipped (said on stderr)."


def add_parsers(sub: Any) -> None:
    fea = sub.add_parser(
        "feasibility",
        help="before training: source error, divergence, joint error lambda* and a verdict",
        description="Estimate each term of Ben-David's bound for transferring from SRC (labelled) to TGT "
                    "(unlabelled), and print pytl.transfer_feasibility's report. " + _FILES,
    )
    fea.set_defaults(run=run_feasibility)
    fea.add_argument("source", help="labelled source: .npz with X and y, or .npy/.csv with the label last")
    fea.add_argument("target", help="unlabelled target features: .npy, .npz or .csv")
    _common(fea)
    add_distributed_option(fea, "every rank reads its part of the source and target files (a path with {rank}: one "
                                f"file per rank; a .npy target: its own rows, memory-mapped) and the terms are "
                                f"estimated on up to {SUBSAMPLE_ROWS} rows per domain gathered from all ranks")

    rank = sub.add_parser(
        "rank-sources",
        help="which of several labelled sources to transfer from",
        description="Rank candidate labelled sources for one unlabelled target (pytl.rank_sources): by the "
                    "estimated bound with --target-labeled, by the divergence without. Every file is read and "
                    "checked before any candidate is evaluated; a file given twice is an error. " + _FILES,
    )
    rank.set_defaults(run=lambda args, argv: run_rank_sources(args))
    rank.add_argument("target", help="unlabelled target features: .npy, .npz or .csv")
    rank.add_argument("sources", nargs="+", help="labelled candidate sources (named by their file names)")
    _common(rank)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-labeled", default=None, help="a few labelled target samples (gives lambda* and the bound)")
    add_key_option(p, labeled=True)
    p.add_argument("--classifier", choices=CLASSIFIERS, default="linear", help="hypothesis class (default linear)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the splits and classifiers")


Labeled = tuple[np.ndarray, np.ndarray]


def _target(args: argparse.Namespace, note: Note) -> tuple[np.ndarray, Labeled | None]:
    """The unlabelled target and the optional labelled target samples, read and checked."""
    xt = load_features(args.target, args.key, role="target", note=note)
    if args.target_labeled is None:
        return xt, None
    return xt, load_labeled(args.target_labeled, role="--target-labeled", note=note)


def _check(target: np.ndarray, target_path: str, labeled: Labeled | None, labeled_path: str | None,
           sources: list[tuple[str, np.ndarray]]) -> None:
    """Every file: enough samples, and the target's width (the first named is the target)."""
    items = [(file_label(target_path, "target"), target), *sources]
    if labeled is not None:
        items.append((file_label(labeled_path or "", "--target-labeled"), labeled[0]))
    check_samples(items)


def run_feasibility(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    if args.distributed is not None and not torchrun.under_torchrun():
        return torchrun.relaunch(args.distributed, list(sys.argv[1:] if argv is None else argv))
    return torchrun.run_on_every_rank(_run_feasibility, args, what="each reads its part of the files")


def _sharded_inputs(args: argparse.Namespace, note: Note) -> tuple[Labeled, np.ndarray, Labeled | None]:
    """Under torchrun: this rank's shards of the source and the target, and a subsample of up to SUBSAMPLE_ROWS
    rows of each gathered from all ranks (the same on every rank); the few target labels are read whole."""
    where = dict(note=note, rank=pd.rank(), world=pd.world_size())
    (xs, ys), xt = sd.agree(lambda: (load_labeled_shard(args.source, role="source", **where),
                                     load_feature_shard(args.target, args.key, role="target", **where)))
    pooled = sd.gather_subsample(torch.from_numpy(np.concatenate([xs, ys[:, None].astype(np.float64)], 1)),
                                 SUBSAMPLE_ROWS, args.seed, dist.group.WORLD).numpy()
    target = sd.gather_subsample(torch.from_numpy(xt), SUBSAMPLE_ROWS, args.seed + 1, dist.group.WORLD).numpy()
    labeled = None if args.target_labeled is None else \
        load_labeled(args.target_labeled, role="--target-labeled", note=note)
    return (pooled[:, :-1], pooled[:, -1].astype(np.int64)), target, labeled


def _run_feasibility(args: argparse.Namespace) -> int:
    prog = "pytl feasibility"
    note = stderr_note(prog)
    try:
        if pd.world_size() > 1:
            source, xt, labeled = _sharded_inputs(args, note)
        else:
            source = load_labeled(args.source, role="source", note=note)
            xt, labeled = _target(args, note)
        _check(xt, args.target, labeled, args.target_labeled, [(file_label(args.source, "source"), source[0])])
        report = transfer_feasibility(source, xt, labeled, classifier=args.classifier, seed=args.seed)
    except (ValueError, TypeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    print()
    print(report.explain())
    return 0


def run_rank_sources(args: argparse.Namespace) -> int:
    prog = "pytl rank-sources"
    note = stderr_note(prog)
    try:  # every file read and checked before the first candidate is evaluated
        check_distinct(args.sources, "candidate source")
        xt, labeled = _target(args, note)
        roles = [f"candidate source {i}" if len(args.sources) > 1 else "candidate source"
                 for i in range(1, len(args.sources) + 1)]
        loaded = [load_labeled(path, role=role, note=note) for path, role in zip(args.sources, roles)]
        _check(xt, args.target, labeled, args.target_labeled,
               [(file_label(path, role), x) for path, role, (x, _) in zip(args.sources, roles, loaded)])
        names = [Path(p).stem for p in args.sources]
        if len(set(names)) != len(names):
            names = list(args.sources)  # the stems collide: the paths name them
        ranking = rank_sources(xt, dict(zip(names, loaded)), labeled, classifier=args.classifier, seed=args.seed)
    except (ValueError, TypeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(ranking.table())
    print()
    print(ranking.explain())
    return 0
