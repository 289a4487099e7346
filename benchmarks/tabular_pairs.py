"""A real shifted pair of tabular data, built from what scikit-learn ships (no download): the vector regime's
"tabular" case (benchmarks/vector_regime.py --features tabular).

- "cancer-texture": scikit-learn's breast cancer data (569 tumours, 30 features, malignant 0 / benign 1) split
  on "mean texture" at its median: the source is the smoother half (84% benign), the target the more textured
  half (42% benign). A covariate shift with the label shift it brings, as between two clinics whose patients
  differ; every feature keeps its meaning, so a source model already transfers much of its skill.

Every split is seeded by ``seed``; the target splits (labelled, unlabelled, test) are disjoint and the labelled
split holds ``labels_per_class`` rows of each class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["TABULAR_PAIRS", "load_tabular_pair"]

TABULAR_PAIRS = ("cancer-texture",)
SPLIT_FEATURE = "mean texture"
N_TEST = 100


def load_tabular_pair(name: str, seed: int, labels_per_class: int = 5) -> dict[str, Any]:
    """A dict with ``source`` (X, y), ``target_unlabeled`` X, ``target_labeled`` (X, y), ``target_test`` (X, y);
    X float32 (N, 30), y int64."""
    if name not in TABULAR_PAIRS:
        raise ValueError(f"name must be one of {TABULAR_PAIRS}, got {name!r}")
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError as exc:
        raise ImportError('the tabular pair needs scikit-learn: pip install "pytl[bench]"') from exc
    data = load_breast_cancer()
    X, y = data.data.astype(np.float32), data.target.astype(np.int64)
    column = list(data.feature_names).index(SPLIT_FEATURE)
    smooth = X[:, column] <= np.median(X[:, column])
    rng = np.random.default_rng(seed)
    xt, yt = X[~smooth], y[~smooth]
    order = rng.permutation(len(yt))
    labelled = np.concatenate([order[yt[order] == c][:labels_per_class] for c in np.unique(yt)])
    rest = np.setdiff1d(order, labelled, assume_unique=True)
    rest = rest[rng.permutation(len(rest))]
    test, unlabelled = rest[:N_TEST], rest[N_TEST:]
    return {"source": (X[smooth], y[smooth]), "target_unlabeled": xt[unlabelled],
            "target_labeled": (xt[labelled], yt[labelled]), "target_test": (xt[test], yt[test])}
