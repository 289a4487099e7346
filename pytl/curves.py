"""Curves: when does transfer pay, how much of the network transfers, and when does it stop paying?

* :func:`data_efficiency_curve` - target accuracy against the number of target labels, for training
  from scratch and for transfer ("naive": source training then fine-tuning; "mmd": MMD alignment then
  fine-tuning).
* :func:`layer_transferability` - Yosinski et al. (NeurIPS 2014): for k = 0..L copy the first k layers
  of a source-trained network into a fresh one and train the rest on the target labels, once with the
  copied layers frozen and once fine-tuned. k = 0 copies nothing: it is the from-scratch baseline.
* :func:`divergence_sweep` - transfer and scratch accuracy as the source-target shift grows (the
  target is the source rotated by an angle), the measured input MMD² at each angle, and the crossover
  angle where transfer stops paying (:func:`find_crossover`).

Each returns a tidy table (:class:`CurveTable`: one :class:`CurveRow` per grid point and series with
the per-seed values, their mean and standard deviation) that prints with ``.table()`` and draws with
:mod:`pytl.plot`. They default to the tutorial's synthetic two-moons problem
(:func:`pytl.make_domain_shift`) and accept your own data (``data=``) and model (``model=``). Every
grid, seed list and option is checked before the first training step.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from pytl import _inputs as inp
from pytl.compare import STRATEGIES, _resolve_config, compare_strategies
from pytl.data import make_domain_shift
from pytl.freezing import FreezeFirst, blocks
from pytl.models import Standardize, default_model
from pytl.ops import mmd2
from pytl.train import TwoStageTrainer

__all__ = [
    "Crossover",
    "CurveRow",
    "CurveTable",
    "DivergenceSweep",
    "data_efficiency_curve",
    "divergence_sweep",
    "find_crossover",
    "layer_transferability",
]

DATA_EFFICIENCY_STRATEGIES = ("scratch", "naive", "mmd")
TRANSFER_STRATEGIES = ("naive", "mmd")
LAYER_SERIES = ("frozen", "fine-tuned")
#: options that the curves set themselves (one call per seed and grid point)
RESERVED = ("seed", "strategies", "model", "source", "target_unlabeled", "target_labeled", "target_test")
MMD_SAMPLES = 1024  # rows per domain for the input MMD² of divergence_sweep


# ---------------------------------------------------------------------------------------------- tables


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


TITLES = {
    "data_efficiency": "data-efficiency curve",
    "layer_transferability": "layer transferability (Yosinski et al. 2014)",
    "divergence_sweep": "divergence sweep",
}


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
        body = [[_fmt_x(x)] + [cell(by.get((s, x))) for s in series] for x in xs]
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


class Crossover(NamedTuple):
    """Where transfer minus scratch accuracy crosses zero (linear interpolation), or None and why."""

    x: float | None
    reason: str


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
        return _best_gaps(self)

    def _extra_columns(self) -> list[tuple[str, list[str]]]:
        cols = [("best − scratch", [f"{100 * g:+.1f}" for g in self.gaps])]
        if self.mmd2:
            spread = self.mmd2[0].n_seeds > 1
            cols.append(("input MMD²", [f"{r.mean:.3f}" + (f" ± {r.std:.3f}" if spread else "") for r in self.mmd2]))
        return cols


def _fmt_x(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _best_gaps(t: CurveTable) -> list[float]:
    scratch = t.means("scratch")
    best = [max(vals) for vals in zip(*(t.means(s) for s in TRANSFER_STRATEGIES if s in t.series))]
    return [b - s for b, s in zip(best, scratch)]


def find_crossover(xs: Sequence[float], gaps: Sequence[float], what: str = "transfer") -> Crossover:
    """The first x where ``gaps`` (transfer minus scratch accuracy) goes from >= 0 to < 0.

    Linear interpolation between the two grid points that bracket the sign change:
    x = x0 + (x1 - x0) * g0 / (g0 - g1). Returns ``Crossover(None, reason)`` when the first gap is
    already negative (transfer never pays on this grid) or no gap is negative (transfer pays, or ties,
    everywhere). xs must be strictly increasing and finite, gaps finite, of the same length."""
    xs = [float(x) for x in xs]
    gaps = [float(g) for g in gaps]
    if len(xs) != len(gaps) or not xs:
        raise ValueError(f"xs and gaps must be non-empty and of the same length, got {len(xs)} and {len(gaps)}")
    if not all(math.isfinite(v) for v in xs + gaps):
        raise ValueError("xs and gaps must be finite")
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError(f"xs must be strictly increasing, got {xs}")
    if gaps[0] < 0:
        return Crossover(None, f"{what} is already below scratch at the first grid point, {_fmt_x(xs[0])} "
                               f"({100 * gaps[0]:+.1f} points): it does not pay anywhere on this grid")
    for i in range(1, len(xs)):
        if gaps[i] < 0:
            g0, g1 = gaps[i - 1], gaps[i]
            x = xs[i - 1] + (xs[i] - xs[i - 1]) * g0 / (g0 - g1)
            reason = (f"{what} stops paying at about {x:.3g}, between {_fmt_x(xs[i - 1])} ({100 * g0:+.1f} points "
                      f"vs scratch) and {_fmt_x(xs[i])} ({100 * g1:+.1f}), linearly interpolated")
            back = [xs[j] for j in range(i + 1, len(xs)) if gaps[j] >= 0]
            if back:
                reason += f"; it is level or ahead again at {', '.join(_fmt_x(v) for v in back)}"
            return Crossover(x, reason)
    j = min(range(len(gaps)), key=gaps.__getitem__)
    return Crossover(None, f"{what} stays at or above scratch over the whole grid (smallest gap "
                           f"{100 * gaps[j]:+.1f} points, at {_fmt_x(xs[j])}): no crossover")


# ---------------------------------------------------------------------------------------------- checks


def _check_seeds(seeds: Any) -> tuple[int, ...]:
    if isinstance(seeds, (int, np.integer, str)) or not isinstance(seeds, Sequence):
        raise TypeError(f"seeds must be a sequence of ints >= 0 such as range(3), got {seeds!r}")
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"seeds must hold ints >= 0, got {s!r}")
        out.append(int(s))
    if not out:
        raise ValueError("seeds is empty: give at least one seed, e.g. seeds=range(3)")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds has duplicates: {out}")
    return tuple(out)


def _check_int_grid(values: Any, name: str, minimum: int) -> tuple[int, ...]:
    if isinstance(values, (int, np.integer, str)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must hold ints, got {v!r} ({type(v).__name__})")
        if v < minimum:
            raise ValueError(f"{name} must hold ints >= {minimum}, got {int(v)}")
        out.append(int(v))
    if not out:
        raise ValueError(f"{name} is empty")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has duplicates: {out}")
    return tuple(sorted(out))


def _check_angles(angles: Any) -> tuple[float, ...]:
    if isinstance(angles, (int, float, np.number, str)) or not isinstance(angles, Sequence):
        raise TypeError(f"angles must be a sequence of numbers (degrees), got {angles!r}")
    out = []
    for a in angles:
        if isinstance(a, bool) or not isinstance(a, (int, float, np.integer, np.floating)):
            raise TypeError(f"angles must hold numbers, got {a!r} ({type(a).__name__})")
        if not math.isfinite(float(a)):
            raise ValueError(f"angles must be finite, got {a!r}")
        out.append(float(a))
    if not out:
        raise ValueError("angles is empty")
    if len(set(out)) != len(out):
        raise ValueError(f"angles has duplicates: {out}")
    return tuple(sorted(out))


def _check_strategies(strategies: Any, allowed: Sequence[str]) -> tuple[str, ...]:
    if isinstance(strategies, str):
        strategies = [strategies]
    if not isinstance(strategies, Sequence) or not strategies:
        raise ValueError(f"strategies must be a non-empty sequence drawn from {tuple(allowed)}, got {strategies!r}")
    bad = [s for s in strategies if s not in allowed]
    if bad:
        raise ValueError(f"strategies: unknown {bad}; choose from {tuple(allowed)}")
    return tuple(s for s in allowed if s in strategies)


def _curve_config(config: dict[str, Any], caller: str) -> dict[str, Any]:
    clash = sorted(set(config) & set(RESERVED))
    if clash:
        raise TypeError(f"{caller} sets {clash} itself (pass seeds=, strategies=, model=, data=)")
    _resolve_config(config)  # unknown options raise a TypeError listing the valid ones
    cfg = dict(config)
    cfg.setdefault("num_threads", 1)  # tiny models: one thread beats two (see TwoStageTrainer)
    return cfg


class _Splits(NamedTuple):
    source: tuple[Tensor, Tensor]
    target_unlabeled: Tensor
    target_labeled: tuple[Tensor, Tensor] | None
    target_test: tuple[Tensor, Tensor]

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()

    def num_classes(self) -> int:
        ys = [self.source[1], self.target_test[1]] + ([self.target_labeled[1]] if self.target_labeled else [])
        return max(int(y.max()) for y in ys) + 1


def _as_splits(d: Any, where: str, need_labels: bool = True) -> _Splits:
    """A DomainShift, or any object / mapping with source, target_unlabeled, target_labeled, target_test."""
    def get(key: str) -> Any:
        if isinstance(d, Mapping):
            if key not in d:
                raise TypeError(f"{where} has no {key!r}; it needs source, target_unlabeled, target_labeled and "
                                "target_test (a pytl.data.DomainShift or a dict)")
            return d[key]
        if not hasattr(d, key):
            raise TypeError(f"{where} ({type(d).__name__}) has no attribute {key!r}; it needs source, "
                            "target_unlabeled, target_labeled and target_test (a pytl.data.DomainShift or a dict)")
        return getattr(d, key)

    def labeled(key: str) -> tuple[Tensor, Tensor]:
        v = inp.as_labeled(get(key), f"{where}.{key}")
        if not isinstance(v, tuple):
            raise TypeError(f"{where}.{key} must be arrays or tensors (X, y), not a DataLoader")
        return v

    xu = inp.as_unlabeled(get("target_unlabeled"), f"{where}.target_unlabeled")
    if not isinstance(xu, Tensor):
        raise TypeError(f"{where}.target_unlabeled must be an array or tensor, not a DataLoader")
    tl = get("target_labeled") if need_labels else None
    return _Splits(labeled("source"), xu, labeled("target_labeled") if tl is not None else None,
                   labeled("target_test"))


def _data(data: Any, *args: Any) -> Any:
    """data(*args) for a callable, else data itself (the same data for every seed)."""
    return data(*args) if callable(data) else data


def _check_model_arg(model: Any) -> None:
    if model is not None and not isinstance(model, nn.Module) and not callable(model):
        raise TypeError(f"model must be an nn.Module, a callable(seed) -> nn.Module, or None, got {type(model).__name__}")


def _model_for(model: Any, seed: int) -> nn.Module | None:
    if model is None or isinstance(model, nn.Module):
        return model
    m = model(seed)
    if not isinstance(m, nn.Module):
        raise TypeError(f"model(seed) must return an nn.Module, got {type(m).__name__}")
    return m


def _stratified_order(y: Tensor, seed: int) -> Tensor:
    """A seeded order of the samples whose every prefix is as class-balanced as possible: a random
    permutation, then re-ordered by (rank within its class, class). Prefixes are nested, so the
    n-label subset contains the smaller ones."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(y.shape[0], generator=g)
    yp = y[perm]
    classes = torch.unique(yp)
    rank = torch.empty_like(perm)
    pos = torch.empty_like(perm)
    for i, c in enumerate(classes.tolist()):
        idx = (yp == c).nonzero()[:, 0]
        rank[idx] = torch.arange(idx.numel())
        pos[idx] = i
    key = rank * classes.numel() + pos
    return perm[torch.sort(key, stable=True).indices]


