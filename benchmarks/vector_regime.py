"""The vector regime: compare_strategies on feature vectors with the default MLP, fixed λ against λ chosen
from the data ("auto"), on the real pairs of real_pairs.py.

    python benchmarks/vector_regime.py                       # pixels of every pair, 3 seeds → stdout (markdown)
    python benchmarks/vector_regime.py --features embeddings --pairs digits->mnist --seeds 2
    python benchmarks/vector_regime.py --labels 0            # label-free: λ and best by the criterion
    python benchmarks/vector_regime.py --labels 0 --modes fixed --lambda-factors 0.1 0.316 1 3.16 10
        --strategies source_only mmd_only cmmd_only coral_only dann_only mme_only   # every alignment's λ curve

"fixed": every alignment at its declared default (``fixed_lambdas()``); "auto": every alignment's "auto" grid,
searched by the target labels, or without them by the criterion (``compare_strategies``' own "auto" searches only
with labels: without, it keeps the defaults, as this benchmark's label-free runs led to); "default": whatever
``compare_strategies`` does when no λ is given (with labels: "auto" for the searched strategies, the alignment's
default for the semi-supervised ones), the mode that measures what a user gets.

Two kinds of vectors, the two ways users meet this regime:

- ``pixels``: each image flattened, exactly what ``compare_strategies`` gets from a user's arrays
  (``--image-size 8``: first averaged down to 8×8, 64 features per channel, where the default MLP used to be
  narrowest, 64 wide until the eighth session);
- ``embeddings``: the 128-wide embedding of a CNN (real_pairs.model_for) trained on the source labels
  alone and then frozen, the "features from a pretrained backbone" workflow;
- ``tabular``: the tabular pairs of tabular_pairs.py (30 clinical features), whatever ``--pairs`` says.

For each pair, seed and λ mode it runs every strategy (``strategies="all"``) with the default model and
settings, then reports the test accuracies, the best unsupervised gain over source_only, what
``report.best`` picked and how far it is from the best strategy on the test set, the λ chosen, and time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)                      # real_pairs
sys.path.insert(1, os.path.dirname(HERE))     # run from a checkout without installing

import torch  # noqa: E402

import pytl  # noqa: E402
from real_pairs import PAIR_NAMES, load_pair, model_for, pair_name  # noqa: E402
from tabular_pairs import TABULAR_PAIRS, load_tabular_pair  # noqa: E402

from pytl.experiments import fixed_lambdas  # noqa: E402
from pytl.experiments.lambda_search import lambda_grid  # noqa: E402
from pytl.experiments.strategies import ALIGNED  # noqa: E402

UNSUPERVISED = tuple(f"{a}_only" for a in ALIGNED)
BACKBONE_EPOCHS = 15  # the source-trained CNN of the embeddings regime


def vectors(pair: dict, features: str, name: str, seed: int, image_size: int | None = None) -> dict:
    """The pair as (N, F) float32 vectors: flattened pixels (averaged down to ``image_size`` square first when
    given), or a source-trained CNN's frozen embeddings."""
    if features == "pixels":
        def f(x):
            if image_size is not None:
                x = torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(x), image_size).numpy()
            return np.asarray(x).reshape(len(x), -1)
    else:
        trainer = pytl.TwoStageTrainer(model_for(name, seed, pair), lambda_align=0.0, align_epochs=BACKBONE_EPOCHS,
                                       seed=seed, progress=False, num_threads=1)
        trainer.align(pair["source"])
        model = trainer.model

        def f(x):
            with torch.no_grad(), pytl.train.eval_mode(model):
                return torch.cat([model.embed(b).flatten(1) for b in torch.as_tensor(x).split(1024)]).numpy()
    return {"source": (f(pair["source"][0]), pair["source"][1]), "target_unlabeled": f(pair["target_unlabeled"]),
            "target_labeled": (f(pair["target_labeled"][0]), pair["target_labeled"][1]),
            "target_test": (f(pair["target_test"][0]), pair["target_test"][1])}


