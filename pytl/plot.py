"""Figures of the experiments in :mod:`pytl.experiments` (needs matplotlib: ``pip install matplotlib`` or
``pip install 'pytl[plot]'``).

One function per curve, each drawing the mean over seeds as a line with a band of ± one standard
deviation; :func:`plot_report`, the demo's decision boundaries of a strategy comparison; and
:func:`plot_embeddings`, source and target embeddings before and after alignment. Each
returns the matplotlib ``Figure`` and, given ``path``, saves it (PNG, or any format matplotlib knows
from the suffix). Figures are drawn on matplotlib's Agg canvas directly: nothing goes through pyplot,
no window opens, and the global backend is left alone.

    from pytl import experiments, plot
    plot.plot_divergence_sweep(experiments.divergence_sweep(), "divergence.png")
"""

from __future__ import annotations

import os
from typing import Any

from pytl import _inputs as inp
from pytl.experiments.report import ComparisonReport
from pytl.experiments.strategies import STRATEGIES, TRANSFER_STRATEGIES
from pytl.experiments.weighted_ensemble import WEIGHTED_ENSEMBLE
from pytl.projection import project
from pytl.experiments.tables import CurveTable, DivergenceSweep

__all__ = ["matplotlib_available", "plot_curve", "plot_data_efficiency", "plot_divergence_sweep",
           "plot_embeddings", "plot_layer_transferability", "plot_report"]

INSTALL_HINT = "pytl.plot needs matplotlib: pip install matplotlib (or pip install 'pytl[plot]')"
COLORS = {"scratch": "tab:gray", "naive": "tab:orange", "mmd": "tab:blue", "source_only": "tab:red",
          "mmd_only": "tab:purple", "ensemble": "tab:green", "frozen": "tab:blue", "fine-tuned": "tab:orange"}
STYLES = {"scratch": "--", "source_only": ":"}
CLASS_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")  # plot_report: class i, modulo 5


def _agg() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas classes; a clear ImportError without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return Figure, FigureCanvasAgg


def matplotlib_available() -> bool:
    """Whether this module can draw (matplotlib imports): lets a caller refuse a figure before long work."""
    try:
        _agg()
    except ImportError:
        return False
    return True


def _figure(figsize: tuple[float, float]) -> Any:
    """A Figure on an Agg canvas (no pyplot state); a clear ImportError without matplotlib."""
    figure, canvas = _agg()
    fig = figure(figsize=figsize)
    canvas(fig)
    return fig


def _check_table(table: Any, kind: str, func: str) -> None:
    if not isinstance(table, CurveTable):
        raise TypeError(f"{func} takes a pytl.experiments.CurveTable, got {type(table).__name__}")
    if table.kind != kind:
        raise ValueError(f"{func} draws a {kind} table, got a {table.kind} table (use plot_curve to dispatch)")


def _band(ax: Any, table: CurveTable, series: str, label: str | None = None) -> None:
    rows = table.select(series)
    xs = [r.x for r in rows]
    mean = [r.mean for r in rows]
    lo = [r.mean - r.std for r in rows]
    hi = [r.mean + r.std for r in rows]
    color = COLORS.get(series)
    ax.plot(xs, mean, STYLES.get(series, "-"), marker="o", ms=4, color=color, label=label or series)
    if rows[0].n_seeds > 1:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.18, linewidth=0)


def _finish(fig: Any, ax: Any, table: CurveTable, title: str, path: str | os.PathLike | None) -> Any:
    seeds = table.seeds
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
    ax.set_title(f"{title}\n({spread})", fontsize=10)
    ax.set_ylabel("target test accuracy")
    ax.set_xlabel(table.x_label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=110)
    return fig


