"""Strategy comparison: does transfer help on this problem, and which kind?

``compare_strategies`` trains every strategy from the same initial weights with the same budgets
and reports target test accuracy. Always comparing against "scratch" is the only reliable way to
notice negative transfer (borrowed knowledge that makes the target model worse).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from pytl import _inputs as inp
from pytl._validation import check_int
from pytl.experiments.ensemble import EnsembleModel
from pytl.experiments.report import ComparisonReport
from pytl.experiments.strategies import NEEDS_TARGET_LABELS, STRATEGIES, resolve_config, select_strategies
from pytl.freezing import FreezingPolicy
from pytl.models import Standardize, default_model
from pytl.ops import mmd2
from pytl.train import TwoStageTrainer, eval_mode, resolve_device
from pytl.train.evaluate import EVAL_BATCH

__all__ = ["compare_strategies"]

#: the options that compare_strategies hands to every trainer unchanged
TRAINER_OPTIONS = ("lambda_schedule", "lr", "finetune_lr", "batch_size", "target_batch_size", "finetune_batch_size",
                   "weight_decay", "optimizer", "mmd_sigmas", "mmd_estimator", "mmd_scope", "progress", "num_threads")
EMBEDDING_MMD_SAMPLES = 1024  # rows per domain for the embedding MMD² of each strategy's model


def compare_strategies(
    source: Any,
    target_unlabeled: Any,
    target_test: Any,
    target_labeled: Any = None,
    *,
    seed: int = 0,
    strategies: Sequence[str] | None = None,
    model: nn.Module | None = None,
    **config: Any,
) -> ComparisonReport:
    """Train each strategy with identical initial weights and budgets; report target test accuracy.

    - "source_only": ``align_epochs`` on the source (λ = 0).
    - "mmd_only": ``align_epochs`` of CE + λ·MMD² (unsupervised adaptation, no target label).
    - "scratch": ``scratch_epochs`` (default ``finetune_epochs``: the same target-label budget as the
      fine-tuned strategies, which start from source-trained weights instead of random ones).
    - "naive": "source_only", then ``finetune_epochs`` on the target labels.
    - "mmd": "mmd_only", then the same fine-tuning.
    - "ensemble": mean class probabilities of "mmd" and "scratch".

    Strategies that need target labels are skipped (and listed in ``report.skipped``) when
    ``target_labeled`` is None. Inputs are (X, y) pairs of arrays or tensors (X: samples first, any
    feature shape); every input is checked before training starts. ``model``: the initial model for
    all strategies (deep-copied); by default an MLP sized from the data. ``config``: see
    ``DEFAULT_CONFIG``.
    """
    cfg = resolve_config(config)
    wanted = list(select_strategies(STRATEGIES if strategies is None else strategies))
    seed = check_int(seed, "seed", 0)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")

    # ---- check every input before anything trains
    data = _check_data(source, target_unlabeled, target_test, target_labeled, cfg["num_classes"])
    skipped: dict[str, str] = {}
    if data.labeled is None:
        skipped = {s: "no target labels" for s in wanted if s in NEEDS_TARGET_LABELS}
        wanted = [s for s in wanted if s not in NEEDS_TARGET_LABELS]
    device = resolve_device(cfg["device"], model)
    common = {k: cfg[k] for k in TRAINER_OPTIONS}
    common.update(num_classes=data.num_classes, device=device, seed=seed)
    # The trainer's checks of the settings, once, before anything trains (bad epochs, lr, ...).
    probe = TwoStageTrainer(None, lambda_mmd=cfg["lambda_mmd"], align_epochs=cfg["align_epochs"],
                            finetune_epochs=cfg["finetune_epochs"], finetune_policy=cfg["finetune_policy"], **common)
    scratch_epochs = cfg["finetune_epochs"] if cfg["scratch_epochs"] is None else cfg["scratch_epochs"]
    cfg["scratch_epochs"] = check_int(scratch_epochs, "scratch_epochs", 0)
    base = _initial_model(model, data, cfg, seed).to(device)
    # ...and its checks of the model against the data (classes, feature shape, embed/head for MMD).
    probe.model = copy.deepcopy(base)
    probe.check_inputs((data.xs, data.ys), data.xu, data.labeled, eval_data={"target_test": (data.xt, data.yt)})

    runs = _Runs(base, data, common)
    runs.train(wanted, cfg)
    models = {s: runs.models[s] for s in STRATEGIES if s in wanted}
    accuracy, mmd = _evaluate(models, data, device, next(base.parameters()).dtype)
    return ComparisonReport(accuracy=accuracy, embedding_mmd2=mmd, seconds={s: runs.seconds[s] for s in models},
                            skipped=skipped, models=models,
                            histories={s: runs.histories[s] for s in models if s in runs.histories},
                            config={**cfg, "num_classes": data.num_classes, "strategies": list(models)}, seed=seed)


class _Data(NamedTuple):
    """The comparison's inputs as checked tensors, and the number of classes."""

    xs: Tensor
    ys: Tensor
    xu: Tensor
    xt: Tensor
    yt: Tensor
    labeled: tuple[Tensor, Tensor] | None
    num_classes: int


