"""``python -m pytl divergence SRC TGT``: how far apart are two feature sets? The MMD test, the proxy
A-distance and a verdict (``pytl.domain_divergence``) on features loaded from .npy, .npz or .csv
(files.py reads and checks them)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pytl.cli.files import (
    add_key_option,
    check_samples,
    file_label,
    load_features,
    stderr_note,
)
from pytl.cli.options import non_negative_int, positive_int
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
    div.set_defaults(run=lambda args, argv: run_divergence(args))
    div.add_argument("source", help="source features: .npy, .npz or .csv")
    div.add_argument("target", help="target features: .npy, .npz or .csv")
    add_key_option(div, labeled=False)
    div.add_argument("--permutations", type=positive_int, default=500, help="permutations of the MMD test (default 500)")
    div.add_argument("--seed", type=non_negative_int, default=0, help="seed of the test and the classifier split")


def run_divergence(args: argparse.Namespace) -> int:
    note = stderr_note(PROG)
    try:  # both files read and checked before the test starts
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
