"""The semi-supervised strategies with ``ssl_epochs`` (cheaper), against the exact ones, on saved comparisons.

    python benchmarks/vector_regime.py --features embeddings --modes fixed --save runs/   # the exact runs, saved
    python benchmarks/ssl_epochs.py runs/ --features embeddings --epochs 20               # markdown on stdout
    python benchmarks/ssl_epochs.py runs/ --features embeddings --epochs 30 --start initial

"ssl_<a>" trains its stage 1 from the initial weights for ``align_epochs``, and under cross-validation once
more per fold: most of a comparison's time. With ``ssl_epochs=k`` it starts from "source_only" (which never saw
a target label) and trains k epochs, in the shipped model and in every fold alike, so the estimate is of what
ships. ``--start initial`` measures the other cheap path instead: k epochs from the initial weights (what
``align_epochs=k`` does to them), again in the shipped model and every fold. For each saved exact run (same
pair, seed and settings) this reruns the five semi-supervised strategies with k, puts their predictions
(held-out and test) in place of the exact ones and reports:

- their seconds (shipped model and cross-validation) against the exact ones (folds + 1 times each strategy's
  saved shipped seconds, where the run saved them);
- each one's test accuracy, exact → cheap, and scratch's;
- the ranking of every strategy by its calibrated held-out cross-entropy (Kendall's τ between the two);
- ``report.best`` (every strategy, weighted_ensemble included) both ways, and the test accuracy of what it ships.

(Its first version checked cheap folds under the exact shipped model: benchmarks/OUTCOMES.md, fifth session.)
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import pytl  # noqa: E402
from real_pairs import load_pair  # noqa: E402
from selection_rules import FOLDS  # noqa: E402
from tabular_pairs import load_tabular_pair  # noqa: E402
from vector_regime import vectors  # noqa: E402

from pytl.experiments import ComparisonReport, fixed_lambdas  # noqa: E402
from pytl.experiments.estimate import Estimate  # noqa: E402
from pytl.experiments.folds import stratified_folds  # noqa: E402
from pytl.experiments.strategies import SEMI_SUPERVISED, STRATEGIES  # noqa: E402
from pytl.experiments.weighted_ensemble import WEIGHTED_ENSEMBLE, mixture, weigh  # noqa: E402


def kendall_tau(a: list[str], b: list[str]) -> float:
    """Kendall's τ between two orders of the same names."""
    pos = {s: i for i, s in enumerate(b)}
    n, score = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            score += 1 if pos[a[i]] < pos[a[j]] else -1
    return score / (n * (n - 1) / 2)


def best_of(log_proba: dict[str, torch.Tensor], y: torch.Tensor, folds: list[torch.Tensor],
            test_proba: dict[str, torch.Tensor], test_y: torch.Tensor) -> tuple[str, list[str], float]:
    """report.best over every strategy (weighted_ensemble included), the strategies ranked by their loss, and
    the test accuracy of what best ships (the weighted ensemble: its members' saved test probabilities mixed)."""
    estimate = {s: Estimate.from_predictions(lp, y, folds) for s, lp in log_proba.items()}
    we = weigh(log_proba, y, folds, STRATEGIES)
    estimate[WEIGHTED_ENSEMBLE] = we.estimate
    r = ComparisonReport(accuracy={}, embedding_mmd2={}, seconds={}, skipped={}, models={}, histories={}, config={},
                         estimate=estimate, weighted_ensemble=we)
    ranked = sorted(log_proba, key=lambda s: (*estimate[s].rank_key(), STRATEGIES.index(s)))
    if r.best == WEIGHTED_ENSEMBLE:
        test = mixture([test_proba[s].double().clamp_min(1e-30).log() for s in we.members], we.weights,
                       we.temperatures)
    else:
        test = test_proba[r.best]
    return r.best, ranked, float((test.argmax(1) == test_y).double().mean())


