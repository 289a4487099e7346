"""``python -m pytl demo``: the tutorial's experiment, every strategy of ``compare_strategies`` on two
classes in 2-D with a rotated and shifted target domain, and the comparison table."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any


from pytl import plot
from pytl.cli import torchrun
from pytl.cli.options import (
    UsageError,
    add_training_options,
    check_figure_path,
    device_option,
    non_negative_int,
    positive_int,
)
from pytl.data import make_domain_shift
from pytl.experiments import compare_strategies, summarize
from pytl.experiments.folds import DEFAULT_FOLDS

__all__ = ["add_parser", "run_demo"]


def add_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="compare transfer strategies on the tutorial's synthetic domain shift",
        description="Train source_only, mmd_only, scratch, naive, mmd and ensemble on two classes in 2-D "
                    "with a rotated and shifted target domain, and print the comparison table.",
    )
    demo.set_defaults(run=lambda args, argv: run_demo(args, argv))
    demo.add_argument("--seed", type=non_negative_int, default=0, help="first seed (data and weights; default 0)")
    demo.add_argument("--seeds", type=positive_int, default=1,
                      help="number of seeds to run (seed, seed+1, ...) and average (default 1)")
    add_training_options(demo)
    demo.add_argument("--labels", type=positive_int, default=50, help="labelled target samples (default 50)")
    demo.add_argument("--folds", type=non_negative_int, default=DEFAULT_FOLDS,
                      help="stratified folds of the target labels for the cross-validated estimate, the verdict "
                           f"and the best strategy (default {DEFAULT_FOLDS}; 0 skips them; each class needs this "
                           "many labels)")
    demo.add_argument("--rotation", type=float, default=30.0, help="target rotation in degrees (default 30)")
    demo.add_argument("--shift", type=float, nargs=2, default=(3.0, 3.0), metavar=("DX", "DY"),
                      help="target shift (default 3 3)")
    demo.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    demo.add_argument("--threads", type=positive_int, default=1,
                      help="torch CPU threads while training (default 1: the demo's models are tiny, and one "
                           "thread avoids OpenMP synchronisation that costs more than it saves)")
    demo.add_argument("--plot", metavar="FILE.png", default=None,
                      help="save a figure of both domains and each strategy's decision boundary, and beside it "
                           "FILE_embeddings.png: source and target embeddings of source_only and mmd_only (needs "
                           "matplotlib)")
    demo.add_argument("--progress", action="store_true", help="show a progress bar per training run")
    demo.add_argument("--distributed", type=positive_int, default=None, metavar="N",
                      help="train every strategy with DistributedDataParallel on N local processes (starts "
                           "torchrun --standalone --nproc_per_node=N -m pytl demo ...; gloo on CPU, NCCL on CUDA): "
                           "each rank trains its part of every batch, the MMD² is that of the global batch")


def run_demo(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """The demo, in one process, or under torchrun: every rank runs it, only rank 0 prints and plots."""
    if args.distributed is not None and not torchrun.under_torchrun():
        return torchrun.relaunch(args.distributed, list(sys.argv[1:] if argv is None else argv))
    return torchrun.run_on_every_rank(_run, args, rank0_only=("plot",))


def _run(args: argparse.Namespace) -> int:
    try:
        check_figure_path(args.plot, "--plot")
        device = device_option(args.device)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    seeds = list(range(args.seed, args.seed + args.seeds))
    print(f"pytl demo: two classes in 2-D (moons), target rotated {args.rotation:g}° and shifted "
          f"({args.shift[0]:g}, {args.shift[1]:g}); {args.labels} target labels; λ = {_shown(args.lambda_mmd)}, "
          f"{args.align_epochs} alignment + {args.finetune_epochs} fine-tuning epochs; device {device}; "
          f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
    start = time.perf_counter()
    reports, first_data = [], None
    for seed in seeds:
        data = make_domain_shift(seed, n_target_labeled=args.labels, rotation=args.rotation, shift=tuple(args.shift))
        first_data = first_data or data
        t0 = time.perf_counter()
        try:  # every argument is checked before the first training
            report = compare_strategies(**data.as_dict(), folds=args.folds, seed=seed, lambda_mmd=args.lambda_mmd,
                                        align_epochs=args.align_epochs, finetune_epochs=args.finetune_epochs,
                                        device=device, progress=args.progress, num_threads=args.threads)
        except ValueError as e:
            print(f"error: --labels {args.labels}, --folds {args.folds}: {e}", file=sys.stderr)
            return 2
        reports.append(report)
        if len(seeds) > 1:
            accs = "  ".join(f"{s} {100 * a:.1f}%" for s, a in report.accuracy.items())
            print(f"seed {seed} ({time.perf_counter() - t0:.1f}s): {accs}", flush=True)
    print()
    print(reports[0].table() if len(reports) == 1 else summarize(reports).table())
    if len(reports) == 1:
        print("\n" + reports[0].explain())
    print(f"\n{len(seeds)} seed(s) in {time.perf_counter() - start:.1f}s")
    if args.plot is not None:
        plot.plot_report(reports[0], first_data, args.plot)
        print(f"figure (seed {seeds[0]}) written to {args.plot}")
        shown = [s for s in ("source_only", "mmd_only") if s in reports[0].models]
        if shown:
            stem, dot, suffix = args.plot.rpartition(".")
            embeddings = f"{stem}_embeddings{dot}{suffix}"
            plot.plot_embeddings(reports[0], first_data.source, first_data.target_test, embeddings, strategies=shown)
            print(f"embeddings (seed {seeds[0]}) written to {embeddings}")
    return 0


def _shown(lam: float | str) -> str:
    """λ as the demo's first line states it ("auto": the report's table names the λ chosen)."""
    return f"{lam:g}" if isinstance(lam, float) else f"{lam} (chosen by the target labels; the table names it)"
