"""How well does each label-free criterion rank models by their target accuracy?

    python benchmarks/label_free_ranking.py                     # the tutorial's 2-D problem, 5 seeds
    python benchmarks/label_free_ranking.py --pair NAME         # a pair of benchmarks/real_pairs.py (CNN)
    python benchmarks/label_free_ranking.py --seeds 0 1 --align-epochs 30   # quicker
    python benchmarks/label_free_ranking.py --pair mnist->mnist-m --lambdas 0 0.1 0.5 2 --seeds 0 1

For every seed: the pair's data, then ``pytl.select_lambda`` trains stage 1 (CE + λ·MMD²) once per λ of
the grid on 80 % of the source (stratified, seeded), and every criterion of pytl.validation scores
every model on the held-out 20 % and the unlabelled target; the true target test accuracy is measured
beside. The tutorial pair uses select_lambda's default model (100 epochs by default); a real pair
(``real_pairs.load_pair(name, seed)``, "->" accepted for "→") uses ``real_pairs.model_for``'s CNN,
seeded with the seed, its input statistics fitted on the training 80 % of the source and the unlabelled
target (the held-out 20 % stays unseen, as with select_lambda's own model), passed as ``model=``, and
20 epochs by default (benchmarks/outcomes.py's CONFIG); lr 1e-3 and batch 64 either way. Per criterion:

* Spearman's rank correlation between score and target accuracy over the λ grid, per seed, then the
  mean ± std over seeds (1: the criterion orders the models exactly as their accuracy does);
* the λ the criterion chooses (highest score, the smaller λ on a tie) and its target accuracy minus
  source-only's (λ = 0): the gain of trusting the criterion. A choice worse than source-only by more
  than noise (2 standard errors of the difference of two test accuracies) is counted and listed.

Beside the criteria: "src-acc", the accuracy on the held-out source (what one would use without any
adaptation-aware criterion), "oracle", the best λ by target test accuracy (an upper bound no label-free
criterion can exceed), and two variants: "dev[folds=1]" (in-sample density ratios) and "iwv[input]"
(density ratios on the inputs, as Sugiyama et al.). Runs on one thread, on the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

# Run from a checkout without installing: the repo root makes `import pytl` work.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import pytl  # noqa: E402
import pytl.validation as pv  # noqa: E402

#: the criteria measured, as (row name, criterion name, options)
VARIANTS = [
    ("iwv", "iwv", {}),
    ("iwv[input]", "iwv", {"features": "input"}),
    ("dev", "dev", {}),
    ("dev[folds=1]", "dev", {"folds": 1}),
    ("snd", "snd", {}),
    ("entropy", "entropy", {}),
    ("im", "im", {}),
]
LAMBDAS = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)


SOURCE_VALIDATION = 0.2  # select_lambda's default: the held-out fraction of the source
#: stage-1 epochs when --align-epochs is not given: select_lambda's default (100) on the tutorial problem,
#: benchmarks/outcomes.py's CONFIG (20) on a real pair (a CNN epoch on 2,000 digits takes seconds)
ALIGN_EPOCHS = {"tutorial": 100, "real": 20}


def real_pairs_module():
    """benchmarks/real_pairs.py (imported only when a real pair is asked for: it needs the bench extra)."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        import real_pairs  # type: ignore[import-not-found]
    except ImportError as e:
        raise SystemExit(f"a real pair needs benchmarks/real_pairs.py: {e}") from None
    return real_pairs


def pair_name(name: str) -> str:
    """"tutorial" or the canonical name of a real pair (SystemExit listing the choices otherwise)."""
    if name == "tutorial":
        return name
    real_pairs = real_pairs_module()
    try:
        return real_pairs.pair_name(name)
    except ValueError:
        raise SystemExit(f"--pair {name}: unknown; choose 'tutorial' or one of {list(real_pairs.PAIR_NAMES)}") from None


def load_pair(name: str, seed: int) -> dict[str, Any]:
    """The splits of pair ``name`` for ``seed``: source (X, y), target_unlabeled X, target_test (X, y)."""
    if name == "tutorial":
        return pytl.make_domain_shift(seed).as_dict()
    return real_pairs_module().load_pair(pair_name(name), seed)


def initial_model(name: str, seed: int, d: dict[str, Any]) -> torch.nn.Module | None:
    """The model select_lambda starts from: None (its own default) on the tutorial problem, else the pair's
    CNN with input statistics of the source rows select_lambda trains on (same split) and the target."""
    if name == "tutorial":
        return None
    from pytl.experiments.folds import split_source

    xs, ys = d["source"]
    train_idx, _ = split_source(torch.as_tensor(ys), SOURCE_VALIDATION, seed)
    train_idx = train_idx.numpy()
    stats_pair = {"source": (xs[train_idx], ys[train_idx]), "target_unlabeled": d["target_unlabeled"]}
    return real_pairs_module().model_for(name, seed, stats_pair)


def ranks(values: list[float]) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's ρ: Pearson's correlation of the (tie-averaged) ranks; NaN when either side is constant."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def choose(lambdas: tuple[float, ...], scores: list[float]) -> float:
    """The λ of the highest score, the smaller λ on a tie."""
    best = max(scores)
    return min(lam for lam, s in zip(lambdas, scores) if s == best)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: Any, y: Any) -> float:
    xt = torch.as_tensor(np.asarray(x)).to(next(model.parameters()).dtype)
    with pytl.train.eval_mode(model):
        pred = torch.cat([model(b).argmax(1) for b in xt.split(4096)])
    return float((pred == torch.as_tensor(np.asarray(y))).double().mean())


