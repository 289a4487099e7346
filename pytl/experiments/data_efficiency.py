"""The data-efficiency curve: target accuracy against the number of target labels, for training from
scratch and for transfer ("naive": source training then fine-tuning; "mmd": MMD alignment then
fine-tuning)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pytl.data import make_domain_shift
from pytl.experiments.comparison import compare_strategies
from pytl.experiments.curve_args import check_int_grid, check_model_arg, check_seeds, curve_config, log, model_for
from pytl.experiments.splits import Splits, as_splits, data_for, stratified_order
from pytl.experiments.strategies import MODEL_OPTIONS, select_strategies
from pytl.experiments.tables import CurveRow, CurveTable

__all__ = ["DATA_EFFICIENCY_STRATEGIES", "data_efficiency_curve"]

DATA_EFFICIENCY_STRATEGIES = ("scratch", "naive", "mmd")


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
    fine-tuning budget is ``finetune_epochs`` passes over the n labels) at a fixed λ: stage 1 sees no label, so
    "mmd" aligns at ``lambda_mmd`` (under the default "auto", the alignment's default, 0.5), where
    ``compare_strategies`` with labels would search a grid per label count.

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
    seeds = check_seeds(seeds)
    counts = check_int_grid(label_counts, "label_counts", 1)
    strategies = select_strategies(strategies, DATA_EFFICIENCY_STRATEGIES)
    cfg = curve_config(config, "data_efficiency_curve")
    check_model_arg(model)

    # ---- every seed's data and the grid against it, before anything trains
    splits: dict[int, Splits] = {}
    for s in seeds:
        d = make_domain_shift(s, n_target_labeled=max(counts)) if data is None else data_for(data, s)
        sp = as_splits(d, f"data (seed {s})" if callable(data) else "data")
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
    models = {s: model_for(model, s) for s in seeds}

    values: dict[tuple[str, int], list[float]] = {(st, n): [] for st in strategies for n in counts}
    for s in seeds:
        sp = splits[s]
        run_cfg = {**cfg, "num_classes": cfg.get("num_classes") or sp.num_classes()}
        # a curve measures on its test set: no cross-validation of the labels (folds=None)
        common = dict(source=sp.source, target_unlabeled=sp.target_unlabeled, target_test=sp.target_test, seed=s,
                      folds=None)
        stage1 = [st for st, need in (("source_only", "naive"), ("mmd_only", "mmd")) if need in strategies]
        # without target labels compare_strategies holds a fifth of an array source out for its label-free scores;
        # stage 1 here must train on all of it, as it does with labels (the scores are not used)
        whole = {"source_validation": sp.source} if isinstance(sp.source, tuple) else {}
        pre = None
        if stage1:
            pre = compare_strategies(**common, strategies=stage1, model=models[s], **{**whole, **run_cfg})
        order = stratified_order(sp.target_labeled[1], s)
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
                    # "naive" with no stage-1 epochs = fine-tune the given (stage-1) model under finetune_policy;
                    # the default model's options shaped that model already
                    tuned = {k: v for k, v in run_cfg.items() if k not in MODEL_OPTIONS}
                    r = compare_strategies(**common, target_labeled=labeled, strategies=["naive"],
                                           model=pre.models[start], **{**tuned, "align_epochs": 0})
                    acc[st] = r.accuracy["naive"]
            for st, a in acc.items():
                values[(st, n)].append(a)
            log(verbose, f"seed {s}, {n} target labels ({time.perf_counter() - t0:.1f}s): "
                         + "  ".join(f"{st} {100 * a:.1f}%" for st, a in acc.items()))

    rows = tuple(CurveRow(n, st, tuple(values[(st, n)]), seeds) for n in counts for st in strategies)
    settings = {**cfg, "label_counts": counts, "seeds": seeds, "strategies": strategies,
                "data": "make_domain_shift(seed, n_target_labeled=max(label_counts))" if data is None else "user data"}
    return CurveTable("data_efficiency", "num_labels", "target labels", rows, config=settings,
                      seconds=time.perf_counter() - t_start)
