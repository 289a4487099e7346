"""``python -m pytl divergence SRC TGT``: how far apart are two feature sets? The MMD test, the proxy
A-distance and a verdict (``pytl.domain_divergence``) on features loaded from .npy, .npz or .csv
(files.py reads and checks them)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch.distributed as dist

from pytl import distributed as pd
from pytl import sharded_data as sd
from pytl.cli import torchrun
from pytl.cli.files import (
    add_key_option,
    check_samples,
    file_label,
    load_features,
    stderr_note,
)
from pytl.cli.options import add_distributed_option, non_negative_int, positive_int
from pytl.cli.shards import load_feature_shard
from pytl.diagnostics import domain_divergence

__all__ = ["add_parser", "load_features", "run_divergence"]

PROG = "pytl divergence"


def add_parser(sub: Any) -> None:
    div = sub.add_parser(
        "divergence",
        help="how far apart are two feature sets? MMD test, proxy A-distance and a verdict",
        description="Load source and target features (.npy, .npz with one array or --key, .csv) of the same "
                    "width, one sample per row, and print pytl.domain_divergence's report. A .csv first row "
                    "that is not numbers is taken as a header and skipped (a note on stderr says so).",
    )
    div.set_defaults(run=run_divergence)
    div.add_argument("source", help="source features: .npy, .npz or .csv")
    div.add_argument("target", help="target features: .npy, .npz or .csv")
    add_key_option(div, labeled=False)
    div.add_argument("--permutations", type=positive_int, default=500, help="permutations of the MMD test (default 500)")
    div.add_argument("--seed", type=non_negative_int, default=0, help="seed of the test and the classifier split")
    add_distributed_option(div, "every rank reads its part of each file (a path with {rank}: one file per rank; a "
                                ".npy: its own rows, memory-mapped); the MMD test (random features) reads every row, "
                                "the proxy A-distance a subsample gathered from all ranks")


def run_divergence(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    if args.distributed is not None and not torchrun.under_torchrun():
        return torchrun.relaunch(args.distributed, list(sys.argv[1:] if argv is None else argv))
    return torchrun.run_on_every_rank(_run, args, what="each reads its part of the files")


def _run(args: argparse.Namespace) -> int:
    note = stderr_note(PROG)
    try:  # both files read and checked before the test starts
        if pd.world_size() > 1:  # under torchrun: this rank's shards, the test of them all
            where = dict(note=note, rank=pd.rank(), world=pd.world_size())
            xs, xt = sd.agree(lambda: (load_feature_shard(args.source, args.key, role="source", **where),
                                       load_feature_shard(args.target, args.key, role="target", **where)))
            report = domain_divergence(xs, xt, num_permutations=args.permutations, seed=args.seed,
                                       group=dist.group.WORLD)
        else:
            xs = load_features(args.source, args.key, role="source", note=note)
            xt = load_features(args.target, args.key, role="target", note=note)
            check_samples([(file_label(args.source, "source"), xs), (file_label(args.target, "target"), xt)])
            report = domain_divergence(xs, xt, num_permutations=args.permutations, seed=args.seed)
    except (ValueError, TypeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(f"MMD² {report.mmd2:.5f}   p-value {report.p_value:.4f}   proxy A-distance {report.proxy_a_distance:.3f}   "
          f"verdict: {report.verdict}")
    print(report.explain())
    return 0
