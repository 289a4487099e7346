"""The curves' result tables: one ``CurveRow`` per grid point and series, gathered in a ``CurveTable``
(``DivergenceSweep`` adds the input MMD² and the crossover). Tidy rows that print with ``.table()``,
save with ``.to_csv`` / ``.to_json`` and draw with :mod:`pytl.plot`."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytl.experiments.strategies import TRANSFER_STRATEGIES

if TYPE_CHECKING:
    from pytl.experiments.crossover import Crossover

__all__ = ["TITLES", "CurveRow", "CurveTable", "DivergenceSweep", "best_gaps", "format_x"]

TITLES = {
    "data_efficiency": "data-efficiency curve",
    "layer_transferability": "layer transferability (Yosinski et al. 2014)",
    "divergence_sweep": "divergence sweep",
}


@dataclass(frozen=True)
class CurveRow:
    """One grid point of one series: the per-seed values, their mean and sample standard deviation."""

    x: float
    series: str
    values: tuple[float, ...]
    seeds: tuple[int, ...]
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def n_seeds(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof = 1) over the seeds; 0 for a single seed."""
        if len(self.values) < 2:
            return 0.0
        mu = self.mean
        return math.sqrt(math.fsum((v - mu) ** 2 for v in self.values) / (len(self.values) - 1))

    def to_dict(self, x_name: str = "x") -> dict[str, Any]:
        return {x_name: self.x, "series": self.series, "mean": self.mean, "std": self.std, "n_seeds": self.n_seeds,
                "values": list(self.values), "seeds": list(self.seeds), **dict(self.extra)}


@dataclass(frozen=True)
class CurveTable:
    """A curve's results: ``rows`` (one :class:`CurveRow` per grid point and series), tidy.

    kind: "data_efficiency", "layer_transferability" or "divergence_sweep"; x_name: the grid
    column ("num_labels", "k", "angle"); x_label: its axis label; metric: what the values are (target
    test accuracy, a fraction); notes: lines printed under the table; config: the settings used.
    """

    kind: str
    x_name: str
    x_label: str
    rows: tuple[CurveRow, ...]
    metric: str = "target accuracy"
    notes: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)
    seconds: float = 0.0

    @property
    def series(self) -> list[str]:
        """Series names in order of appearance."""
        return list(dict.fromkeys(r.series for r in self.rows))

    @property
    def xs(self) -> list[float]:
        """The grid, ascending."""
        return sorted({r.x for r in self.rows})

    @property
    def seeds(self) -> list[int]:
        return list(self.rows[0].seeds) if self.rows else []

    def select(self, series: str) -> list[CurveRow]:
        """The rows of one series, by ascending x."""
        out = sorted((r for r in self.rows if r.series == series), key=lambda r: r.x)
        if not out:
            raise KeyError(f"no series {series!r}; this table has {self.series}")
        return out

    def means(self, series: str) -> list[float]:
        return [r.mean for r in self.select(series)]

    def stds(self, series: str) -> list[float]:
        return [r.std for r in self.select(series)]

    def to_dicts(self) -> list[dict[str, Any]]:
        """One dict per row: {x_name, series, mean, std, n_seeds, values, seeds, ...extra}."""
        return [r.to_dict(self.x_name) for r in self.rows]

    def to_json(self, path: str) -> None:
        payload = {"kind": self.kind, "x_name": self.x_name, "metric": self.metric, "rows": self.to_dicts(),
                   "notes": list(self.notes), "seconds": self.seconds}
        with open(path, "w") as f:
            json.dump(payload, f, indent=1)
            f.write("\n")

    def to_csv(self, path: str) -> None:
        """One line per row; ``values`` and ``seeds`` are space-separated lists."""
        dicts = self.to_dicts()
        fields = list(dict.fromkeys(k for d in dicts for k in d))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for d in dicts:
                w.writerow({k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in d.items()})

    def _extra_columns(self) -> list[tuple[str, list[str]]]:
        """Columns a subclass adds to the right of the series in ``table()``: (header, one cell per x)."""
        return []

    def table(self) -> str:
        """The curve in wide form: one line per grid point, one column per series (accuracy in %, mean ± std)."""
        xs, series = self.xs, self.series
        by = {(r.series, r.x): r for r in self.rows}
        seeds = self.seeds
        spread = len(seeds) > 1

        def cell(r: CurveRow | None) -> str:
            if r is None:
                return "-"
            return f"{100 * r.mean:.1f}" + (f" ± {100 * r.std:.1f}" if spread else "")

        header = [self.x_label] + series
        body = [[format_x(x)] + [cell(by.get((s, x))) for s in series] for x in xs]
        for name, column in self._extra_columns():
            header.append(name)
            for line, value in zip(body, column):
                line.append(value)
        widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]

        def fmt(line: list[str]) -> str:
            return "  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]).rstrip()

        over = (f"mean ± std over seeds {', '.join(map(str, seeds))}" if spread else f"seed {seeds[0]}") if seeds else ""
        lines = [f"{TITLES.get(self.kind, self.kind)}: {self.metric} in %, {over}", fmt(header)]
        lines.append("-" * len(lines[-1]))
        lines += [fmt(line) for line in body]
        lines += list(self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@dataclass(frozen=True)
class DivergenceSweep(CurveTable):
    """:class:`CurveTable` of :func:`divergence_sweep`, plus

    mmd2: one row per angle, the biased MMD² between source and target inputs (median-heuristic
    ladder, k(x, x) = 1, so in [0, 2]) per seed; crossover: the interpolated angle where the best
    transfer strategy's mean accuracy falls below scratch's (None when it does not cross in the grid,
    with the reason in crossover_reason); crossovers: the same per transfer strategy.
    """

    mmd2: tuple[CurveRow, ...] = ()
    crossover: float | None = None
    crossover_reason: str = ""
    crossovers: Mapping[str, Crossover] = field(default_factory=dict)

    @property
    def gaps(self) -> list[float]:
        """Per angle: best transfer mean accuracy minus scratch mean accuracy (a fraction)."""
        return best_gaps(self)

    def _extra_columns(self) -> list[tuple[str, list[str]]]:
        cols = [("best − scratch", [f"{100 * g:+.1f}" for g in self.gaps])]
        if self.mmd2:
            spread = self.mmd2[0].n_seeds > 1
            cols.append(("input MMD²", [f"{r.mean:.3f}" + (f" ± {r.std:.3f}" if spread else "") for r in self.mmd2]))
        return cols


def format_x(x: float) -> str:
    """A grid value as printed: 30 for 30.0, 22.5 as it is."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def best_gaps(table: CurveTable) -> list[float]:
    """Per grid point: the best transfer strategy's mean accuracy minus the mean accuracy of "scratch"."""
    scratch = table.means("scratch")
    best = [max(vals) for vals in zip(*(table.means(s) for s in TRANSFER_STRATEGIES if s in table.series))]
    return [b - s for b, s in zip(best, scratch)]