def times(factor: float, sign: str) -> str:
    """How a λ factor other than 1 shows in a file name or heading."""
    return "" if factor == 1 else f"{sign}{factor:g}"


def run(name: str, seed: int, features: str, mode: str, labels: int, threads: int, hidden=None,
        strategies="all", save: str | None = None, image_size: int | None = None, factor: float = 1.0,
        ship: str = "refit") -> dict:
    if features == "tabular":
        data = load_tabular_pair(name, seed, labels_per_class=max(labels, 1))
    else:
        data = vectors(load_pair(name, seed, labels_per_class=max(labels, 1)), features, name, seed, image_size)
    if labels == 0:
        data.pop("target_labeled")
    # "auto": the grid itself, which is searched with target labels or without (bare "auto" searches with labels only)
    # "fixed" × factor: every alignment at one point of its "auto" grid (the λ curves, --lambda-factors)
    lam = {"auto": {opt: list(lambda_grid(a, "auto")) for a, opt in ALIGNED.items()},
           "fixed": {opt: float(f"{v * factor:.3g}") for opt, v in fixed_lambdas().items()}, "default": {}}[mode]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = pytl.compare_strategies(**data, strategies=strategies, seed=seed, folds=5 if labels else None,
                                    num_threads=threads, hidden_sizes=hidden, ship=ship, **lam)
    acc = r.accuracy
    if save:  # what selection rules need, to be compared afterwards without training again
        xt, yt = data["target_test"]
        torch.save({"accuracy": acc, "best": r.best, "test_y": torch.as_tensor(yt),
                    "test_proba": {s: torch.as_tensor(r.predict_proba(s, xt)) for s in r.models},
                    "labeled_y": torch.as_tensor(data["target_labeled"][1]) if labels else None,
                    "cv_log_proba": {s: e.log_proba for s, e in r.estimate.items()},
                    "seconds": r.seconds, "cv_seconds": r.cv_seconds,
                    "lambdas": {a: (s.chosen, s.finetune_chosen) for a, s in r.lambdas.items()}},
                   os.path.join(save, f"{features}{image_size or ''}_{name}_{mode}{times(factor, 'x')}"
                                      f"{'' if ship == 'refit' else '_' + ship}_{seed}.pt"))
    unsup = [s for s in UNSUPERVISED if s in acc]
    best_unsup = max(unsup, key=acc.get) if unsup and "source_only" in acc else None
    top = max(acc.values())
    return {"acc": acc, "best": r.best, "best_gap": acc[r.best] - top, "unsup": best_unsup,
            "gain": acc[best_unsup] - acc["source_only"] if best_unsup else float("nan"),
            "lambdas": {a: s.chosen if s.finetune_chosen is None else (s.chosen, s.finetune_chosen)
                        for a, s in r.lambdas.items()},
            "seconds": time.perf_counter() - t0, "features_dim": data["source"][0].shape[1]}


