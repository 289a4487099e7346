"""Figures of the curves in :mod:`pytl.curves` (needs matplotlib: ``pip install matplotlib`` or ``pip install 'pytl[plot]'``).

One function per curve, each drawing the mean over seeds as a line with a band of ± one standard
deviation, returning the matplotlib ``Figure`` and, given ``path``, saving it (PNG, or any format
matplotlib knows from the suffix). Figures are drawn on matplotlib's Agg canvas directly: nothing
goes through pyplot, no window opens, and the global backend is left alone.

    from pytl import curves, plot
    plot.plot_divergence_sweep(curves.divergence_sweep(), "divergence.png")
"""

from __future__ import annotations

import os
from typing import Any

from pytl.curves import TRANSFER_STRATEGIES, CurveTable, DivergenceSweep

__all__ = ["plot_curve", "plot_data_efficiency", "plot_divergence_sweep", "plot_layer_transferability"]

INSTALL_HINT = "pytl.plot needs matplotlib: pip install matplotlib (or pip install 'pytl[plot]')"
COLORS = {"scratch": "tab:gray", "naive": "tab:orange", "mmd": "tab:blue", "source_only": "tab:red",
          "mmd_only": "tab:purple", "ensemble": "tab:green", "frozen": "tab:blue", "fine-tuned": "tab:orange"}
STYLES = {"scratch": "--", "source_only": ":"}


def _figure(figsize: tuple[float, float]) -> Any:
    """A Figure on an Agg canvas (no pyplot state); a clear ImportError without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _check_table(table: Any, kind: str, func: str) -> None:
    if not isinstance(table, CurveTable):
        raise TypeError(f"{func} takes a pytl.curves.CurveTable, got {type(table).__name__}")
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
        raise TypeError(f"plot_curve takes a pytl.curves.CurveTable, got {type(table).__name__}")
    funcs = {"data_efficiency": plot_data_efficiency, "layer_transferability": plot_layer_transferability,
             "divergence_sweep": plot_divergence_sweep}
    if table.kind not in funcs:
        raise ValueError(f"no plot for a {table.kind!r} table; known: {sorted(funcs)}")
    return funcs[table.kind](table, path)
