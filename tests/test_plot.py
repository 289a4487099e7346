"""pytl.plot: each curve drawn to a valid PNG, the drawn lines are the table's numbers, and the
ImportError without matplotlib."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pytl import experiments as cv
from pytl import plot

PNG = b"\x89PNG\r\n\x1a\n"
SEEDS = (0, 1, 2)


def table(kind, x_name, xs, series_values):
    rows = tuple(cv.CurveRow(x, s, tuple(vals[i]), SEEDS) for i, x in enumerate(xs)
                 for s, vals in series_values.items())
    return cv.CurveTable(kind, x_name, x_name, rows)


def data_efficiency_table():
    xs = [10, 50, 200]
    return table("data_efficiency", "num_labels", xs, {
        "scratch": [[0.80, 0.82, 0.78], [0.85, 0.86, 0.84], [0.90, 0.91, 0.92]],
        "naive": [[0.84, 0.80, 0.83], [0.86, 0.85, 0.90], [0.91, 0.90, 0.89]],
        "mmd": [[0.86, 0.88, 0.87], [0.90, 0.91, 0.89], [0.95, 0.96, 0.97]],
    })


def divergence_table():
    xs = [0.0, 60.0, 120.0]
    acc = {
        "scratch": [[0.86, 0.88, 0.87], [0.86, 0.87, 0.88], [0.87, 0.86, 0.88]],
        "naive": [[0.98, 0.97, 0.99], [0.89, 0.88, 0.90], [0.30, 0.35, 0.25]],
    }
    rows = tuple(cv.CurveRow(x, s, tuple(v[i]), SEEDS) for i, x in enumerate(xs) for s, v in acc.items())
    mmd_rows = tuple(cv.CurveRow(x, "input_mmd2", (m, m + 0.002, m - 0.002), SEEDS)
                     for x, m in zip(xs, (0.003, 0.07, 0.06)))
    partial = cv.CurveTable("divergence_sweep", "angle", "rotation (°)", rows)
    c = cv.find_crossover(xs, [t - s for t, s in zip(partial.means("naive"), partial.means("scratch"))])
    return cv.DivergenceSweep("divergence_sweep", "angle", "rotation (°)", rows, mmd2=mmd_rows, crossover=c.x,
                              crossover_reason=c.reason)


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 5_000


def check_series(ax, t, series, label=None):
    line = lines_by_label(ax)[label or series]
    np.testing.assert_allclose(line.get_xdata(), t.xs)
    np.testing.assert_allclose(line.get_ydata(), t.means(series), rtol=0, atol=1e-15)


def check_bands(ax, t, series_list):
    """One ±std band per series whose vertical extent is [min(mean - std), max(mean + std)]."""
    bands = ax.collections
    assert len(bands) == len(series_list)
    for band, s in zip(bands, series_list):
        ys = band.get_paths()[0].vertices[:, 1]
        lo = np.array(t.means(s)) - np.array(t.stds(s))
        hi = np.array(t.means(s)) + np.array(t.stds(s))
        assert ys.min() == pytest.approx(lo.min()) and ys.max() == pytest.approx(hi.max())


def test_data_efficiency_plot(tmp_path):
    pytest.importorskip("matplotlib")
    t = data_efficiency_table()
    fig = plot.plot_data_efficiency(t, tmp_path / "de.png")
    check_png(tmp_path / "de.png")
    ax = fig.axes[0]
    for s in ("scratch", "naive", "mmd"):
        check_series(ax, t, s)
    check_bands(ax, t, ["scratch", "naive", "mmd"])
    assert ax.get_xscale() == "log" and ax.get_xlabel() == t.x_label


def test_layer_transferability_plot(tmp_path):
    pytest.importorskip("matplotlib")
    t = table("layer_transferability", "k", [0, 1, 2], {
        "frozen": [[0.8, 0.82, 0.84], [0.83, 0.81, 0.85], [0.7, 0.75, 0.72]],
        "fine-tuned": [[0.8, 0.82, 0.84], [0.85, 0.86, 0.84], [0.86, 0.85, 0.87]],
    })
    fig = plot.plot_layer_transferability(t, str(tmp_path / "layers.png"))
    check_png(tmp_path / "layers.png")
    ax = fig.axes[0]
    check_series(ax, t, "frozen", "copied layers frozen")
    check_series(ax, t, "fine-tuned", "copied layers fine-tuned")
    baseline = lines_by_label(ax)["scratch (k = 0)"]
    assert list(baseline.get_ydata()) == [pytest.approx(0.82)] * 2


def test_divergence_plot_has_the_crossover_and_the_mmd_axis(tmp_path):
    pytest.importorskip("matplotlib")
    t = divergence_table()
    assert 60 < t.crossover < 120
    fig = plot.plot_divergence_sweep(t, tmp_path / "div.png")
    check_png(tmp_path / "div.png")
    ax, right = fig.axes
    check_series(ax, t, "scratch")
    check_series(ax, t, "naive")
    check_bands(ax, t, ["scratch", "naive"])
    cross = [line for label, line in lines_by_label(ax).items() if label.startswith("crossover")]
    assert len(cross) == 1 and list(cross[0].get_xdata()) == [t.crossover, t.crossover]
    mmd = lines_by_label(right)["input MMD²"]
    np.testing.assert_allclose(mmd.get_ydata(), [r.mean for r in t.mmd2])


def test_plot_curve_dispatches_and_rejects_other_tables(tmp_path):
    pytest.importorskip("matplotlib")
    fig = plot.plot_curve(divergence_table(), tmp_path / "x.svg")
    assert (tmp_path / "x.svg").read_text().lstrip().startswith("<?xml") and len(fig.axes) == 2
    with pytest.raises(ValueError, match="divergence_sweep"):
        plot.plot_data_efficiency(divergence_table())
    with pytest.raises(TypeError, match="CurveTable"):
        plot.plot_curve({"rows": []})


def test_single_seed_draws_no_band():
    pytest.importorskip("matplotlib")
    rows = tuple(cv.CurveRow(x, s, (0.5 + x / 1000,), (0,)) for x in (10, 20) for s in ("scratch", "mmd"))
    fig = plot.plot_data_efficiency(cv.CurveTable("data_efficiency", "num_labels", "target labels", rows))
    assert len(fig.axes[0].collections) == 0 and len(fig.axes[0].get_lines()) == 2


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` of these now raises ImportError
    with pytest.raises(ImportError, match=r"pip install matplotlib"):
        plot.plot_data_efficiency(data_efficiency_table())
    assert plot.matplotlib_available() is False  # what the CLI asks before it trains for a figure


def test_report_figure_draws_the_domains_and_one_panel_per_strategy(tmp_path):
    pytest.importorskip("matplotlib")
    from pytl.experiments import compare_strategies
    from pytl.data import make_domain_shift

    data = make_domain_shift(0, n_source=100, n_target_unlabeled=100, n_target_labeled=10, n_target_test=120)
    report = compare_strategies(**data.as_dict(), strategies=["scratch", "mmd"], align_epochs=1, finetune_epochs=1,
                                num_threads=1)
    fig = plot.plot_report(report, data, tmp_path / "report.png")
    check_png(tmp_path / "report.png")
    domains, *panels = fig.axes
    assert [ax.get_title() for ax in panels] == [f"{s}: {100 * a:.1f}% on target" for s, a in report.accuracy.items()]
    source, target, labels = domains.collections
    np.testing.assert_array_equal(source.get_offsets(), data.source[0])
    np.testing.assert_array_equal(target.get_offsets(), data.target_test[0])
    np.testing.assert_array_equal(labels.get_offsets(), data.target_labeled[0])
    with pytest.raises(TypeError, match="ComparisonReport"):
        plot.plot_report(data_efficiency_table(), data)


def test_import_pytl_does_not_import_matplotlib():
    root = Path(__file__).absolute().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys, pytl, pytl.plot, pytl.experiments; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
