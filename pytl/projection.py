"""2-D projections of embeddings for pictures: PCA (an SVD of the centred rows, float64, no dependency) and
t-SNE (scikit-learn's, when installed). Signs are fixed so that a picture does not flip between runs: each
PCA axis points where its largest-magnitude loading is positive."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["METHODS", "project"]

METHODS = ("pca", "tsne")


def project(z: Any, method: str = "pca", seed: int = 0) -> np.ndarray:
    """The (N, 2) coordinates of the rows of ``z`` (N, D): the first two principal components ("pca") or
    a t-SNE embedding ("tsne", scikit-learn's TSNE seeded with ``seed``, PCA-initialised)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {METHODS}")
    x = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    if x.shape[0] < 3:
        raise ValueError(f"a projection needs at least 3 rows, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("the embeddings hold NaN or infinite values (did training diverge?)")
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as exc:
            raise ImportError("method='tsne' needs scikit-learn: pip install scikit-learn (or 'pytl[sklearn]'); "
                              "method='pca' needs nothing") from exc
        perplexity = min(30.0, (x.shape[0] - 1) / 3)
        return TSNE(2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    if axes.shape[0] < 2:  # one feature: the second axis is zero
        axes = np.vstack([axes, np.zeros_like(axes)])
    signs = np.sign(axes[np.arange(2), np.abs(axes).argmax(1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    return centred @ axes.T