def _check_data(source: Any, target_unlabeled: Any, target_test: Any, target_labeled: Any,
                num_classes: int | None) -> _Data:
    """Converts and checks every input: arrays or tensors only, one feature shape, labels in range,
    at least one target label per class."""
    for name, value in (("source", source), ("target_test", target_test), ("target_labeled", target_labeled)):
        if isinstance(value, torch.utils.data.DataLoader):
            raise TypeError(f"compare_strategies takes arrays or tensors; {name} is a DataLoader "
                            "(use TwoStageTrainer for DataLoaders)")
    xs, ys = inp.as_labeled(source, "source")
    xu = inp.as_unlabeled(target_unlabeled, "target_unlabeled")
    if not isinstance(xu, Tensor):
        raise TypeError("compare_strategies takes arrays or tensors; target_unlabeled is a DataLoader")
    xt, yt = inp.as_labeled(target_test, "target_test")
    labeled = None if target_labeled is None else inp.as_labeled(target_labeled, "target_labeled")
    shapes = {"source": xs.shape[1:], "target_unlabeled": xu.shape[1:], "target_test": xt.shape[1:]}
    if labeled is not None:
        shapes["target_labeled"] = labeled[0].shape[1:]
    for name, shape in shapes.items():
        if shape != xs.shape[1:]:
            raise ValueError(f"feature size mismatch: {name} has samples of shape {inp.format_shape(tuple(shape))} "
                             f"but source has {inp.format_shape(tuple(xs.shape[1:]))}; both domains must share a "
                             "feature space")
    label_sets = [("source", ys), ("target_test", yt)] + ([("target_labeled", labeled[1])] if labeled else [])
    if num_classes is None:
        num_classes = max(int(y.max()) for _, y in label_sets) + 1
        if num_classes < 2:
            raise ValueError("every label is 0: classification needs at least 2 classes (pass num_classes=)")
    for name, y in label_sets:
        inp.check_label_range(y, num_classes, f"{name}[1] (y)")
    if labeled is not None and labeled[0].shape[0] < num_classes:
        raise ValueError(f"target_labeled has {labeled[0].shape[0]} samples, fewer than the {num_classes} classes; "
                         "fine-tuning needs at least one label per class")
    return _Data(xs, ys, xu, xt, yt, labeled, num_classes)


def _initial_model(model: nn.Module | None, data: _Data, cfg: dict[str, Any], seed: int) -> nn.Module:
    """The weights every strategy starts from: a copy of ``model``, or the default MLP seeded with ``seed``."""
    if model is not None:
        return copy.deepcopy(model)
    stats = Standardize.fit(data.xs, data.xu) if cfg["standardize"] else None
    return default_model(inp.prod(tuple(data.xs.shape[1:])), data.num_classes, cfg["hidden_sizes"], cfg["activation"],
                         cfg["dropout"], cfg["batch_norm"], standardize=stats, seed=seed)