def plot_data_efficiency(table: CurveTable, path: str | os.PathLike | None = None, *, logx: bool = True) -> Any:
    """Accuracy vs number of target labels, one line per strategy (log-scaled x by default)."""
    _check_table(table, "data_efficiency", "plot_data_efficiency")
    fig = _figure((6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for s in table.series:
        _band(ax, table, s)
    if logx:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(table.xs)
    ax.set_xticklabels([f"{x:g}" for x in table.xs])
    return _finish(fig, ax, table, "Data efficiency: transfer vs training from scratch", path)


def plot_layer_transferability(table: CurveTable, path: str | os.PathLike | None = None) -> Any:
    """Accuracy vs number of copied layers k, frozen and fine-tuned; the k = 0 (scratch) level dashed."""
    _check_table(table, "layer_transferability", "plot_layer_transferability")
    fig = _figure((6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for s in table.series:
        _band(ax, table, s, label=f"copied layers {s}")
    if 0 in table.xs:
        base = table.select(table.series[0])[0].mean
        ax.axhline(base, color="tab:gray", ls="--", lw=1, label="scratch (k = 0)")
    ax.set_xticks(table.xs)
    return _finish(fig, ax, table, "Layer transferability (Yosinski et al. 2014)", path)


def plot_divergence_sweep(table: DivergenceSweep, path: str | os.PathLike | None = None) -> Any:
    """Accuracy vs rotation angle per strategy, the input MMD² on a second axis (dotted, right) and a
    vertical line at the crossover where transfer stops paying."""
    _check_table(table, "divergence_sweep", "plot_divergence_sweep")
    fig = _figure((7.0, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    for s in table.series:
        _band(ax, table, s)
    if isinstance(table, DivergenceSweep) and table.crossover is not None:
        ax.axvline(table.crossover, color="k", lw=1, ls="-.",
                   label=f"crossover ≈ {table.crossover:.0f}°: transfer stops paying")
    if isinstance(table, DivergenceSweep) and table.mmd2:
        right = ax.twinx()
        xs = [r.x for r in table.mmd2]
        right.plot(xs, [r.mean for r in table.mmd2], ":", color="tab:green", marker="s", ms=3, label="input MMD²")
        right.set_ylabel("source-target input MMD² (dotted)", color="tab:green")
        right.tick_params(axis="y", colors="tab:green")
        right.set_ylim(bottom=0)
    ax.set_xticks(table.xs)
    transfer = [s for s in TRANSFER_STRATEGIES if s in table.series]
    title = f"Transfer ({', '.join(transfer)}) vs scratch as the target rotates away from the source"
    return _finish(fig, ax, table, title, path)


def plot_curve(table: CurveTable, path: str | os.PathLike | None = None) -> Any:
    """Dispatch on ``table.kind``."""
    if not isinstance(table, CurveTable):
        raise TypeError(f"plot_curve takes a pytl.experiments.CurveTable, got {type(table).__name__}")
    funcs = {"data_efficiency": plot_data_efficiency, "layer_transferability": plot_layer_transferability,
             "divergence_sweep": plot_divergence_sweep}
    if table.kind not in funcs:
        raise ValueError(f"no plot for a {table.kind!r} table; known: {sorted(funcs)}")
    return funcs[table.kind](table, path)


def plot_report(report: ComparisonReport, data: Any, path: str | os.PathLike | None = None) -> Any:
    """The demo's figure: both domains, then one panel per strategy of ``report`` with its decision
    boundary over the target test set. ``data``: the DomainShift the report was trained on (2-D features)."""
    import numpy as np
    import torch

    if not isinstance(report, ComparisonReport):
        raise TypeError(f"plot_report takes a pytl.experiments.ComparisonReport, got {type(report).__name__}")
    xs, ys = data.source
    xu = data.target_unlabeled
    xt, yt = data.target_test
    xl, yl = data.target_labeled
    everything = np.concatenate([xs, xu, xt])
    lo, hi = everything.min(0) - 0.5, everything.max(0) + 0.5
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)

    strategies = list(report.accuracy)
    ncols = 4 if len(strategies) + 1 > 3 else len(strategies) + 1
    nrows = -(-(len(strategies) + 1) // ncols)
    fig = _figure((4 * ncols, 3.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = np.array(CLASS_COLORS)
    ax = axes[0][0]
    ax.scatter(xs[:, 0], xs[:, 1], c=colors[ys % 5], s=6, alpha=0.5, marker="o")
    ax.scatter(xt[:, 0], xt[:, 1], c=colors[yt % 5], s=6, alpha=0.5, marker="x")
    ax.scatter(xl[:, 0], xl[:, 1], c=colors[yl % 5], s=30, edgecolors="k", marker="*", linewidths=0.5)
    ax.set_title("source (o), target (x), target labels (*)")
    for i, name in enumerate(strategies, start=1):
        ax = axes[i // ncols][i % ncols]
        proba = report.predict_proba(name, torch.from_numpy(grid)).numpy()
        pred = proba.argmax(1).reshape(gx.shape)
        ax.contourf(gx, gy, pred, levels=np.arange(proba.shape[1] + 1) - 0.5, alpha=0.25,
                    colors=list(colors[: proba.shape[1]]))
        if proba.shape[1] == 2:
            ax.contour(gx, gy, proba[:, 1].reshape(gx.shape), levels=[0.5], colors="k", linewidths=0.8)
        ax.scatter(xs[:, 0], xs[:, 1], c=colors[ys % 5], s=3, alpha=0.15, marker="o")
        ax.scatter(xt[:, 0], xt[:, 1], c=colors[yt % 5], s=5, alpha=0.5, marker="x")
        ax.set_title(f"{name}: {100 * report.accuracy[name]:.1f}% on target")
    for j in range(len(strategies) + 1, nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    for row in axes:
        for a in row:
            a.set_xlim(lo[0], hi[0])
            a.set_ylim(lo[1], hi[1])
            a.set_aspect("equal")
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=110)
    return fig


#: strategies whose model has no transfer of its own to show beside source_only
_NOT_ALIGNED = ("source_only", "scratch", "naive", "ensemble", WEIGHTED_ENSEMBLE)


def _embedding_models(model_or_report: Any, strategies: Any) -> list[tuple[str, Any]]:
    """(name, model) per row of the figure: a model with ``embed``, or a report's source_only beside an aligned
    strategy (``strategies``, else report.best when it aligns, else the first aligned model it trained)."""
    if not isinstance(model_or_report, ComparisonReport):
        if not hasattr(model_or_report, "embed"):
            raise TypeError("plot_embeddings takes a model with embed(x) (a pytl TransferModel) or a ComparisonReport, "
                            f"got {type(model_or_report).__name__}")
        return [("model", model_or_report)]
    report = model_or_report
    if strategies is None:
        aligned = [s for s in STRATEGIES if s in report.models and s not in _NOT_ALIGNED]
        best = report.best if report.best in aligned else (aligned[0] if aligned else None)
        strategies = [s for s in ("source_only", best) if s is not None and s in report.models]
    strategies = [strategies] if isinstance(strategies, str) else list(strategies)
    unknown = [s for s in strategies if s not in report.models]
    if not strategies or unknown:
        raise ValueError(f"strategies={strategies!r}: the report trained {sorted(report.models)}")
    flat = [s for s in strategies if not hasattr(report.models[s], "embed")]
    if flat:
        raise ValueError(f"strategies {flat} have no embedding (an ensemble averages two models); pick others")
    return [(s, report.models[s]) for s in strategies]


def _rows(data: Any, name: str, max_points: int, rng: Any) -> tuple[Any, Any]:
    """Features and labels (None when unlabelled) of ``data`` ((X, y) or X), at most ``max_points`` rows drawn
    without replacement."""
    import torch

    if isinstance(data, tuple) and len(data) == 2:
        x, y = inp.as_features(data[0], f"{name}[0]"), inp.as_labels(data[1], f"{name}[1]")
        if y.numel() != x.shape[0]:
            raise ValueError(f"{name} has {x.shape[0]} rows and {y.numel()} labels")
    else:
        x, y = inp.as_features(data, name), None
    if x.shape[0] > max_points:
        keep = torch.from_numpy(rng.choice(x.shape[0], max_points, replace=False))
        x, y = x[keep], None if y is None else y[keep]
    return x, y


def plot_embeddings(model_or_report: Any, source: Any, target: Any, path: str | os.PathLike | None = None, *,
                    strategies: Any = None, method: str = "pca", max_points: int = 1000, seed: int = 0) -> Any:
    """Source and target embeddings, projected to 2-D (``method``: "pca", or "tsne" with scikit-learn), one
    row per model: coloured by domain (with the embedding MMD² in the title), and by class (target rows by
    their label, or by the model's prediction when ``target`` has none).

    model_or_report: a model with ``embed(x)``, or a ``ComparisonReport`` (source_only beside an aligned
    strategy by default; ``strategies`` names others). source, target: (X, y) or X, at most ``max_points``
    rows each (a seeded draw). Each model's projection is fitted on its source and target rows together."""
    import numpy as np
    import torch

    from pytl.inference import embed_all, param_dtype, predict_proba
    from pytl.ops import mmd2

    models = _embedding_models(model_or_report, strategies)
    rng = np.random.default_rng(seed)
    xs, ys = _rows(source, "source", max_points, rng)
    xt, yt = _rows(target, "target", max_points, rng)
    fig = _figure((10, 4.4 * len(models)))
    axes = fig.subplots(len(models), 2, squeeze=False)
    palette = np.array([f"C{i}" for i in range(10)])
    for (name, model), (by_domain, by_class) in zip(models, axes):
        p = next(model.parameters())
        zs = embed_all(model, xs.to(param_dtype(model)), p.device).cpu().double()
        zt = embed_all(model, xt.to(param_dtype(model)), p.device).cpu().double()
        gap = float(mmd2(zs, zt))
        xy = project(torch.cat([zs, zt]).numpy(), method, seed)
        s_xy, t_xy = xy[: len(zs)], xy[len(zs):]
        by_domain.scatter(s_xy[:, 0], s_xy[:, 1], s=8, alpha=0.5, c="0.35", marker="o", label="source")
        by_domain.scatter(t_xy[:, 0], t_xy[:, 1], s=8, alpha=0.5, c="tab:red", marker="x", label="target")
        by_domain.legend(loc="best", fontsize=8)
        by_domain.set_title(f"{name}: by domain (embedding MMD² {gap:.3f})", fontsize=10)
        def classes(x: Any, y: Any) -> Any:
            return (y if y is not None else predict_proba(model, x.to(param_dtype(model)), p.device).argmax(1)).numpy()

        by_class.scatter(s_xy[:, 0], s_xy[:, 1], s=8, alpha=0.5, c=palette[classes(xs, ys) % 10], marker="o")
        by_class.scatter(t_xy[:, 0], t_xy[:, 1], s=8, alpha=0.5, c=palette[classes(xt, yt) % 10], marker="x")
        how = "labels" if yt is not None else "predicted classes"
        by_class.set_title(f"{name}: by class (source o, target x: {how})", fontsize=10)
    fig.suptitle(f"embeddings, {method.upper()} of source and target together", fontsize=11)
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=110)
    return fig
