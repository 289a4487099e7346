"""plot.plot_embeddings and pytl.projection: the drawn points are an independent PCA of the model's embeddings
(scikit-learn's, up to each axis' sign), the titles carry the embedding MMD² (a float64 reference), a report
draws source_only beside an aligned strategy, and the file is a PNG rendered headless."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import pytl
from pytl.bandwidths import resolve_bandwidths
from pytl.projection import project
from pytl.testing import mmd2_reference64

pytest.importorskip("matplotlib", reason="the [plot] extra (matplotlib) is not installed")
sklearn_decomposition = pytest.importorskip("sklearn.decomposition", reason="scikit-learn is the independent PCA")

from pytl import plot  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
PNG = b"\x89PNG\r\n\x1a\n"


def _same_up_to_sign(a, b):
    for j in range(2):
        sign = np.sign(a[:, j] @ b[:, j]) or 1.0
        np.testing.assert_allclose(a[:, j], sign * b[:, j], rtol=1e-6, atol=1e-8)


def test_pca_matches_scikit_learns():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    _same_up_to_sign(project(z), sklearn_decomposition.PCA(2).fit_transform(z))
    # the sign convention: each axis' largest loading positive, so a picture does not flip between runs
    assert np.array_equal(project(z), project(z[:, :]))
    with pytest.raises(ValueError, match="method='umap'"):
        project(z, "umap")
    with pytest.raises(ValueError, match="NaN"):
        project(np.full((5, 2), np.nan))


@pytest.fixture(scope="module")
def trained():
    d = pytl.make_domain_shift(0, n_source=200, n_target_unlabeled=200, n_target_labeled=20, n_target_test=150)
    r = pytl.compare_strategies(**d.as_dict(), strategies=["source_only", "mmd_only", "scratch", "mmd", "ensemble"],
                                align_epochs=15, finetune_epochs=5, folds=None, num_threads=1)
    return d, r


def test_drawn_points_are_the_embeddings_pca_and_titles_their_mmd(trained, tmp_path):
    d, r = trained
    path = tmp_path / "emb.png"
    fig = plot.plot_embeddings(r, d.source, d.target_test, path)
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
    # source_only, then (no report.best without folds) the first aligned strategy; by domain and by class
    assert len(fig.axes) == 4
    for row, name in enumerate(["source_only", "mmd_only"]):
        model = r.models[name]
        with torch.no_grad():
            model.eval()
            zs = model.embed(torch.as_tensor(d.source[0])).double()
            zt = model.embed(torch.as_tensor(d.target_test[0])).double()
        want = sklearn_decomposition.PCA(2).fit_transform(torch.cat([zs, zt]).numpy())
        ax = fig.axes[2 * row]
        drawn = np.concatenate([c.get_offsets() for c in ax.collections[:2]])
        _same_up_to_sign(np.asarray(drawn), want)
        sig, w = resolve_bandwidths(zs, zt, None, None)
        mmd = float(mmd2_reference64(zs, zt, sig, w))
        shown = float(re.search(r"MMD² ([0-9.]+)", ax.get_title()).group(1))
        assert ax.get_title().startswith(name) and shown == pytest.approx(mmd, abs=6e-4)
    # by class: the target rows coloured by their labels
    assert "labels" in fig.axes[1].get_title()


def test_a_model_unlabelled_target_tsne_and_refusals(trained):
    d, r = trained
    fig = plot.plot_embeddings(r.models["mmd_only"], d.source, d.target_unlabeled, method="tsne", max_points=80)
    assert "predicted classes" in fig.axes[1].get_title()
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections[:2]) == 160  # max_points rows per domain
    with pytest.raises(ValueError, match="no embedding"):
        plot.plot_embeddings(r, d.source, d.target_test, strategies=["ensemble"])
    with pytest.raises(ValueError, match="the report trained"):
        plot.plot_embeddings(r, d.source, d.target_test, strategies=["dann_only"])
    with pytest.raises(TypeError, match="embed"):
        plot.plot_embeddings(torch.nn.Linear(2, 2), d.source, d.target_test)


def test_a_weighted_ensemble_shipped_as_best_draws_the_first_aligned_strategy(trained):
    """The ensemble has no embedding of its own: the picture shows source_only beside an aligned strategy."""
    import dataclasses

    from pytl.experiments import EnsembleModel
    from pytl.experiments.estimate import Estimate
    from pytl.experiments.weighted_ensemble import WeightedEnsemble

    d, r = trained

    def est(loss):
        return Estimate(0.5, 0.0, (0.5,), torch.ones(2, dtype=torch.bool), loss)
    we = WeightedEnsemble(("mmd", "scratch"), (0.5, 0.5), (1.0, 1.0), est(0.5), est(0.9), (), "mmd")
    shipped = dataclasses.replace(r, models={**r.models, "weighted_ensemble": EnsembleModel([r.models["mmd"],
                                                                                            r.models["scratch"]])},
                                  estimate={"weighted_ensemble": we.estimate}, weighted_ensemble=we)
    assert shipped.best == "weighted_ensemble"
    fig = plot.plot_embeddings(shipped, d.source, d.target_test)
    assert fig.axes[2].get_title().startswith("mmd_only")