class _Runs:
    """The training runs of one comparison: each stage-1 model is trained once and shared by the
    strategies that start from it; models, histories and seconds by strategy name."""

    def __init__(self, base: nn.Module, data: _Data, common: dict[str, Any]) -> None:
        self.base, self.data, self.common = base, data, common
        self.models: dict[str, nn.Module] = {}
        self.histories: dict[str, dict[str, list]] = {}
        self.seconds: dict[str, float] = {}

    def train(self, wanted: Sequence[str], cfg: dict[str, Any]) -> None:
        """Every run the ``wanted`` strategies need, in a fixed order (the results depend on none of it:
        each run has its own copy of the initial weights and the same seed)."""
        wanted = set(wanted)
        if wanted & {"source_only", "naive"}:
            self.align("source_only", 0.0, cfg["align_epochs"])
        if wanted & {"mmd_only", "mmd", "ensemble"}:
            self.align("mmd_only", cfg["lambda_mmd"], cfg["align_epochs"])
        if "naive" in wanted:
            self.finetune("naive", "source_only", cfg["finetune_epochs"], cfg["finetune_policy"])
        if wanted & {"mmd", "ensemble"}:
            self.finetune("mmd", "mmd_only", cfg["finetune_epochs"], cfg["finetune_policy"])
        if wanted & {"scratch", "ensemble"}:
            self.finetune("scratch", "", cfg["scratch_epochs"], None)
        if "ensemble" in wanted:
            self.models["ensemble"] = EnsembleModel([self.models["mmd"], self.models["scratch"]])
            self.seconds["ensemble"] = self.seconds["mmd"] + self.seconds["scratch"]

    def align(self, name: str, lam: float, epochs: int) -> None:
        """Stage 1 from the initial weights: source labels, plus λ·MMD² toward the unlabelled target when λ > 0."""
        t0 = time.perf_counter()
        trainer = TwoStageTrainer(copy.deepcopy(self.base), lambda_mmd=lam, align_epochs=epochs, **self.common)
        trainer.label = f"{name}: "
        d = self.data
        trainer.align((d.xs, d.ys), d.xu if lam > 0 else None)
        self.models[name] = trainer.model
        self.histories[name] = {"align": trainer.history["align"], "finetune": []}
        self.seconds[name] = time.perf_counter() - t0

    def finetune(self, name: str, start: str, epochs: int, policy: FreezingPolicy | None) -> None:
        """Stage 2 on the target labels, from the model of strategy ``start`` ("": the initial weights)."""
        t0 = time.perf_counter()
        trainer = TwoStageTrainer(copy.deepcopy(self.models[start] if start else self.base), lambda_mmd=0.0,
                                  finetune_epochs=epochs, finetune_policy=copy.deepcopy(policy), **self.common)
        trainer.label = f"{name}: "
        trainer.finetune(self.data.labeled)
        self.models[name] = trainer.model
        self.histories[name] = {"align": self.histories.get(start, {}).get("align", []),
                                "finetune": trainer.history["finetune"]}
        self.seconds[name] = time.perf_counter() - t0 + self.seconds.get(start, 0.0)


def _evaluate(models: dict[str, nn.Module], data: _Data, device: torch.device,
              dtype: torch.dtype) -> tuple[dict[str, float], dict[str, float]]:
    """Target test accuracy of every model, and the MMD² between its source and target embeddings."""
    accuracy, mmd = {}, {}
    n_mmd = min(EMBEDDING_MMD_SAMPLES, data.xs.shape[0], data.xu.shape[0])
    for s, m in models.items():
        with torch.no_grad(), eval_mode(m):
            logits = torch.cat([m(b.to(device, dtype)).cpu() for b in data.xt.split(EVAL_BATCH)])
            accuracy[s] = float((logits.argmax(1) == data.yt).double().mean())
            if hasattr(m, "embed"):
                zs = m.embed(data.xs[:n_mmd].to(device, dtype)).flatten(1).double()
                zu = m.embed(data.xu[:n_mmd].to(device, dtype)).flatten(1).double()
                mmd[s] = float(mmd2(zs, zu))
    return accuracy, mmd
