"""How often stage 1 collapses, and whether pytl.train.collapse's warning says so: on the real pairs, every
unsupervised stage-1 strategy at the default λs (or a λ of your own), in the vector regime.

    python benchmarks/collapse_check.py --features pixels --pairs mnist->mnist-m --seeds 1   # markdown on stdout

Per run and strategy: the source training accuracy at its best epoch and the median of the last three (what the
rule compares), whether a TrainingWarning came, and the target test accuracy beside source_only's. A warning
where the target accuracy held up is a false alarm; a target accuracy far below source_only's without one is a
miss.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import torch  # noqa: E402

import pytl  # noqa: E402
from real_pairs import PAIR_NAMES, load_pair, pair_name  # noqa: E402
from tabular_pairs import TABULAR_PAIRS, load_tabular_pair  # noqa: E402
from vector_regime import vectors  # noqa: E402

from pytl.experiments import fixed_lambdas  # noqa: E402
from pytl.experiments.strategies import ALIGNED  # noqa: E402
from pytl.train import TrainingWarning  # noqa: E402
from pytl.train.collapse import LAST_EPOCHS  # noqa: E402


def check(name: str, seed: int, features: str, threads: int, lambdas: dict) -> list[dict]:
    if features == "tabular":
        data = load_tabular_pair(name, seed, labels_per_class=5)
    else:
        data = vectors(load_pair(name, seed, labels_per_class=5), features, name, seed)
    strategies = ["source_only", *(f"{a}_only" for a in ALIGNED)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", TrainingWarning)
        # with the target labels, as the saved comparisons ran (without, 20% of the source is held out to rank)
        r = pytl.compare_strategies(**data, strategies=strategies, seed=seed, folds=None, num_threads=threads,
                                    **{**fixed_lambdas(), **lambdas})
    top: dict[str, float] = {}  # each model's most-predicted class: its share of the unlabelled target
    warned = {str(w.message).split(" (")[0] for w in seen if issubclass(w.category, TrainingWarning)}
    rows = []
    xu = torch.as_tensor(data["target_unlabeled"])
    for s in strategies:
        predicted = torch.as_tensor(r.predict(s, xu))
        top[s] = float(torch.bincount(predicted).max()) / len(predicted)
    for s in strategies[1:]:
        acc = [rec["train_acc"] for rec in r.histories[s]["align"]]
        rows.append({"run": f"{features} {name} seed {seed}", "strategy": s, "best": max(acc),
                     "last": sorted(acc[-LAST_EPOCHS:])[LAST_EPOCHS // 2], "warned": s in warned,
                     "target": r.accuracy[s], "source_only": r.accuracy["source_only"], "top": top[s],
                     "top_source_only": top["source_only"]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="*", default=list(PAIR_NAMES))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--features", choices=("pixels", "embeddings", "tabular"), default="pixels")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lambda", dest="lambdas", nargs="*", default=[], metavar="OPTION=VALUE",
                    help="λs other than the defaults, e.g. lambda_coral=10000")
    args = ap.parse_args(argv)
    lambdas = {k: float(v) for k, v in (item.split("=") for item in args.lambdas)}
    names = TABULAR_PAIRS if args.features == "tabular" else [pair_name(p) for p in args.pairs]
    print(f"# stage-1 collapse: {args.features}, λ {lambdas or 'defaults'}; torch {torch.__version__}\n")
    print("| run | strategy | source acc best → last | warned | target acc (source_only) | target's top class "
          "share (source_only) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for seed in range(args.seeds):
            for row in check(name, seed, args.features, args.threads, lambdas):
                print(f"| {row['run']} | {row['strategy']} | {row['best']:.2f} → {row['last']:.2f} | "
                      f"{'yes' if row['warned'] else 'no'} | {100 * row['target']:.1f} "
                      f"({100 * row['source_only']:.1f}) | {row['top']:.2f} ({row['top_source_only']:.2f}) |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
