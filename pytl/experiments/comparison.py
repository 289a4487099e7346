"""Strategy comparison: does transfer help on this problem, which strategy should ship, and how sure is that?

``compare_strategies`` trains every strategy from the same initial weights with the same budgets.
Always comparing against "scratch" is the only reliable way to notice negative transfer (borrowed
knowledge that makes the target model worse). It answers with what the user has:

- a few target labels: stratified k-fold cross-validation over them (``report.estimate``), a paired
  comparison of the best transfer strategy against scratch (``report.verdict``), and the strategy to
  ship (``report.best``, retrained on every label: ``report.best_model``);
- a labelled target test set as well: its accuracies (``report.accuracy``) decide the verdict.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pytl import _inputs as inp
from pytl._checks import check_choice, check_int, check_optional_int
from pytl.experiments.comparison_data import (
    LOADER_ROWS,
    ComparisonData,
    check_data,
    first_rows,
    hold_out_source,
    initial_model,
)
from pytl.experiments.estimate import Estimate, PairedComparison, compare_paired
from pytl.experiments.folds import DEFAULT_FOLDS, check_folds, stratified_folds
from pytl.experiments.lambda_search import comparison_grids, is_auto
from pytl.experiments.report import ComparisonReport
from pytl.experiments.runs import FINETUNED, Runs
from pytl.experiments.weighted_ensemble import WEIGHTED_ENSEMBLE, add_weighted_ensemble, candidates
from pytl.experiments.strategies import (
    ALIGNED,
    MODEL_OPTIONS,
    DEFAULT_STRATEGIES,
    NEEDS_TARGET_LABELS,
    POLICIES,
    SEMI_SUPERVISED,
    STRATEGIES,
    TRAINER_OPTIONS,
    TRANSFER_STRATEGIES,
    best_transfer,
    resolve_config,
    select_strategies,
)
from pytl.inference import EVAL_BATCH, eval_mode
from pytl.ops import mmd2
from pytl.train import TwoStageTrainer, resolve_device
from pytl.train.threads import stage_threads, using_threads
from pytl.validation import CRITERIA
from pytl.validation.criteria import check_criterion

__all__ = ["compare_strategies"]

EMBEDDING_MMD_SAMPLES = LOADER_ROWS  # rows per domain for the embedding MMD² of each strategy's model
#: what a label-using strategy ships (the "ship" option): retrained on every label, or its fold models' mean
SHIP = ("refit", "folds")


def compare_strategies(
    source: Any,
    target_unlabeled: Any,
    target_test: Any = None,
    target_labeled: Any = None,
    *,
    folds: int | None = DEFAULT_FOLDS,
    seed: int = 0,
    strategies: Sequence[str] | None = None,
    model: nn.Module | None = None,
    **config: Any,
) -> ComparisonReport:
    """Train each strategy with identical initial weights and budgets; estimate and compare their target accuracy.

    - "source_only": ``align_epochs`` on the source (λ = 0).
    - "mmd_only": ``align_epochs`` of CE + λ·MMD² (unsupervised adaptation, no target label).
    - "scratch": ``scratch_epochs`` (default ``finetune_epochs``: the same target-label budget as the
      fine-tuned strategies, which start from source-trained weights instead of random ones).
    - "naive": "source_only", then ``finetune_epochs`` on the target labels.
    - "mmd": "mmd_only", then the same fine-tuning.
    - "ensemble": mean class probabilities of "mmd" and "scratch".
    - "cmmd_only", "cmmd", "coral_only", "coral", "dann_only", "dann" (``strategies="all"`` or by name):
      as "mmd_only" and "mmd" with the class-conditional MMD (LMMD of DSAN, weighted by ``lambda_cmmd``),
      Deep CORAL (``lambda_coral``) or DANN's domain discriminator (``lambda_dann`` scales its reversed
      gradient) in place of MMD² (TwoStageTrainer's ``alignment``).

    target_labeled: the few target labels. With ``folds`` (default 5), every strategy that uses them is
    also trained once per stratified fold on the other folds' labels and scored on the held-out fold;
    the label-free strategies are scored on all the labels; stage-1 models are trained once and shared
    by every fold. This gives ``report.estimate`` (no test set needed), ``report.verdict`` (a paired
    test against scratch) and ``report.best``; the models in ``report.models`` are trained on all the
    labels (``ship="refit"``), or with ``ship="folds"`` each is the mean of its fold models, the models its
    estimate scored (no retraining). Each class needs at least ``folds`` labels; ``folds=None`` (or 0) skips the
    cross-validation.
    target_test: optional labelled target data; when given, ``report.accuracy`` holds each strategy's
    accuracy on it and the verdict is taken on it.

    Strategies that need target labels are skipped (``report.skipped``) when ``target_labeled`` is None;
    the others are then ranked by every label-free criterion of ``pytl.validation`` (``report.label_free``;
    ``criterion`` picks ``report.best``), scored on a ``source_validation`` fraction of the source that is
    held out from training (stratified, seeded), or on a labelled (X, y) source set you pass there.
    Inputs are (X, y) pairs of arrays or tensors (X: samples first, any feature shape), DataLoaders
    (yielding (x, y) or x) or map-style Datasets (batched with ``batch_size``, shuffled with a generator
    seeded by ``seed``); ``target_labeled`` is gathered into memory (it is the few labels). Every input
    is checked before training starts. ``model``: the initial model for all strategies (deep-copied); by
    default an MLP sized from the data. ``config``: see ``DEFAULT_CONFIG``. Each alignment's λ is chosen from
    the data by default (``lambda_mmd="auto"``: stage 1 per λ of a grid around the alignment's default, scored
    by the target labels, nested in the folds; ``report.lambdas``). Without target labels, and for the
    semi-supervised strategies, "auto" is the alignment's default (lambda_search.py says why); a number trains
    that λ alone, a grid of your own is searched (without labels by ``criterion``).
    """
    cfg = resolve_config(config)
    wanted = list(select_strategies(DEFAULT_STRATEGIES if strategies is None else strategies))
    seed = check_int(seed, "seed", 0)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
    ignored = sorted(set(config) & set(MODEL_OPTIONS)) if model is not None else []
    if ignored:
        raise ValueError(f"{', '.join(ignored)} shape(s) the default model, which model= replaces: they would be "
                         "ignored; drop them, or drop model= to let compare_strategies build the model")

    # ---- check every input before anything trains
    data = check_data(source, target_unlabeled, target_test, target_labeled, cfg, seed)
    skipped: dict[str, str] = {}
    source_val = None
    if data.labeled is None:  # rank by a label-free criterion on held-out source rows
        check_criterion(cfg["criterion"])
        data, source_val = hold_out_source(data, cfg["source_validation"], seed)
        skipped = {s: "no target labels" for s in wanted if s in NEEDS_TARGET_LABELS}
        wanted = [s for s in wanted if s not in NEEDS_TARGET_LABELS]
        if not wanted:
            raise ValueError(f"every requested strategy needs target labels ({sorted(skipped)}) and target_labeled "
                             "is None")
    device = resolve_device(cfg["device"], model)
    common = {k: cfg[k] for k in TRAINER_OPTIONS if k not in POLICIES}
    common.update(num_classes=data.num_classes, device=device, seed=seed)
    # The trainer's checks of the settings, once, before anything trains (bad epochs, lr, ...).
    grids = comparison_grids(cfg, data.labeled is not None)  # λ options checked
    probe = TwoStageTrainer(None, lambda_align=max(grids["mmd"]), **common, **{k: cfg[k] for k in POLICIES})
    scratch_epochs = cfg["finetune_epochs"] if cfg["scratch_epochs"] is None else cfg["scratch_epochs"]
    cfg["scratch_epochs"] = check_int(scratch_epochs, "scratch_epochs", 0)
    cfg["ssl_epochs"] = check_optional_int(cfg["ssl_epochs"], "ssl_epochs", 1)
    base = initial_model(model, data.source, data.target_unlabeled, data.num_classes, cfg, seed).to(device)
    # ...and its checks of the model against the data (classes, feature shape, embed/head for MMD).
    probe.model = copy.deepcopy(base)
    probe.check_inputs(data.source, data.target_unlabeled, data.labeled,
                       eval_data=None if data.test is None else {"target_test": data.test})
    fold_index, k = None, check_folds(folds, None if data.labeled is None else data.labeled[1])
    if k is not None and data.labeled is not None:
        fold_index = stratified_folds(data.labeled[1], k, seed)
    if check_choice(cfg["ship"], "ship", SHIP) == "folds" and data.labeled is not None and fold_index is None:
        raise ValueError("ship='folds' ships each label-using strategy's cross-validation fold models, and folds is "
                         "None: give folds (at least 2), or ship='refit'")
    if WEIGHTED_ENSEMBLE in wanted:
        why = ("its weights come from cross-validated predictions: give folds" if fold_index is None else
               "it averages the other strategies: request at least two of them" if len(candidates(wanted, wanted)) < 2
               else None)
        if why:
            skipped[WEIGHTED_ENSEMBLE] = why
            wanted.remove(WEIGHTED_ENSEMBLE)

    # "auto" threads: the comparison's own evaluation on the threads its small models train on (threads.py)
    with using_threads(stage_threads(cfg["num_threads"], base, 2 * cfg["batch_size"])):
        return _train_and_report(base, data, common, cfg, source_val, wanted, fold_index, skipped, seed, device)


def _train_and_report(base: nn.Module, data: ComparisonData, common: dict[str, Any], cfg: dict[str, Any],
                      source_val: Any, wanted: list[str], fold_index: list[Tensor] | None, skipped: dict[str, str],
                      seed: int, device: torch.device) -> ComparisonReport:
    """The runs (stage 1, cross-validation, stage 2 on every label) and the report of a checked comparison."""
    runs = Runs(base, data, common, cfg, source_val)
    runs.stage1(wanted)
    estimate: dict[str, Estimate] = {}
    t0 = time.perf_counter()
    if fold_index is not None:
        estimate = runs.cross_validate(wanted, fold_index)
    elif data.labeled is not None and runs.tuned(wanted):
        _finetune_lambdas_without_estimates(runs, wanted, data.labeled[1], seed)
    cv_seconds = time.perf_counter() - t0
    if data.labeled is not None and cfg["ship"] == "folds":
        runs.ship_folds(wanted)
    elif data.labeled is not None:
        runs.stage2(wanted, data.labeled)
    weighted = None
    if WEIGHTED_ENSEMBLE in wanted:  # trains nothing: weighs the models just trained
        weighted = add_weighted_ensemble(estimate, data.labeled[1], fold_index, runs.models, runs.seconds, STRATEGIES)
        cfg["weighted_ensemble_members"] = weighted.describe()
    models = {s: runs.models[s] for s in STRATEGIES if s in wanted}
    dtype = next(base.parameters()).dtype
    accuracy, test_correct = _test_accuracy(models, data, device, dtype)
    paired = _paired(accuracy, test_correct, estimate, data)
    label_free = {} if source_val is None else _label_free_scores(models, source_val, data.target_unlabeled)
    return ComparisonReport(accuracy=accuracy, embedding_mmd2=_embedding_mmd2(models, data, device, dtype),
                            seconds={s: runs.seconds[s] for s in models}, skipped=skipped, models=models,
                            histories={s: runs.histories[s] for s in models if s in runs.histories},
                            config={**cfg, "num_classes": data.num_classes, "strategies": list(models),
                                    "folds": None if fold_index is None else len(fold_index),
                                    "sample_shape": inp.sample_shape(data.source, True, "source"),
                                    **{ALIGNED[a]: g[0] for a, g in runs.grids.items() if len(g) == 1},
                                    **{s.option: s.chosen for s in runs.searches.values()},  # the λ used
                                    "lambdas_unsearched": _unsearched(cfg, data, wanted),
                                    "ssl_lambdas": {s: runs.ssl_lambda(a) for s, a in SEMI_SUPERVISED.items()
                                                    if s in models},
                                    "finetune_lambdas": {a: s.finetune_chosen for a, s in runs.searches.items()
                                                         if s.finetune_chosen is not None}},
                            seed=seed, estimate=estimate, paired=paired, cv_seconds=cv_seconds, label_free=label_free,
                            criterion=None if source_val is None else cfg["criterion"], lambdas=runs.searches,
                            label_shift=_label_shift(runs, models), weighted_ensemble=weighted)


def _unsearched(cfg: dict[str, Any], data: ComparisonData, wanted: list[str]) -> list[str]:
    """The λ options of the wanted alignments left at "auto" and not searched: without target labels "auto" is
    the alignment's default λ (lambda_search.comparison_grids)."""
    if data.labeled is not None:
        return []
    return [o for a, o in ALIGNED.items() if f"{a}_only" in wanted and is_auto(cfg[o])]


def _finetune_lambdas_without_estimates(runs: Runs, wanted: list[str], y: Tensor, seed: int) -> None:
    """With ``folds=None`` no strategy is cross-validated, but a fine-tuned strategy's λ still is (up to
    DEFAULT_FOLDS stratified folds, as many as the rarest class allows): the λ whose stage-1 model predicts
    the labels best is not the one whose fine-tuned model does (benchmarks/OUTCOMES.md), and a fine-tuning
    per λ and fold costs little beside the stage-1 search. With fewer than 2 labels in some class the
    fine-tuned strategy keeps stage 1's choice (its LambdaSearch then has no finetune_chosen)."""
    counts = torch.bincount(y, minlength=runs.data.num_classes)
    k = min(DEFAULT_FOLDS, int(counts.min()))
    if k >= 2:
        runs.finetune_lambdas(runs.tuned(wanted), stratified_folds(y, k, seed))


def _label_shift(runs: Runs, models: dict[str, nn.Module]) -> dict[str, Any]:
    """Each reported strategy's label-shift estimate: its own stage 1's, or that of the stage 1 it started from."""
    out = {}
    for s in models:
        start = s if s.endswith("_only") or s == "source_only" else FINETUNED.get(s, "")
        if start in runs.label_shift:
            out[s] = runs.label_shift[start]
    return out


def _label_free_scores(models: dict[str, nn.Module], source_val: tuple[Tensor, Tensor],
                       target: Tensor | DataLoader) -> dict[str, dict[str, float]]:
    """Every criterion of pytl.validation for every model: strategy → criterion → score (higher is better)."""
    return {s: {name: float(f(m, source_val, target)) for name, f in CRITERIA.items()} for s, m in models.items()}


def _test_batches(test: tuple[Tensor, Tensor] | DataLoader) -> Iterator[tuple[Tensor, Tensor]]:
    if isinstance(test, tuple):
        yield from zip(test[0].split(EVAL_BATCH), test[1].split(EVAL_BATCH))
        return
    for batch in test:
        x, y = inp.split_batch(batch, True, "target_test")
        yield x, inp.as_labels(y, "labels from target_test")


def _test_accuracy(models: dict[str, nn.Module], data: ComparisonData, device: torch.device,
                   dtype: torch.dtype) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Target test accuracy of every model and its per-sample correctness (one pass over the test data,
    every model on each batch, so that a shuffling DataLoader still pairs the samples)."""
    if data.test is None:
        return {}, {}
    correct: dict[str, list[Tensor]] = {s: [] for s in models}
    with torch.no_grad():
        for x, y in _test_batches(data.test):
            x = x.to(device, dtype)
            for s, m in models.items():
                with eval_mode(m):
                    correct[s].append(m(x).argmax(1).cpu() == y)
    flat = {s: torch.cat(c) for s, c in correct.items()}
    return {s: float(c.double().mean()) for s, c in flat.items()}, flat


def _embedding_mmd2(models: dict[str, nn.Module], data: ComparisonData, device: torch.device,
                    dtype: torch.dtype) -> dict[str, float]:
    """MMD² between source and target embeddings of every model with ``embed`` (the first rows of each)."""
    xs = first_rows(data.source, EMBEDDING_MMD_SAMPLES, True)
    xu = first_rows(data.target_unlabeled, EMBEDDING_MMD_SAMPLES, False)
    n = min(xs.shape[0], xu.shape[0])
    out = {}
    for s, m in models.items():
        if hasattr(m, "embed"):
            with torch.no_grad(), eval_mode(m):
                zs = m.embed(xs[:n].to(device, dtype)).flatten(1).double()
                zu = m.embed(xu[:n].to(device, dtype)).flatten(1).double()
            out[s] = float(mmd2(zs, zu))
    return out


def _paired(accuracy: dict[str, float], test_correct: dict[str, Tensor], estimate: dict[str, Estimate],
            data: ComparisonData) -> PairedComparison | None:
    """The best transfer strategy against scratch, sample by sample: on the test set when there is one,
    else on the cross-validated predictions of the target labels."""
    if test_correct:
        best = best_transfer(accuracy)
        if best is None or "scratch" not in accuracy:
            return None
        n = test_correct["scratch"].numel()
        return compare_paired(best, "scratch", test_correct[best], test_correct["scratch"],
                              f"the target test set ({n} samples)")
    ran = [s for s in TRANSFER_STRATEGIES if s in estimate]
    if not ran or "scratch" not in estimate:
        return None
    best = min(ran, key=lambda s: estimate[s].rank_key())  # report.best's order
    n = estimate["scratch"].correct.numel()
    return compare_paired(best, "scratch", estimate[best].correct, estimate["scratch"].correct,
                          f"cross-validation over {n} target labels")