def print_curves(name: str, curves: dict[float, list[dict]], first_seed: int) -> None:
    """Every strategy's mean test accuracy at each λ factor, and per seed its best over the grid as a gain over
    source_only (which no λ moves): whether any λ of the grid reaches a given gain."""
    factors = sorted(curves)
    rows = curves[factors[0]]
    names = [s for s in rows[0]["acc"] if s != "source_only"]
    seeds = range(first_seed, first_seed + len(rows))
    print(f"## {name}: every strategy's λ curve (mean test accuracy per factor of the defaults), best gain per seed\n")
    print("| strategy | " + " | ".join(f"λ × {f:g}" for f in factors) + " | "
          + " | ".join(f"best gain, seed {k}" for k in seeds) + " |")
    print("|---|" + "---|" * (len(factors) + len(rows)))
    best = [-1.0] * len(rows)
    for s in names:
        means = [100 * np.mean([r["acc"][s] for r in curves[f]]) for f in factors]
        gains = []
        for i in range(len(rows)):
            f = max(factors, key=lambda f: curves[f][i]["acc"][s])
            gains.append(curves[f][i]["acc"][s] - curves[f][i]["acc"]["source_only"])
            best[i] = max(best[i], gains[-1])
            gains[-1] = f"{100 * gains[-1]:+.1f} (× {f:g})"
        print(f"| {s} | " + " | ".join(f"{m:.1f}" for m in means) + " | " + " | ".join(gains) + " |")
    print("\n- best of every strategy and λ over source_only: " + ", ".join(
        f"seed {k} {100 * b:+.1f}" for k, b in zip(seeds, best)) + "\n", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="*", default=list(PAIR_NAMES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed ... first-seed + seeds - 1")
    ap.add_argument("--features", choices=("pixels", "embeddings", "tabular"), default="pixels")
    ap.add_argument("--image-size", type=int, default=None, help="pixels: average each image down to this size "
                    "(square) before flattening (default: as loaded, 28)")
    ap.add_argument("--labels", type=int, default=5, help="target labels per class (0: none, label-free)")
    ap.add_argument("--modes", nargs="*", default=["fixed", "auto"], choices=("fixed", "auto", "default"))
    ap.add_argument("--lambda-factors", type=float, nargs="*", default=[1.0], help="fixed mode: every default λ "
                    "times each of these in turn (the λ curves: 0.1 0.316 1 3.16 10 is the auto grid)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, nargs="*", default=None, help="hidden_sizes of the MLP (default: the "
                    "default MLP's, two layers of 256)")
    ap.add_argument("--strategies", nargs="*", default=None, help="a subset (default: all)")
    ap.add_argument("--ship", choices=("refit", "folds"), default="refit", help="what a label-using strategy "
                    "ships: retrained on every label, or its cross-validation fold models' mean")
    ap.add_argument("--save", default=None, help="a folder: each run's test-set probabilities and cross-validated "
                    "predictions per strategy, to compare selection rules afterwards")
    args = ap.parse_args(argv)
    hidden = tuple(args.hidden) if args.hidden else None
    strategies = args.strategies or "all"
    print(f"# vector regime: {args.features}, {args.labels} target labels per class, ship={args.ship!r}, "
          f"strategies='all', default model{'' if hidden is None else f' with hidden_sizes={hidden}'} and settings; "
          f"torch {torch.__version__}, {args.threads} thread(s)\n")
    for name in TABULAR_PAIRS if args.features == "tabular" else map(pair_name, args.pairs):
        curves = {}
        for mode, factor in [(m, f) for m in args.modes for f in (args.lambda_factors if m == "fixed" else [1.0])]:
            rows = []
            for s in range(args.first_seed, args.first_seed + args.seeds):
                rows.append(run(name, s, args.features, mode, args.labels, args.threads, hidden, strategies,
                                args.save, args.image_size, factor, args.ship))
                print(f"{name} {mode} x{factor:g} seed {s}: {rows[-1]}", file=sys.stderr, flush=True)  # progress
            strategies = list(rows[0]["acc"])
            print(f"## {name} ({rows[0]['features_dim']} features), λ {mode}{times(factor, ' × ')}\n")
            print("| strategy | " + " | ".join(f"seed {s}" for s in range(args.first_seed, args.first_seed + args.seeds))
                  + " | mean |")
            print("|---|" + "---|" * (args.seeds + 1))
            for s in strategies:
                vals = [100 * r["acc"][s] for r in rows]
                print(f"| {s} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {np.mean(vals):.1f} |")
            for k, r in enumerate(rows, start=args.first_seed):
                print(f"- seed {k}: best unsupervised {r['unsup']} {100 * r['gain']:+.1f} over source_only; "
                      f"report.best {r['best']} ({100 * r['best_gap']:+.1f} from the test set's best); "
                      f"λ chosen {r['lambdas'] or '-'}; {r['seconds']:.0f} s")
            print(flush=True)
            if mode == "fixed":
                curves[factor] = rows
        if len(curves) > 1:
            print_curves(name, curves, args.first_seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
