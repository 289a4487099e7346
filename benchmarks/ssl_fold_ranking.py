"""Cheaper cross-validation of the semi-supervised strategies (``ssl_fold_epochs``), checked against the exact one.

    python benchmarks/vector_regime.py --features embeddings --modes fixed --save runs/   # the exact runs, saved
    python benchmarks/ssl_fold_ranking.py runs/ --features embeddings --fold-epochs 20    # markdown on stdout

Cross-validating "ssl_<a>" exactly trains each fold's stage 1 from the initial weights (``align_epochs``), so
the five semi-supervised strategies cost five stage-1 runs per fold: most of a comparison's time. With
``ssl_fold_epochs=k`` each fold's stage 1 starts from "source_only" (which never saw a target label) and trains k
epochs. The shipped models are the same either way; only their estimates change. For each saved exact run
(same pair, seed and settings) this reruns the five semi-supervised strategies with k, puts their estimates in
place of the exact ones and reports:

- their cross-validation seconds against the exact ones (folds × each strategy's shipped seconds: a fold
  trains what the shipped model trains, on 1/folds fewer labels);
- each one's calibrated held-out cross-entropy, exact → cheap;
- the ranking of every strategy by that loss (Kendall's τ between the two rankings) and the rank of the
  first semi-supervised strategy;
- ``report.best`` (every strategy, weighted_ensemble included) both ways, and the test accuracy of what it ships.

The shipped semi-supervised models' test accuracies must equal the saved ones (the same runs): checked.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
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

from pytl.experiments import ComparisonReport  # noqa: E402
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


def check(path: str, features: str, fold_epochs: int, threads: int) -> dict:
    saved = torch.load(path, weights_only=False)
    stem = os.path.basename(path)[:-3]
    name, seed = stem.split("_")[1], int(stem.rsplit("_", 1)[1])
    if features == "tabular":
        data = load_tabular_pair(name, seed, labels_per_class=5)
    else:
        data = vectors(load_pair(name, seed, labels_per_class=5), features, name, seed)
    ssl = [s for s in SEMI_SUPERVISED if s in saved["accuracy"]]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = pytl.compare_strategies(**data, strategies=ssl, seed=seed, folds=FOLDS, num_threads=threads,
                                    ssl_fold_epochs=fold_epochs)
    seconds = time.perf_counter() - t0
    for s in ssl:  # the same shipped models as the saved run's
        if abs(r.accuracy[s] - saved["accuracy"][s]) > 1e-9:
            raise RuntimeError(f"{stem}: {s} test accuracy {r.accuracy[s]} != saved {saved['accuracy'][s]}")
    y = saved["labeled_y"]
    folds = stratified_folds(y, FOLDS, seed)
    exact = {s: lp.double() for s, lp in saved["cv_log_proba"].items()
             if lp is not None and s != WEIGHTED_ENSEMBLE and s in STRATEGIES}
    cheap = {**exact, **{s: r.estimate[s].log_proba for s in ssl}}
    tp, ty = saved["test_proba"], saved["test_y"]
    best_exact, rank_exact, acc_exact = best_of(exact, y, folds, tp, ty)
    best_cheap, rank_cheap, acc_cheap = best_of(cheap, y, folds, tp, ty)
    loss = {s: (Estimate.from_predictions(exact[s], y, folds).loss, r.estimate[s].loss) for s in ssl}
    first_ssl = (min(rank_exact.index(s) for s in ssl) + 1, min(rank_cheap.index(s) for s in ssl) + 1)
    return {"run": stem, "cv_exact": FOLDS * sum(r.seconds[s] for s in ssl), "cv_cheap": r.cv_seconds,
            "seconds": seconds, "loss": loss, "tau": kendall_tau(rank_exact, rank_cheap), "first_ssl": first_ssl,
            "best": (best_exact, best_cheap), "best_test": (acc_exact, acc_cheap),
            "top": (rank_exact[0], rank_cheap[0])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="where vector_regime.py --save wrote its exact runs")
    ap.add_argument("--features", choices=("pixels", "embeddings", "tabular"), default="embeddings")
    ap.add_argument("--fold-epochs", type=int, default=20)
    ap.add_argument("--runs", nargs="*", default=None, help="only saved runs whose name contains one of these")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(args.folder, f"{args.features}_*_fixed_*.pt")))
    paths = [p for p in paths if args.runs is None or any(k in os.path.basename(p) for k in args.runs)]
    print(f"# ssl_fold_epochs={args.fold_epochs} against exact per-fold stage 1: {args.features}, torch "
          f"{torch.__version__}, {args.threads} thread(s)\n")
    print("| run | ssl CV s exact → cheap | calibrated CE exact → cheap | Kendall τ (all) | first ssl rank | "
          "top | best | its test accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        c = check(path, args.features, args.fold_epochs, args.threads)
        losses = ", ".join(f"{s[4:]} {a:.2f}→{b:.2f}" for s, (a, b) in c["loss"].items())
        same = "same" if c["best"] == (c["best"][0],) * 2 and c["best_test"][0] == c["best_test"][1] else "changed"
        print(f"| {c['run']} | {c['cv_exact']:.0f} → {c['cv_cheap']:.0f} | {losses} | {c['tau']:.2f} | "
              f"{c['first_ssl'][0]} → {c['first_ssl'][1]} | {c['top'][0]} → {c['top'][1]} | "
              f"{c['best'][0]} → {c['best'][1]} ({same}) | "
              f"{100 * c['best_test'][0]:.1f} → {100 * c['best_test'][1]:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
