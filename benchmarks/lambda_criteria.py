"""Which label-free criterion picks λ best? Stage 1 (CE + λ·MMD²) once per λ of the "auto" grid on the real
pairs (the default MLP on vectors: flattened pixels, or a source-trained CNN's frozen embeddings, as
vector_regime.py builds them), every criterion of pytl.validation scored on the same models.

    python benchmarks/lambda_criteria.py                      # pixels, 3 pairs x 2 seeds, markdown on stdout
    python benchmarks/lambda_criteria.py --features embeddings --pairs 'digits->mnist' --seeds 3

For each pair and seed it reports the target test accuracy of every λ's stage-1 model, and for each
criterion (and for the target labels' calibrated cross-entropy, the with-labels rule of "auto") the λ it
picks and how many points that model is below the grid's best; and the same for no choice at all (the
fixed default λ, which the grid holds), the baseline any rule must beat. ``select_lambda`` does the training; its
models are scored by every criterion, so the comparison is on identical models.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)                      # real_pairs
sys.path.insert(1, os.path.dirname(HERE))     # run from a checkout without installing

import torch  # noqa: E402

import pytl  # noqa: E402
from pytl.experiments.lambda_search import by_labels, lambda_grid, pick  # noqa: E402
from pytl.train.alignments import ALIGNMENTS  # noqa: E402
from pytl.validation import CRITERIA  # noqa: E402
from real_pairs import PAIR_NAMES, load_pair, pair_name  # noqa: E402
from vector_regime import vectors  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="*", default=list(PAIR_NAMES))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--features", choices=("pixels", "embeddings"), default="pixels")
    args = ap.parse_args(argv)
    grid = lambda_grid("mmd", "auto")
    names = ["labels (calibrated CE)"] + list(CRITERIA) + ["fixed (the default λ, no choice)"]
    default = min(grid, key=lambda lam: abs(lam - ALIGNMENTS["mmd"].lambda_default))  # the grid holds it
    regret: dict[str, list[float]] = {n: [] for n in names}
    print(f"# λ by criterion: stage 1 of mmd, grid {grid}, {args.features}, default MLP and settings\n")
    for name in map(pair_name, args.pairs):
        for seed in range(args.seeds):
            p = vectors(load_pair(name, seed), args.features, name, seed)
            xs, ys = p["source"]
            xu, (xl, yl), (xt, yt) = p["target_unlabeled"], p["target_labeled"], p["target_test"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sel = pytl.select_lambda((xs, ys), xu, lambdas=grid, criterion="entropy", seed=seed)
            acc = {}
            for lam, m in sel.models.items():
                with torch.no_grad(), pytl.train.eval_mode(m):
                    acc[lam] = float((m(torch.as_tensor(xt)).argmax(1).numpy() == yt).mean())
            source_val = (xs[sel.validation_indices.numpy()], ys[sel.validation_indices.numpy()])
            picks = {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for c, f in CRITERIA.items():
                    picks[c] = pick({lam: float(f(m, source_val, xu)) for lam, m in sel.models.items()})
            logp = {}
            for lam, m in sel.models.items():
                with torch.no_grad(), pytl.train.eval_mode(m):
                    logp[lam] = torch.log_softmax(m(torch.as_tensor(xl)).double(), 1)
            picks["labels (calibrated CE)"] = pick(by_labels(logp, torch.as_tensor(yl))[0])
            picks["fixed (the default λ, no choice)"] = default
            best = max(acc.values())
            print(f"## {name}, seed {seed}\n")
            print("| λ | " + " | ".join(f"{lam:g}" for lam in grid) + " |")
            print("|---|" + "---|" * len(grid))
            print("| target test accuracy | " + " | ".join(f"{100 * acc[lam]:.1f}" for lam in grid) + " |\n")
            for n in names:
                regret[n].append(100 * (best - acc[picks[n]]))
                print(f"- {n}: λ {picks[n]:g}, {100 * (best - acc[picks[n]]):.1f} points below the grid's best")
            print(flush=True)
    print("## Summary: points below the grid's best λ (mean, worst) over every pair and seed\n")
    print("| rule | mean | worst |")
    print("|---|---|---|")
    for n in names:
        print(f"| {n} | {np.mean(regret[n]):.1f} | {np.max(regret[n]):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