def _log(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- curves


def data_efficiency_curve(
    label_counts: Sequence[int] = (10, 20, 50, 100, 200, 500, 1000),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    strategies: Sequence[str] = DATA_EFFICIENCY_STRATEGIES,
    data: Any = None,
    model: Any = None,
    verbose: bool = False,
    **config: Any,
) -> CurveTable:
    """Target test accuracy against the number of target labels, for scratch, naive and mmd transfer.

    For every seed the labelled target samples are ordered once (seeded, class-balanced prefixes) and
    the n-label training set is the first n of them, so the sets are nested. The source-trained models
    (stage 1 of "naive" and "mmd") do not depend on the target labels and are trained once per seed;
    each label count then fine-tunes them, and trains "scratch", exactly as
    :func:`pytl.compare_strategies` would with those n labels (same initial weights, same budgets: the
    fine-tuning budget is ``finetune_epochs`` passes over the n labels).

    label_counts: distinct ints, each at least the number of classes and at most the labelled target
    samples available. seeds: distinct ints >= 0 (data, initial weights, label subsets).
    data: None (``make_domain_shift(seed, n_target_labeled=max(label_counts))``: the tutorial's problem,
    target rotated 30° and shifted by (3, 3)), a ``DomainShift`` (or a dict/object with source,
    target_unlabeled, target_labeled, target_test: the same data for every seed), or a callable
    ``data(seed)`` returning one. model: None (compare_strategies' default MLP), an nn.Module (the
    initial model of every run) or ``model(seed)``. config: :func:`pytl.compare_strategies` options
    (``num_threads`` defaults to 1 here). verbose: one line per seed and label count on stderr.
    """
    t_start = time.perf_counter()
    seeds = _check_seeds(seeds)
    counts = _check_int_grid(label_counts, "label_counts", 1)
    strategies = _check_strategies(strategies, DATA_EFFICIENCY_STRATEGIES)
    cfg = _curve_config(config, "data_efficiency_curve")
    _check_model_arg(model)

    # ---- every seed's data and the grid against it, before anything trains
    splits: dict[int, _Splits] = {}
    for s in seeds:
        d = make_domain_shift(s, n_target_labeled=max(counts)) if data is None else _data(data, s)
        sp = _as_splits(d, f"data (seed {s})" if callable(data) else "data")
        if sp.target_labeled is None:
            raise ValueError("data has no target_labeled samples: the data-efficiency curve draws its label subsets "
                             "from them")
        pool = sp.target_labeled[0].shape[0]
        if counts[-1] > pool:
            raise ValueError(f"label_counts goes up to {counts[-1]} but data (seed {s}) has only {pool} labelled "
                             f"target samples")
        classes = cfg.get("num_classes") or sp.num_classes()
        if counts[0] < classes:
            raise ValueError(f"label_counts must be at least the number of classes ({classes}) so that every class "
                             f"gets a label, got {counts[0]}")
        splits[s] = sp
    models = {s: _model_for(model, s) for s in seeds}

    values: dict[tuple[str, int], list[float]] = {(st, n): [] for st in strategies for n in counts}
    for s in seeds:
        sp = splits[s]
        run_cfg = {**cfg, "num_classes": cfg.get("num_classes") or sp.num_classes()}
        common = dict(source=sp.source, target_unlabeled=sp.target_unlabeled, target_test=sp.target_test, seed=s)
        stage1 = [st for st, need in (("source_only", "naive"), ("mmd_only", "mmd")) if need in strategies]
        pre = compare_strategies(**common, strategies=stage1, model=models[s], **run_cfg) if stage1 else None
        order = _stratified_order(sp.target_labeled[1], s)
        xl, yl = sp.target_labeled
        for n in counts:
            t0 = time.perf_counter()
            labeled = (xl[order[:n]], yl[order[:n]])
            acc: dict[str, float] = {}
            if "scratch" in strategies:
                r = compare_strategies(**common, target_labeled=labeled, strategies=["scratch"], model=models[s],
                                       **run_cfg)
                acc["scratch"] = r.accuracy["scratch"]
            for st, start in (("naive", "source_only"), ("mmd", "mmd_only")):
                if st in strategies:
                    assert pre is not None
                    # "naive" with no stage-1 epochs = fine-tune the given (stage-1) model under finetune_policy
                    r = compare_strategies(**common, target_labeled=labeled, strategies=["naive"],
                                           model=pre.models[start], **{**run_cfg, "align_epochs": 0})
                    acc[st] = r.accuracy["naive"]
            for st, a in acc.items():
                values[(st, n)].append(a)
            _log(verbose, f"seed {s}, {n} target labels ({time.perf_counter() - t0:.1f}s): "
                          + "  ".join(f"{st} {100 * a:.1f}%" for st, a in acc.items()))

    rows = tuple(CurveRow(n, st, tuple(values[(st, n)]), seeds) for n in counts for st in strategies)
    settings = {**cfg, "label_counts": counts, "seeds": seeds, "strategies": strategies,
                "data": "make_domain_shift(seed, n_target_labeled=max(label_counts))" if data is None else "user data"}
    return CurveTable("data_efficiency", "num_labels", "target labels", rows, config=settings,
                      seconds=time.perf_counter() - t_start)


def _transfer_blocks(source: nn.Module, target: nn.Module, k: int) -> None:
    """Copy the parameters and buffers of the first k blocks (pytl.freezing.blocks) of source into target."""
    if k == 0:
        return
    names = {id(m): n for n, m in target.named_modules()}
    src_state = source.state_dict()
    tgt_state = target.state_dict()
    keys: set[str] = set()
    for b in blocks(target)[:k]:
        keys.update(b.params)
        for m in b.modules:
            prefix = names[id(m)]
            keys.update(key for key in tgt_state if prefix and key.startswith(prefix + "."))
    with torch.no_grad():
        for key in keys:
            tgt_state[key].copy_(src_state[key])


def layer_transferability(
    layers: Sequence[int] | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    data: Any = None,
    model: Any = None,
    hidden_sizes: Sequence[int] = (64, 64, 64, 64),
    source_epochs: int = 100,
    target_epochs: int = 50,
    lr: float = 1e-3,
    batch_size: int = 64,
    device: Any = "cpu",
    num_threads: int | None = 1,
    verbose: bool = False,
) -> CurveTable:
    """Yosinski et al. (NeurIPS 2014): how transferable is each layer?

    Per seed, a network of L layers below its head (an MLPEncoder of ``hidden_sizes`` + a linear head
    by default; ``freezing.blocks`` defines the layers of your own model) is trained on the source
    labels for ``source_epochs``. Then for each k in ``layers`` (default 0..L) its first k layers are
    copied into a fresh copy of the same initial network, whose other layers and head keep their random
    initial weights, and the network is trained on the target labels for ``target_epochs``: series
    "frozen" with the k copied layers frozen (``FreezeFirst(k)``, AnB in the paper), "fine-tuned" with
    everything trained (AnB+). At k = 0 nothing is copied: both series are the same from-scratch run,
    the baseline.

    data: None (``make_domain_shift(seed)``: 50 target labels, target rotated 30° and shifted by (3, 3)),
    a DomainShift-like object (same for every seed) or ``data(seed)``. model: None, an nn.Module with
    ``embed``/``head`` or any module ``freezing.blocks`` splits (copied, never trained), or ``model(seed)``.
    The remaining options are the trainer's (Adam, lr, batch size, device, CPU threads).
    """
    t_start = time.perf_counter()
    seeds = _check_seeds(seeds)
    _check_model_arg(model)
    # the trainer's own checks of every setting, once, before anything trains
    TwoStageTrainer(None, lambda_mmd=0.0, align_epochs=source_epochs, finetune_epochs=target_epochs, lr=lr,
                    batch_size=batch_size, device=device, num_threads=num_threads, progress=False)
    if target_epochs < 1:
        raise ValueError(f"target_epochs must be an int >= 1, got {target_epochs!r}")
    if model is None:
        default_model(2, 2, hidden_sizes)  # checks hidden_sizes (TypeError/ValueError naming it)

    splits: dict[int, _Splits] = {}
    nets: dict[int, nn.Module] = {}
    depth = None
    for s in seeds:
        d = make_domain_shift(s) if data is None else _data(data, s)
        sp = _as_splits(d, f"data (seed {s})" if callable(data) else "data")
        if sp.target_labeled is None:
            raise ValueError("data has no target_labeled samples: the target network trains on them")
        classes = sp.num_classes()
        if sp.target_labeled[0].shape[0] < classes:
            raise ValueError(f"data has {sp.target_labeled[0].shape[0]} labelled target samples, fewer than the "
                             f"{classes} classes")
        if model is None:
            stats = Standardize.fit(sp.source[0], sp.target_unlabeled)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                net = default_model(inp.prod(tuple(sp.source[0].shape[1:])), classes, tuple(hidden_sizes),
                                    standardize=stats)
        else:
            net = copy.deepcopy(_model_for(model, s))
        L = len(blocks(net)) - 1
        if L < 1:
            raise ValueError("the model has no layer below its head to transfer (freezing.blocks finds "
                             f"{L + 1} block)")
        if depth is not None and L != depth:
            raise ValueError(f"model(seed) must give the same depth for every seed, got {depth} and {L} layers")
        depth = L
        splits[s], nets[s] = sp, net
    assert depth is not None
    if layers is None:
        ks = tuple(range(depth + 1))
    else:
        ks = _check_int_grid(layers, "layers", 0)
        if ks[-1] > depth:
            raise ValueError(f"layers must lie in 0..{depth} (the network has L = {depth} layers below its head), "
                             f"got {ks[-1]}")

    values: dict[tuple[str, int], list[float]] = {(m, k): [] for m in LAYER_SERIES for k in ks}
    train = dict(lambda_mmd=0.0, lr=lr, batch_size=batch_size, device=device, num_threads=num_threads, progress=False)
    for s in seeds:
        t0 = time.perf_counter()
        sp, base = splits[s], nets[s]
        src = TwoStageTrainer(copy.deepcopy(base), align_epochs=source_epochs, seed=s, **train)
        src.align(sp.source)
        line = []
        for k in ks:
            net = copy.deepcopy(base)
            _transfer_blocks(src.model, net, k)
            for mode in LAYER_SERIES:
                if k == 0 and mode == "fine-tuned":  # nothing copied, nothing frozen: the same scratch run
                    values[(mode, k)].append(values[("frozen", 0)][-1])
                    continue
                policy = FreezeFirst(k) if mode == "frozen" and k > 0 else None
                tr = TwoStageTrainer(copy.deepcopy(net), finetune_epochs=target_epochs,
                                     finetune_policy=policy, seed=s, **train)
                tr.finetune(sp.target_labeled)
                values[(mode, k)].append(tr.score(*sp.target_test))
            line.append(f"k={k} {100 * values[('frozen', k)][-1]:.1f}/{100 * values[('fine-tuned', k)][-1]:.1f}%")
        _log(verbose, f"seed {s} ({time.perf_counter() - t0:.1f}s), frozen/fine-tuned: " + "  ".join(line))

    rows = tuple(CurveRow(k, m, tuple(values[(m, k)]), seeds) for k in ks for m in LAYER_SERIES)
    notes = (f"k = 0 copies nothing: the from-scratch baseline; L = {depth} layers below the head; source "
             f"{source_epochs} epochs, target {target_epochs} epochs on the target labels",)
    settings = dict(layers=ks, seeds=seeds, depth=depth, hidden_sizes=tuple(hidden_sizes) if model is None else None,
                    source_epochs=source_epochs, target_epochs=target_epochs, lr=lr, batch_size=batch_size,
                    data="make_domain_shift(seed)" if data is None else "user data")
    return CurveTable("layer_transferability", "k", "layers copied (k)", rows, notes=notes, config=settings,
                      seconds=time.perf_counter() - t_start)


def _input_mmd2(sp: _Splits) -> float:
    xs = sp.source[0][:MMD_SAMPLES].flatten(1).double()
    xu = sp.target_unlabeled[:MMD_SAMPLES].flatten(1).double()
    return max(0.0, float(mmd2(xs, xu)))


def divergence_sweep(
    angles: Sequence[float] = (0, 30, 60, 90, 120, 150, 180),
    seeds: Sequence[int] = (0, 1, 2),
    *,
    strategies: Sequence[str] = ("source_only", "scratch", "naive", "mmd"),
    data: Callable[[int, float], Any] | None = None,
    n_target_labeled: int = 50,
    shift: Sequence[float] = (0.0, 0.0),
    model: Any = None,
    verbose: bool = False,
    **config: Any,
) -> DivergenceSweep:
    """Transfer vs scratch accuracy as the source-target shift grows, and where transfer stops paying.

    For each angle and seed the target domain is the source rotated by that angle (default data:
    ``make_domain_shift(seed, rotation=angle, shift=shift, n_target_labeled=n_target_labeled)``, no
    translation by default so that angle 0 means no shift) and :func:`pytl.compare_strategies` trains
    ``strategies`` (which must include "scratch" and "naive" and/or "mmd"). The table's extra column
    is the biased MMD² between source and target inputs (median-heuristic ladder, in [0, 2]).
    ``.crossover``: the angle, linearly interpolated, where the best transfer strategy's mean accuracy
    drops below scratch's (:func:`find_crossover`; None with ``.crossover_reason`` when it does not cross).

    angles: distinct finite numbers (sorted here). data: ``data(seed, angle)`` returning a DomainShift-like
    object, for your own family of shifts. config: compare_strategies options (``num_threads`` 1 by default).
    """
    t_start = time.perf_counter()
    seeds = _check_seeds(seeds)
    grid = _check_angles(angles)
    strategies = _check_strategies(strategies, STRATEGIES)
    if "scratch" not in strategies or not set(TRANSFER_STRATEGIES) & set(strategies):
        raise ValueError(f"strategies must include 'scratch' and at least one of {TRANSFER_STRATEGIES} (the crossover "
                         f"compares them), got {strategies}")
    cfg = _curve_config(config, "divergence_sweep")
    _check_model_arg(model)
    if data is not None and not callable(data):
        raise TypeError(f"data must be a callable(seed, angle) returning a DomainShift-like object, got "
                        f"{type(data).__name__}")
    if data is None:
        if isinstance(n_target_labeled, bool) or not isinstance(n_target_labeled, (int, np.integer)) \
                or n_target_labeled < 2:
            raise ValueError(f"n_target_labeled must be an int >= 2, got {n_target_labeled!r}")

    splits: dict[tuple[int, float], _Splits] = {}
    for s in seeds:
        for a in grid:
            if data is None:
                d = make_domain_shift(s, rotation=a, shift=shift, n_target_labeled=int(n_target_labeled))
            else:
                d = data(s, a)
            splits[(s, a)] = _as_splits(d, f"data({s}, {a:g})")
    models = {s: _model_for(model, s) for s in seeds}

    acc: dict[tuple[str, float], list[float]] = {(st, a): [] for st in strategies for a in grid}
    div: dict[float, list[float]] = {a: [] for a in grid}
    for s in seeds:
        for a in grid:
            t0 = time.perf_counter()
            sp = splits[(s, a)]
            r = compare_strategies(**sp.as_dict(), seed=s, strategies=list(strategies), model=models[s], **cfg)
            for st in strategies:
                acc[(st, a)].append(r.accuracy[st])
            div[a].append(_input_mmd2(sp))
            _log(verbose, f"seed {s}, angle {a:g} ({time.perf_counter() - t0:.1f}s): input MMD² {div[a][-1]:.3f}  "
                          + "  ".join(f"{st} {100 * r.accuracy[st]:.1f}%" for st in strategies))

    mmd_rows = tuple(CurveRow(a, "input_mmd2", tuple(div[a]), seeds) for a in grid)
    mmd_mean = {r.x: (r.mean, r.std) for r in mmd_rows}
    rows = tuple(CurveRow(a, st, tuple(acc[(st, a)]), seeds,
                          extra={"input_mmd2": mmd_mean[a][0], "input_mmd2_std": mmd_mean[a][1]})
                 for a in grid for st in strategies)
    partial = CurveTable("divergence_sweep", "angle", "rotation (°)", rows)
    scratch = partial.means("scratch")
    crossovers = {st: find_crossover(grid, [t - c for t, c in zip(partial.means(st), scratch)], st)
                  for st in TRANSFER_STRATEGIES if st in strategies}
    best = find_crossover(grid, _best_gaps(partial), "the best transfer strategy")
    notes = ["crossover: " + best.reason + "."]
    notes += [f"  {st}: " + c.reason for st, c in crossovers.items()]
    settings = {**cfg, "angles": grid, "seeds": seeds, "strategies": strategies,
                "data": (f"make_domain_shift(seed, rotation=angle, shift={tuple(shift)}, "
                         f"n_target_labeled={n_target_labeled})") if data is None else "user data"}
    return DivergenceSweep("divergence_sweep", "angle", "rotation (°)", rows, notes=tuple(notes), config=settings,
                           seconds=time.perf_counter() - t_start, mmd2=mmd_rows, crossover=best.x,
                           crossover_reason=best.reason, crossovers=crossovers)
