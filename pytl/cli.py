"""Command line: ``python -m pytl demo`` reproduces the tutorial's experiment.

Two classes in 2-D, a target domain rotated and shifted; every strategy of ``compare_strategies``
is trained with the tutorial's recipe (λ = 0.5, 100 alignment epochs, 50 fine-tuning epochs, 50
target labels) and the comparison table is printed. ``--plot FILE.png`` draws both domains and each
strategy's decision boundary (needs matplotlib).

``python -m pytl divergence SRC TGT`` reports how far apart two feature sets are;
``python -m pytl curve {data-efficiency,layers,divergence} --out FILE.png`` runs a curve of
``pytl.curves``, prints its table and draws it with ``pytl.plot``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]


def _bounded(convert: Any, minimum: float, what: str) -> Any:
    """An argparse type: ``convert(text)``, finite and >= minimum, else a message saying ``what`` was expected."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not minimum <= value < math.inf:  # also rejects NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _bounded(int, 1, "a positive integer")
_non_negative_int = _bounded(int, 0, "an integer >= 0")
_non_negative_float = _bounded(float, 0.0, "a finite number >= 0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pytl", description="pytl: transfer learning with fused MMD ops")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser(
        "demo",
        help="compare transfer strategies on the tutorial's synthetic domain shift",
        description="Train source_only, mmd_only, scratch, naive, mmd and ensemble on two classes in 2-D "
                    "with a rotated and shifted target domain, and print the comparison table.",
    )
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="first seed (data and weights; default 0)")
    demo.add_argument("--seeds", type=_positive_int, default=1,
                      help="number of seeds to run (seed, seed+1, ...) and average (default 1)")
    demo.add_argument("--lambda", dest="lambda_mmd", type=_non_negative_float, default=0.5,
                      help="weight λ of the MMD² term (default 0.5)")
    demo.add_argument("--align-epochs", type=_non_negative_int, default=100, help="stage-1 epochs (default 100)")
    demo.add_argument("--finetune-epochs", type=_non_negative_int, default=50, help="stage-2 epochs (default 50)")
    demo.add_argument("--labels", type=_positive_int, default=50, help="labelled target samples (default 50)")
    demo.add_argument("--rotation", type=float, default=30.0, help="target rotation in degrees (default 30)")
    demo.add_argument("--shift", type=float, nargs=2, default=(3.0, 3.0), metavar=("DX", "DY"),
                      help="target shift (default 3 3)")
    demo.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    demo.add_argument("--threads", type=_positive_int, default=1,
                      help="torch CPU threads while training (default 1: the demo's models are tiny, and one "
                           "thread avoids OpenMP synchronisation that costs more than it saves)")
    demo.add_argument("--plot", metavar="FILE.png", default=None,
                      help="save a figure of both domains and each strategy's decision boundary (needs matplotlib)")
    demo.add_argument("--progress", action="store_true", help="show a progress bar per training run")
    demo.add_argument("--distributed", type=_positive_int, default=None, metavar="N",
                      help="train every strategy with DistributedDataParallel on N local processes (starts "
                           "torchrun --standalone --nproc_per_node=N -m pytl demo ...; gloo on CPU, NCCL on CUDA): "
                           "each rank trains its part of every batch, the MMD² is that of the global batch")
    div = sub.add_parser(
        "divergence",
        help="how far apart are two feature sets? MMD test, proxy A-distance and a verdict",
        description="Load source and target features (.npy, .npz with one array or --key, .csv) of the same "
                    "width, one sample per row, and print pytl.domain_divergence's report.",
    )
    div.add_argument("source", help="source features: .npy, .npz or .csv")
    div.add_argument("target", help="target features: .npy, .npz or .csv")
    div.add_argument("--key", default=None, help="array name inside .npz files with several arrays")
    div.add_argument("--permutations", type=_positive_int, default=500, help="permutations of the MMD test (default 500)")
    div.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the test and the classifier split")
    _add_curve_parser(sub)
    return parser


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
    import torch

    from pytl.diagnostics import domain_divergence

    try:
        xs, xt = load_features(args.source, args.key), load_features(args.target, args.key)
        report = domain_divergence(torch.from_numpy(xs), torch.from_numpy(xt),
                                   num_permutations=args.permutations, seed=args.seed)
    except (ValueError, TypeError) as exc:
        print(f"pytl divergence: {exc}", file=sys.stderr)
        return 2
    print(f"MMD² {report.mmd2:.5f}   p-value {report.p_value:.4f}   proxy A-distance {report.proxy_a_distance:.3f}   "
          f"verdict: {report.verdict}")
    print(report.explain())
    return 0