def check(path: str, features: str, epochs: int, threads: int, start: str = "source_only") -> dict:
    saved = torch.load(path, weights_only=False)
    stem = os.path.basename(path)[:-3]
    name, seed = stem.split("_")[1], int(stem.rsplit("_", 1)[1])
    if features == "tabular":
        data = load_tabular_pair(name, seed, labels_per_class=5)
    else:
        data = vectors(load_pair(name, seed, labels_per_class=5), features, name, seed)
    ssl = [s for s in SEMI_SUPERVISED if s in saved["accuracy"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # "initial": k epochs from the initial weights (align_epochs only reaches the semi-supervised runs here)
        short = {"ssl_epochs": epochs} if start == "source_only" else {"align_epochs": epochs}
        r = pytl.compare_strategies(**data, strategies=ssl, seed=seed, folds=FOLDS, num_threads=threads, **short,
                                    **fixed_lambdas())  # as the saved "fixed" runs it is compared with
    y = saved["labeled_y"]
    folds = stratified_folds(y, FOLDS, seed)
    exact = {s: lp.double() for s, lp in saved["cv_log_proba"].items()
             if lp is not None and s != WEIGHTED_ENSEMBLE and s in STRATEGIES}
    cheap = {**exact, **{s: r.estimate[s].log_proba for s in ssl}}
    xt = data["target_test"][0]
    tp, ty = saved["test_proba"], saved["test_y"]
    tp_cheap = {**tp, **{s: torch.as_tensor(r.predict_proba(s, xt)) for s in ssl}}
    best_exact, rank_exact, acc_exact = best_of(exact, y, folds, tp, ty)
    best_cheap, rank_cheap, acc_cheap = best_of(cheap, y, folds, tp_cheap, ty)
    saved_seconds = saved.get("seconds")
    return {"run": stem, "seconds": (None if saved_seconds is None else
                                     (FOLDS + 1) * sum(saved_seconds[s] for s in ssl),
                                     sum(r.seconds[s] for s in ssl) + r.cv_seconds),
            "test": {s: (saved["accuracy"][s], r.accuracy[s]) for s in ssl}, "scratch": saved["accuracy"]["scratch"],
            "tau": kendall_tau(rank_exact, rank_cheap), "best": (best_exact, best_cheap),
            "best_test": (acc_exact, acc_cheap)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="where vector_regime.py --save wrote its exact runs")
    ap.add_argument("--features", choices=("pixels", "embeddings", "tabular"), default="embeddings")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--runs", nargs="*", default=None, help="only saved runs whose name contains one of these")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--start", choices=("source_only", "initial"), default="source_only",
                    help="where the cheap stage 1 starts: source_only (ssl_epochs) or the initial weights")
    args = ap.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(args.folder, f"{args.features}_*_fixed_*.pt")))
    paths = [p for p in paths if args.runs is None or any(k in os.path.basename(p) for k in args.runs)]
    print(f"# {args.epochs} stage-1 epochs from {args.start} against the exact semi-supervised strategies: "
          f"{args.features}, torch {torch.__version__}, {args.threads} thread(s)\n")
    print("| run | ssl seconds exact → cheap | test accuracy exact → cheap | scratch | Kendall τ (all) | best | "
          "its test accuracy |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        c = check(path, args.features, args.epochs, args.threads, args.start)
        exact_s = "-" if c["seconds"][0] is None else f"{c['seconds'][0]:.0f}"
        test = ", ".join(f"{s[4:]} {100 * a:.1f}→{100 * b:.1f}" for s, (a, b) in c["test"].items())
        print(f"| {c['run']} | {exact_s} → {c['seconds'][1]:.0f} | {test} | {100 * c['scratch']:.1f} | "
              f"{c['tau']:.2f} | {c['best'][0]} → {c['best'][1]} | "
              f"{100 * c['best_test'][0]:.1f} → {100 * c['best_test'][1]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
