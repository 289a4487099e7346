"""The divergence sweep: transfer and scratch accuracy as the source-target shift grows (the target is
the source rotated by an angle), the measured input MMD² at each angle, and the crossover angle where
transfer stops paying."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from pytl._checks import check_int
from pytl.data import make_domain_shift
from pytl.experiments.comparison import compare_strategies
from pytl.experiments.crossover import find_crossover
from pytl.experiments.curve_args import check_angles, check_model_arg, check_seeds, curve_config, log, model_for
from pytl.experiments.splits import Splits, as_splits
from pytl.experiments.strategies import STRATEGIES, TRANSFER_STRATEGIES, select_strategies
from pytl.experiments.tables import CurveRow, CurveTable, DivergenceSweep, best_gaps
from pytl.ops import mmd2

__all__ = ["MMD_SAMPLES", "divergence_sweep", "input_mmd2"]

MMD_SAMPLES = 1024  # rows per domain for the input MMD² of divergence_sweep


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
    seeds = check_seeds(seeds)
    grid = check_angles(angles)
    strategies = select_strategies(strategies, STRATEGIES)
    if "scratch" not in strategies or not set(TRANSFER_STRATEGIES) & set(strategies):
        raise ValueError(f"strategies must include 'scratch' and at least one of {TRANSFER_STRATEGIES} (the crossover "
                         f"compares them), got {strategies}")
    cfg = curve_config(config, "divergence_sweep")
    check_model_arg(model)
    if data is not None and not callable(data):
        raise TypeError(f"data must be a callable(seed, angle) returning a DomainShift-like object, got "
                        f"{type(data).__name__}")
    if data is None:
        n_target_labeled = check_int(n_target_labeled, "n_target_labeled", 2)

    splits: dict[tuple[int, float], Splits] = {}
    for s in seeds:
        for a in grid:
            if data is None:
                d = make_domain_shift(s, rotation=a, shift=shift, n_target_labeled=n_target_labeled)
            else:
                d = data(s, a)
            splits[(s, a)] = as_splits(d, f"data({s}, {a:g})")
    models = {s: model_for(model, s) for s in seeds}

    acc: dict[tuple[str, float], list[float]] = {(st, a): [] for st in strategies for a in grid}
    div: dict[float, list[float]] = {a: [] for a in grid}
    for s in seeds:
        for a in grid:
            t0 = time.perf_counter()
            sp = splits[(s, a)]
            r = compare_strategies(**sp.as_dict(), folds=None, seed=s, strategies=list(strategies), model=models[s],
                                   **cfg)
            for st in strategies:
                acc[(st, a)].append(r.accuracy[st])
            div[a].append(input_mmd2(sp))
            log(verbose, f"seed {s}, angle {a:g} ({time.perf_counter() - t0:.1f}s): input MMD² {div[a][-1]:.3f}  "
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
    best = find_crossover(grid, best_gaps(partial), "the best transfer strategy")
    notes = ["crossover: " + best.reason + "."]
    notes += [f"  {st}: " + c.reason for st, c in crossovers.items()]
    settings = {**cfg, "angles": grid, "seeds": seeds, "strategies": strategies,
                "data": (f"make_domain_shift(seed, rotation=angle, shift={tuple(shift)}, "
                         f"n_target_labeled={n_target_labeled})") if data is None else "user data"}
    return DivergenceSweep("divergence_sweep", "angle", "rotation (°)", rows, notes=tuple(notes), config=settings,
                           seconds=time.perf_counter() - t_start, mmd2=mmd_rows, crossover=best.x,
                           crossover_reason=best.reason, crossovers=crossovers)


def input_mmd2(sp: Splits) -> float:
    """Biased MMD² between (up to MMD_SAMPLES of) the source and target inputs, clamped at 0."""
    xs = sp.source[0][:MMD_SAMPLES].flatten(1).double()
    xu = sp.target_unlabeled[:MMD_SAMPLES].flatten(1).double()
    return max(0.0, float(mmd2(xs, xu)))
