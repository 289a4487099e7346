"""``python -m pytl curve {data-efficiency,layers,divergence}``: run one curve of :mod:`pytl.experiments`
on the tutorial's synthetic domain shift, print its table, and save it as CSV/JSON and a figure."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from pytl import plot
from pytl.cli.options import (
    UsageError,
    add_training_options,
    angle_list,
    check_figure_path,
    device_option,
    int_list,
    non_negative_int,
    positive_int,
)
from pytl.data import make_domain_shift
from pytl.experiments import CurveTable, data_efficiency_curve, divergence_sweep, layer_transferability

__all__ = ["CURVE_DEFAULT_SEEDS", "CURVE_KINDS", "add_parser", "run_curve"]

CURVE_KINDS = ("data-efficiency", "layers", "divergence")
CURVE_DEFAULT_SEEDS = {"data-efficiency": 5, "layers": 5, "divergence": 3}


def add_parser(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", metavar="FILE.png", default=None,
                        help="save the figure (.png, .pdf, .svg or .jpg; needs matplotlib)")
    common.add_argument("--csv", metavar="FILE.csv", default=None, help="also write the table as CSV")
    common.add_argument("--json", metavar="FILE.json", default=None, help="also write the table as JSON")
    common.add_argument("--seeds", type=positive_int, default=None,
                        help="number of seeds (seed, seed+1, ...); default 5 (divergence: 3)")
    common.add_argument("--seed", type=non_negative_int, default=0, help="first seed (default 0)")
    common.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    common.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads while training (default 1)")
    common.add_argument("--quiet", action="store_true", help="no progress line per run on stderr")
    curve = sub.add_parser(
        "curve",
        help="transfer curves: data efficiency, layer transferability, divergence sweep",
        description="Train many small models on the tutorial's synthetic domain shift (two moons) and print a "
                    "curve's table (mean ± std over seeds); --out FILE.png draws it.",
    )
    curve.set_defaults(run=lambda args, argv: run_curve(args))
    kinds = curve.add_subparsers(dest="kind", metavar="{" + ",".join(CURVE_KINDS) + "}", required=True)
    de = kinds.add_parser(
        "data-efficiency", parents=[common], help="target accuracy vs number of target labels",
        description="Target accuracy vs the number of target labels for scratch, naive and mmd transfer "
                    "(pytl.experiments.data_efficiency_curve). Default: about a minute on a 2-core CPU.")
    de.add_argument("--labels", type=int_list(1), default=[10, 20, 50, 100, 200, 500, 1000],
                    help="comma-separated target label counts (default 10,20,50,100,200,500,1000)")
    layers = kinds.add_parser(
        "layers", parents=[common], help="Yosinski et al.: copy k layers, frozen vs fine-tuned",
        description="For k = 0..L copy the first k layers of a source-trained MLP, train the rest on the target "
                    "labels with the copied layers frozen and fine-tuned (pytl.experiments.layer_transferability).")
    layers.add_argument("--layers", type=int_list(0), default=None, help="comma-separated values of k, layers copied (default 0..depth)")
    layers.add_argument("--depth", type=positive_int, default=4, help="hidden layers L of the MLP (default 4)")
    layers.add_argument("--width", type=positive_int, default=64, help="units per hidden layer (default 64)")
    layers.add_argument("--labels", type=positive_int, default=50, help="labelled target samples (default 50)")
    layers.add_argument("--source-epochs", type=non_negative_int, default=100, help="source training epochs (100)")
    layers.add_argument("--target-epochs", type=positive_int, default=50, help="target training epochs (50)")
    div = kinds.add_parser(
        "divergence", parents=[common], help="transfer vs scratch as the target rotates away; the crossover",
        description="Transfer vs scratch accuracy as the target domain is rotated further from the source, the "
                    "input MMD² at each angle and the crossover where transfer stops paying "
                    "(pytl.experiments.divergence_sweep). Default: about two minutes on a 2-core CPU.")
    div.add_argument("--angles", type=angle_list, default=[0, 30, 60, 90, 120, 150, 180],
                     help="comma-separated rotation angles in degrees (default 0,30,60,90,120,150,180)")
    div.add_argument("--labels", type=positive_int, default=50, help="labelled target samples (default 50)")
    for p, rotation, shift in ((de, 30.0, (3.0, 3.0)), (layers, 30.0, (3.0, 3.0)), (div, None, (0.0, 0.0))):
        if rotation is not None:
            p.add_argument("--rotation", type=float, default=rotation, help=f"target rotation in degrees ({rotation:g})")
        p.add_argument("--shift", type=float, nargs=2, default=shift, metavar=("DX", "DY"),
                       help=f"target translation (default {shift[0]:g} {shift[1]:g})")
    for p in (de, div):
        add_training_options(p)


def run_curve(args: argparse.Namespace) -> int:
    """Checks the outputs and the device, runs the curve, prints its table and writes what was asked."""
    try:
        check_figure_path(args.out, "--out")
        for flag in ("out", "csv", "json"):
            path = getattr(args, flag)
            if path is not None and not Path(path).absolute().parent.is_dir():
                raise UsageError(f"--{flag}: the folder of {path!r} does not exist")
        device = device_option(args.device)
    except UsageError as e:
        return _fail(args, str(e))
    seeds = list(range(args.seed, args.seed + (args.seeds or CURVE_DEFAULT_SEEDS[args.kind])))
    start = time.perf_counter()
    try:
        table = _run_kind(args, seeds, device)
    except (ValueError, TypeError) as exc:
        return _fail(args, str(exc))
    print(table.table())
    print(f"\n{len(seeds)} seed(s) in {time.perf_counter() - start:.1f}s")
    if args.csv is not None:
        table.to_csv(args.csv)
        print(f"table written to {args.csv}")
    if args.json is not None:
        table.to_json(args.json)
        print(f"table written to {args.json}")
    if args.out is not None:
        plot.plot_curve(table, args.out)
        print(f"figure written to {args.out}")
    return 0


def _run_kind(args: argparse.Namespace, seeds: list[int], device: Any) -> CurveTable:
    verbose = not args.quiet
    shift = tuple(args.shift)
    if args.kind == "data-efficiency":
        n_max = max(args.labels)
        return data_efficiency_curve(
            args.labels, seeds, verbose=verbose,
            data=lambda s: make_domain_shift(s, n_target_labeled=n_max, rotation=args.rotation, shift=shift),
            lambda_mmd=args.lambda_mmd, align_epochs=args.align_epochs, finetune_epochs=args.finetune_epochs,
            device=device, num_threads=args.threads)
    if args.kind == "layers":
        return layer_transferability(
            args.layers, seeds, verbose=verbose, hidden_sizes=(args.width,) * args.depth,
            data=lambda s: make_domain_shift(s, n_target_labeled=args.labels, rotation=args.rotation, shift=shift),
            source_epochs=args.source_epochs, target_epochs=args.target_epochs, device=device,
            num_threads=args.threads)
    return divergence_sweep(
        args.angles, seeds, verbose=verbose, n_target_labeled=args.labels, shift=shift,
        lambda_mmd=args.lambda_mmd, align_epochs=args.align_epochs, finetune_epochs=args.finetune_epochs,
        device=device, num_threads=args.threads)


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"pytl curve {args.kind}: {message}", file=sys.stderr)
    return 2
