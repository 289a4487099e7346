"""Which alignment, on the tutorial's problem: every strategy of compare_strategies on the two moons and on
the Gaussian-blob variant, and the source class weights under label shift. The tables of
docs/python_layer.md, "Which alignment".

    python benchmarks/alignments.py                 # both parts, 5 seeds (about 4 minutes on one thread)
    python benchmarks/alignments.py --part label-shift --seeds 3

Part "strategies": ``compare_strategies(strategies="all", folds=None)`` on ``make_domain_shift(seed)`` and on
``make_domain_shift(seed, shape="blobs", num_classes=4)``, default budgets; target test accuracy and
embedding MMD², mean ± std over seeds.

Part "label-shift": the moons (noise 0.3), target class 1 thinned to a quarter (source 50/50, target about
80/20), 2,000 unlabelled target rows; stage 1 alone (100 epochs, λ = 0.5, warm-up 0.3) with and without
``class_weights="estimated"``, once without covariate shift (rotation 0, no move) and once with the
tutorial's (30°, (3, 3)); accuracy on the rest of the thinned target, and the estimated q(class 0).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytl  # noqa: E402

LABEL_SHIFT_RUNS = (
    ("source_only", dict(lambda_mmd=0.0)),
    ("source_only, estimated", dict(lambda_mmd=0.0, class_weights="estimated")),
    ("mmd_only", dict(lambda_mmd=0.5)),
    ("mmd_only, estimated", dict(lambda_mmd=0.5, class_weights="estimated")),
    ("cmmd_only", dict(lambda_mmd=0.5, alignment="cmmd")),
    ("cmmd_only, estimated", dict(lambda_mmd=0.5, alignment="cmmd", class_weights="estimated")),
)


def _ms(values: list[float]) -> str:
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.1f}% ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"


def strategies(seeds: int) -> None:
    for title, kwargs in (("moons", {}), ("blobs (4 classes)", dict(shape="blobs", num_classes=4))):
        acc: dict[str, list[float]] = {}
        mmd: dict[str, list[float]] = {}
        for seed in range(seeds):
            data = pytl.make_domain_shift(seed=seed, **kwargs)
            r = pytl.compare_strategies(**data.as_dict(), strategies="all", folds=None, seed=seed, progress=False,
                                        **pytl.experiments.fixed_lambdas())  # each alignment at its own default
            for k, v in r.accuracy.items():
                acc.setdefault(k, []).append(v)
            for k, v in r.embedding_mmd2.items():
                mmd.setdefault(k, []).append(v)
        print(f"\n{title}, seeds 0-{seeds - 1}\n\n| strategy | target accuracy | embedding MMD² |\n|---|---|---|")
        for k, v in acc.items():
            print(f"| {k} | {_ms(v)} | {np.mean(mmd[k]):.3f} |" if k in mmd else f"| {k} | {_ms(v)} | – |")


def _thinned(seed: int, covariate_shift: bool, keep: float = 0.25):
    extra = {} if covariate_shift else dict(rotation=0.0, shift=(0.0, 0.0))
    d = pytl.make_domain_shift(seed, n_target_unlabeled=10, n_target_test=6000, noise=0.3, **extra)
    x, y = np.asarray(d.target_test[0]), np.asarray(d.target_test[1])
    kept = (y == 0) | (np.random.default_rng(seed).random(len(y)) < keep)
    x, y = x[kept], y[kept]
    return d.source, x[:2000], (x[2000:], y[2000:]), float((y == 0).mean())


def label_shift(seeds: int) -> None:
    for covariate_shift in (False, True):
        rows: dict[str, list[tuple[float, float | None]]] = {}
        truth = []
        for seed in range(seeds):
            source, target, test, q0 = _thinned(seed, covariate_shift)
            truth.append(q0)
            for name, kw in LABEL_SHIFT_RUNS:
                tr = pytl.TwoStageTrainer(align_epochs=100, warmup=0.3, progress=False, seed=seed, **kw)
                tr.align(source, target)
                q = None if tr.label_shift is None else float(tr.label_shift.target_proportions[0])
                rows.setdefault(name, []).append((tr.score(*test), q))
        what = "label shift + rotation 30° and move (3, 3)" if covariate_shift else "pure label shift"
        print(f"\n{what}, seeds 0-{seeds - 1}, true q(class 0) = {np.mean(truth):.3f}\n\n"
              "| stage 1 | target accuracy | estimated q(class 0) |\n|---|---|---|")
        for name, v in rows.items():
            qs = [q for _, q in v if q is not None]
            q_text = f"{np.mean(qs):.3f} (from {min(qs):.2f} to {max(qs):.2f})" if qs else "–"
            print(f"| {name} | {_ms([a for a, _ in v])} | {q_text} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "strategies", "label-shift"], default="all")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.part in ("all", "strategies"):
        strategies(args.seeds)
    if args.part in ("all", "label-shift"):
        label_shift(args.seeds)
    print(f"\n{time.perf_counter() - t0:.0f} s, torch {torch.__version__}, {args.threads} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