def run_seed(pair: str, seed: int, lambdas: tuple[float, ...], align_epochs: int) -> dict[str, Any]:
    d = load_pair(pair, seed)
    xs, ys = (np.asarray(a) for a in d["source"])
    xu = np.asarray(d["target_unlabeled"])
    xt, yt = (np.asarray(a) for a in d["target_test"])
    model = initial_model(pair, seed, {"source": (xs, ys), "target_unlabeled": xu})
    t0 = time.perf_counter()
    sel = pytl.select_lambda((xs, ys), xu, lambdas, criterion="entropy", seed=seed, model=model,
                             source_validation=SOURCE_VALIDATION, align_epochs=align_epochs, lr=1e-3,
                             batch_size=64, num_threads=1)
    train_s = time.perf_counter() - t0
    val = sel.validation_indices.numpy()
    source_val = (xs[val], ys[val])
    acc = [accuracy(sel.models[lam], xt, yt) for lam in lambdas]
    scores: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for row, name, options in VARIANTS:
        scores[row] = [pv.score(name, sel.models[lam], source_val, xu, **options) for lam in lambdas]
    scores["src-acc"] = [accuracy(sel.models[lam], *source_val) for lam in lambdas]
    scores["oracle"] = list(acc)
    return {"seed": seed, "accuracy": acc, "scores": scores, "n_test": int(len(yt)), "train_s": train_s,
            "score_s": time.perf_counter() - t0}


def summarize(runs: list[dict[str, Any]], lambdas: tuple[float, ...]) -> list[dict[str, Any]]:
    rows = []
    for crit in runs[0]["scores"]:
        rho, gain, chosen, worse = [], [], [], []
        for r in runs:
            s, acc = r["scores"][crit], r["accuracy"]
            rho.append(spearman(s, acc))
            lam = choose(lambdas, s)
            a, a0, n = acc[lambdas.index(lam)], acc[lambdas.index(0.0)], r["n_test"]
            g = a - a0
            gain.append(g)
            chosen.append(lam)
            noise = 2 * math.sqrt((a * (1 - a) + a0 * (1 - a0)) / n)
            if g < -noise:
                worse.append(f"seed {r['seed']}: λ={lam:g} {g:+.3f} (noise {noise:.3f})")
        rows.append({"criterion": crit, "spearman_mean": float(np.nanmean(rho)), "spearman_std": float(np.nanstd(rho)),
                     "spearman": rho, "gain_mean": float(np.mean(gain)), "gain_std": float(np.std(gain)),
                     "gain_min": float(np.min(gain)), "chosen": chosen, "worse_than_source_only": worse})
    return rows


def print_report(runs: list[dict[str, Any]], rows: list[dict[str, Any]], lambdas: tuple[float, ...]) -> None:
    print("target test accuracy per λ (rows: seeds)")
    print("  seed " + " ".join(f"{lam:>7g}" for lam in lambdas))
    for r in runs:
        print(f"  {r['seed']:>4} " + " ".join(f"{a:>7.3f}" for a in r["accuracy"]))
    print()
    print(f"{'criterion':<14} {'Spearman ρ':>14} {'gain vs λ=0':>16} {'worst':>7}  chosen λ per seed")
    for row in rows:
        rho = f"{row['spearman_mean']:+.2f} ± {row['spearman_std']:.2f}"
        gain = f"{row['gain_mean']:+.3f} ± {row['gain_std']:.3f}"
        print(f"{row['criterion']:<14} {rho:>14} {gain:>16} {row['gain_min']:>+7.3f}  "
              + ", ".join(f"{c:g}" for c in row["chosen"]))
    bad = [(row["criterion"], w) for row in rows for w in row["worse_than_source_only"]]
    print()
    if bad:
        print("choices worse than source-only (λ = 0) by more than noise:")
        for crit, w in bad:
            print(f"  {crit}: {w}")
    else:
        print("no criterion chose a model worse than source-only (λ = 0) by more than noise")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pair", default="tutorial", help="'tutorial' (pytl.data.make_domain_shift) or a real_pairs name")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    p.add_argument("--align-epochs", type=int, default=None,
                   help="stage-1 epochs per λ (default: 100 on the tutorial problem, 20 on a real pair)")
    p.add_argument("--json", help="also write the raw results to this file")
    args = p.parse_args(argv)
    lambdas = tuple(args.lambdas)
    if 0.0 not in lambdas:
        p.error("--lambdas must include 0 (source-only, the baseline of the gain)")
    if len(set(lambdas)) != len(lambdas):
        p.error("--lambdas must be unique")
    args.pair = pair_name(args.pair)
    if args.align_epochs is None:
        args.align_epochs = ALIGN_EPOCHS["tutorial" if args.pair == "tutorial" else "real"]
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(args.pair, seed, lambdas, args.align_epochs))
        r = runs[-1]
        print(f"seed {seed}: trained {len(lambdas)} models in {r['train_s']:.1f} s, scored in {r['score_s']:.1f} s",
              file=sys.stderr)
    rows = summarize(runs, lambdas)
    print(f"pair {args.pair!r}, λ ∈ {list(lambdas)}, seeds {args.seeds}, align_epochs {args.align_epochs}, "
          f"torch {torch.__version__}, {time.perf_counter() - t0:.0f} s\n")
    print_report(runs, rows, lambdas)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"pair": args.pair, "lambdas": lambdas, "runs": runs, "summary": rows}, f, indent=1)


if __name__ == "__main__":
    main()