def _import_pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_report(report: Any, data: Any, path: str) -> None:
    """Both domains, then one panel per strategy with its decision boundary over the target test set."""
    import numpy as np
    import torch

    plt = _import_pyplot()
    if plt is None:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib (or pip install 'pytl[plot]')")
    xs, ys = data.source
    xu = data.target_unlabeled
    xt, yt = data.target_test
    xl, yl = data.target_labeled
    everything = np.concatenate([xs, xu, xt])
    lo, hi = everything.min(0) - 0.5, everything.max(0) + 0.5
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)

    strategies = list(report.accuracy)
    ncols = 4 if len(strategies) + 1 > 3 else len(strategies) + 1
    nrows = -(-(len(strategies) + 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.6 * nrows), squeeze=False)
    colors = np.array(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"])
    ax = axes[0][0]
    ax.scatter(xs[:, 0], xs[:, 1], c=colors[ys % 5], s=6, alpha=0.5, marker="o")
    ax.scatter(xt[:, 0], xt[:, 1], c=colors[yt % 5], s=6, alpha=0.5, marker="x")
    ax.scatter(xl[:, 0], xl[:, 1], c=colors[yl % 5], s=30, edgecolors="k", marker="*", linewidths=0.5)
    ax.set_title("source (o), target (x), target labels (*)")
    for i, name in enumerate(strategies, start=1):
        ax = axes[i // ncols][i % ncols]
        proba = report.predict_proba(name, torch.from_numpy(grid)).numpy()
        pred = proba.argmax(1).reshape(gx.shape)
        ax.contourf(gx, gy, pred, levels=np.arange(proba.shape[1] + 1) - 0.5, alpha=0.25,
                    colors=list(colors[: proba.shape[1]]))
        if proba.shape[1] == 2:
            ax.contour(gx, gy, proba[:, 1].reshape(gx.shape), levels=[0.5], colors="k", linewidths=0.8)
        ax.scatter(xs[:, 0], xs[:, 1], c=colors[ys % 5], s=3, alpha=0.15, marker="o")
        ax.scatter(xt[:, 0], xt[:, 1], c=colors[yt % 5], s=5, alpha=0.5, marker="x")
        ax.set_title(f"{name}: {100 * report.accuracy[name]:.1f}% on target")
    for j in range(len(strategies) + 1, nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    for row in axes:
        for a in row:
            a.set_xlim(lo[0], hi[0])
            a.set_ylim(lo[1], hi[1])
            a.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """The demo, in one process, or under torchrun: every rank runs it, only rank 0 prints and plots."""
    import os

    if args.distributed is not None and "RANK" not in os.environ:
        return _start_torchrun(args.distributed, list(sys.argv[1:] if argv is None else argv))
    import contextlib
    import io

    import torch.distributed as dist

    from pytl import distributed as pd

    if not pd.init_from_env(device="cuda" if str(args.device).startswith("cuda") else "cpu"):
        return _run_demo(args)
    try:
        if pd.rank() == 0:
            print(f"torch.distributed: {pd.world_size()} processes, {dist.get_backend()}; each trains its part of "
                  "every batch (DDP), MMD² of the global batch; rank 0 prints", flush=True)
            return _run_demo(args)
        args = argparse.Namespace(**{**vars(args), "plot": None})
        with contextlib.redirect_stdout(io.StringIO()):
            return _run_demo(args)
    finally:
        dist.destroy_process_group()


def _start_torchrun(nproc: int, argv: list[str]) -> int:
    """Run ``python -m pytl ARGV`` (without --distributed) on nproc local processes with torchrun."""
    import os
    import subprocess

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--distributed":
            skip = True
        elif not a.startswith("--distributed="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "pytl", *rest]
    print(f"pytl: torchrun --standalone --nproc_per_node={nproc} -m pytl {' '.join(rest)}", file=sys.stderr, flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # torchrun's default, unannounced
    return subprocess.call(cmd, env=env)


def _run_demo(args: argparse.Namespace) -> int:
    from pytl.compare import compare_strategies, summarize
    from pytl.data import make_domain_shift
    from pytl.train import resolve_device

    if args.plot is not None:
        if not args.plot.lower().endswith((".png", ".pdf", ".svg", ".jpg", ".jpeg")):
            print(f"error: --plot expects a .png, .pdf, .svg or .jpg file name, got {args.plot!r}", file=sys.stderr)
            return 2
        if _import_pyplot() is None:
            print("error: --plot needs matplotlib: pip install matplotlib (or pip install 'pytl[plot]')",
                  file=sys.stderr)
            return 2
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        print(f"error: --device: {e}", file=sys.stderr)
        return 2

    seeds = list(range(args.seed, args.seed + args.seeds))
    print(f"pytl demo: two classes in 2-D (moons), target rotated {args.rotation:g}° and shifted "
          f"({args.shift[0]:g}, {args.shift[1]:g}); {args.labels} target labels; λ = {args.lambda_mmd:g}, "
          f"{args.align_epochs} alignment + {args.finetune_epochs} fine-tuning epochs; device {device}; "
          f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
    start = time.perf_counter()
    reports, first_data = [], None
    for seed in seeds:
        data = make_domain_shift(seed, n_target_labeled=args.labels, rotation=args.rotation, shift=tuple(args.shift))
        first_data = first_data or data
        t0 = time.perf_counter()
        report = compare_strategies(**data.as_dict(), seed=seed, lambda_mmd=args.lambda_mmd,
                                    align_epochs=args.align_epochs, finetune_epochs=args.finetune_epochs,
                                    device=device, progress=args.progress, num_threads=args.threads)
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
        plot_report(reports[0], first_data, args.plot)
        print(f"figure (seed {seeds[0]}) written to {args.plot}")
    return 0


# ------------------------------------------------------------------ python -m pytl curve KIND (pytl.curves)

CURVE_KINDS = ("data-efficiency", "layers", "divergence")
CURVE_DEFAULT_SEEDS = {"data-efficiency": 5, "layers": 5, "divergence": 3}
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _int_list(minimum: int):
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= {minimum} (e.g. 10,50,100), got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers >= {minimum}, got {text!r}")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"the values must be distinct, got {text!r}")
        return values

    return parse


def _angle_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated angles in degrees (e.g. 0,45,90), got {text!r}") from None
    if not values or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite angles in degrees, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"the angles must be distinct, got {text!r}")
    return values


def _add_curve_parser(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", metavar="FILE.png", default=None,
                        help="save the figure (.png, .pdf, .svg or .jpg; needs matplotlib)")
    common.add_argument("--csv", metavar="FILE.csv", default=None, help="also write the table as CSV")
    common.add_argument("--json", metavar="FILE.json", default=None, help="also write the table as JSON")
    common.add_argument("--seeds", type=_positive_int, default=None,
                        help="number of seeds (seed, seed+1, ...); default 5 (divergence: 3)")
    common.add_argument("--seed", type=_non_negative_int, default=0, help="first seed (default 0)")
    common.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    common.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads while training (default 1)")
    common.add_argument("--quiet", action="store_true", help="no progress line per run on stderr")
    curve = sub.add_parser(
        "curve",
        help="transfer curves: data efficiency, layer transferability, divergence sweep",
        description="Train many small models on the tutorial's synthetic domain shift (two moons) and print a "
                    "curve's table (mean ± std over seeds); --out FILE.png draws it.",
    )
    kinds = curve.add_subparsers(dest="kind", metavar="{" + ",".join(CURVE_KINDS) + "}", required=True)
    de = kinds.add_parser(
        "data-efficiency", parents=[common], help="target accuracy vs number of target labels",
        description="Target accuracy vs the number of target labels for scratch, naive and mmd transfer "
                    "(pytl.curves.data_efficiency_curve). Default: about a minute on a 2-core CPU.")
    de.add_argument("--labels", type=_int_list(1), default=[10, 20, 50, 100, 200, 500, 1000],
                    help="comma-separated target label counts (default 10,20,50,100,200,500,1000)")
    layers = kinds.add_parser(
        "layers", parents=[common], help="Yosinski et al.: copy k layers, frozen vs fine-tuned",
        description="For k = 0..L copy the first k layers of a source-trained MLP, train the rest on the target "
                    "labels with the copied layers frozen and fine-tuned (pytl.curves.layer_transferability).")
    layers.add_argument("--layers", type=_int_list(0), default=None, help="comma-separated values of k, layers copied (default 0..depth)")
    layers.add_argument("--depth", type=_positive_int, default=4, help="hidden layers L of the MLP (default 4)")
    layers.add_argument("--width", type=_positive_int, default=64, help="units per hidden layer (default 64)")
    layers.add_argument("--labels", type=_positive_int, default=50, help="labelled target samples (default 50)")
    layers.add_argument("--source-epochs", type=_non_negative_int, default=100, help="source training epochs (100)")
    layers.add_argument("--target-epochs", type=_positive_int, default=50, help="target training epochs (50)")
    div = kinds.add_parser(
        "divergence", parents=[common], help="transfer vs scratch as the target rotates away; the crossover",
        description="Transfer vs scratch accuracy as the target domain is rotated further from the source, the "
                    "input MMD² at each angle and the crossover where transfer stops paying "
                    "(pytl.curves.divergence_sweep). Default: about two minutes on a 2-core CPU.")
    div.add_argument("--angles", type=_angle_list, default=[0, 30, 60, 90, 120, 150, 180],
                     help="comma-separated rotation angles in degrees (default 0,30,60,90,120,150,180)")
    div.add_argument("--labels", type=_positive_int, default=50, help="labelled target samples (default 50)")
    for p, rotation, shift in ((de, 30.0, (3.0, 3.0)), (layers, 30.0, (3.0, 3.0)), (div, None, (0.0, 0.0))):
        if rotation is not None:
            p.add_argument("--rotation", type=float, default=rotation, help=f"target rotation in degrees ({rotation:g})")
        p.add_argument("--shift", type=float, nargs=2, default=shift, metavar=("DX", "DY"),
                       help=f"target translation (default {shift[0]:g} {shift[1]:g})")
    for p in (de, div):
        p.add_argument("--lambda", dest="lambda_mmd", type=_non_negative_float, default=0.5,
                       help="weight λ of the MMD² term (default 0.5)")
        p.add_argument("--align-epochs", type=_non_negative_int, default=100, help="stage-1 epochs (default 100)")
        p.add_argument("--finetune-epochs", type=_non_negative_int, default=50, help="stage-2 epochs (default 50)")


def run_curve(args: argparse.Namespace) -> int:
    from pytl import curves
    from pytl.data import make_domain_shift
    from pytl.train import resolve_device

    def fail(message: str) -> int:
        print(f"pytl curve {args.kind}: {message}", file=sys.stderr)
        return 2

    if args.out is not None:
        if not args.out.lower().endswith(FIGURE_SUFFIXES):
            return fail(f"--out expects a .png, .pdf, .svg or .jpg file name, got {args.out!r}")
        if _import_pyplot() is None:
            return fail("--out needs matplotlib: pip install matplotlib (or pip install 'pytl[plot]')")
    for flag in ("out", "csv", "json"):
        path = getattr(args, flag)
        if path is not None and not Path(path).absolute().parent.is_dir():
            return fail(f"--{flag}: the folder of {path!r} does not exist")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        return fail(f"--device: {e}")
    seeds = list(range(args.seed, args.seed + (args.seeds or CURVE_DEFAULT_SEEDS[args.kind])))
    verbose = not args.quiet
    shift = tuple(args.shift)
    start = time.perf_counter()
    try:
        if args.kind == "data-efficiency":
            n_max = max(args.labels)
            table = curves.data_efficiency_curve(
                args.labels, seeds, verbose=verbose,
                data=lambda s: make_domain_shift(s, n_target_labeled=n_max, rotation=args.rotation, shift=shift),
                lambda_mmd=args.lambda_mmd, align_epochs=args.align_epochs, finetune_epochs=args.finetune_epochs,
                device=device, num_threads=args.threads)
        elif args.kind == "layers":
            table = curves.layer_transferability(
                args.layers, seeds, verbose=verbose, hidden_sizes=(args.width,) * args.depth,
                data=lambda s: make_domain_shift(s, n_target_labeled=args.labels, rotation=args.rotation, shift=shift),
                source_epochs=args.source_epochs, target_epochs=args.target_epochs, device=device,
                num_threads=args.threads)
        else:
            table = curves.divergence_sweep(
                args.angles, seeds, verbose=verbose, n_target_labeled=args.labels, shift=shift,
                lambda_mmd=args.lambda_mmd, align_epochs=args.align_epochs, finetune_epochs=args.finetune_epochs,
                device=device, num_threads=args.threads)
    except (ValueError, TypeError) as exc:
        return fail(str(exc))
    print(table.table())
    print(f"\n{len(seeds)} seed(s) in {time.perf_counter() - start:.1f}s")
    if args.csv is not None:
        table.to_csv(args.csv)
        print(f"table written to {args.csv}")
    if args.json is not None:
        table.to_json(args.json)
        print(f"table written to {args.json}")
    if args.out is not None:
        from pytl.plot import plot_curve

        plot_curve(table, args.out)
        print(f"figure written to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import pytl

        print(f"pytl {pytl.__version__}")
        return 0
    if args.command == "demo":
        return run_demo(args, argv)
    if args.command == "divergence":
        return run_divergence(args)
    if args.command == "curve":
        return run_curve(args)
    parser.print_help()
    return 2
