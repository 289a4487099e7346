"""Command line: ``python -m pytl demo`` reproduces the tutorial's experiment.

Two classes in 2-D, a target domain rotated and shifted; every strategy of ``compare_strategies``
is trained with the tutorial's recipe (λ = 0.5, 100 alignment epochs, 50 fine-tuning epochs, 50
target labels) and the comparison table is printed. ``--plot FILE.png`` draws both domains and each
strategy's decision boundary (needs matplotlib).

``python -m pytl divergence SRC TGT`` reports how far apart two feature sets are; ``python -m pytl
feasibility SRC TGT`` estimates Ben-David's bound term by term before training, and ``python -m pytl
rank-sources TGT SRC1 SRC2 ...`` ranks candidate sources;
``python -m pytl curve {data-efficiency,layers,divergence} --out FILE.png`` runs a curve of
``pytl.experiments``, prints its table and draws it with ``pytl.plot``.

One module per subcommand (``demo.py``, ``divergence.py``, ``feasibility.py`` (two), ``curve.py``: its
parser and its run function), the torchrun relaunch of ``--distributed`` in ``torchrun.py``, the shared
argument types and checks in ``options.py``; the parser and the dispatch here.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pytl.cli import curve, demo, divergence, feasibility
from pytl.cli.curve import CURVE_DEFAULT_SEEDS, CURVE_KINDS, run_curve
from pytl.cli.demo import run_demo
from pytl.cli.divergence import load_features, run_divergence
from pytl.cli.options import FIGURE_SUFFIXES

__all__ = ["CURVE_DEFAULT_SEEDS", "CURVE_KINDS", "FIGURE_SUFFIXES", "build_parser", "exit_status", "load_features",
           "main", "run_curve", "run_demo", "run_divergence"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pytl", description="pytl: transfer learning with fused MMD ops")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    demo.add_parser(sub)
    divergence.add_parser(sub)
    feasibility.add_parsers(sub)
    curve.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pytl ARGV``'s exit status (argparse errors exit with status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import pytl

        print(f"pytl {pytl.__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args, argv)  # each subcommand's add_parser registers its runner


def exit_status(argv: Sequence[str]) -> int | str | None:
    """``python -m pytl ARGV``'s exit status, run in this process, argparse's exits included (status 2):
    for tests that drive the command line."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code
