"""Choosing the MMD weight λ without target labels: train stage 1 once per λ, rank the models with a
label-free criterion (pytl.validation) on a held-out part of the source and the unlabelled target.

A label-free score ranks models on one problem; it does not measure their accuracy. ``select_lambda``
says so in its table and its explanation, and keeps every trained model so a caller with a few target
labels can check the choice.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pytl import _inputs as inp
from pytl._checks import check_float, check_int
from pytl.experiments.strategies import POLICIES, TRAINER_OPTIONS, resolve_config
from pytl.experiments.comparison_data import initial_model
from pytl.experiments.folds import split_source
from pytl.experiments.lambda_search import by_criterion, pick
from pytl.train import TwoStageTrainer, resolve_device
from pytl.validation.criteria import CRITERIA, check_criterion

__all__ = ["DEFAULT_LAMBDAS", "LambdaSelection", "select_lambda"]

DEFAULT_LAMBDAS = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)


@dataclass
class LambdaSelection:
    """What ``select_lambda`` found: the score of each λ's stage-1 model and the chosen λ.

    best: the λ with the highest score (the smaller λ on a tie). scores / models: λ → score / trained
    model, in the order of ``lambdas``. train_indices / validation_indices: the source rows trained on
    and held out (sorted). Scores are label-free: higher ranks a model higher, but the numbers are not
    accuracies and are not comparable across problems or criteria."""

    best: float
    scores: dict[float, float]
    models: dict[float, nn.Module]
    criterion: str
    lambdas: tuple[float, ...]
    train_indices: Tensor
    validation_indices: Tensor
    histories: dict[float, list[dict[str, Any]]] = field(default_factory=dict)
    seed: int = 0

    def ranking(self) -> list[float]:
        """The λ values from the best score to the worst (ties: smaller λ first; NaN last)."""
        def key(lam: float) -> tuple[bool, float, float]:
            s = self.scores[lam]
            return (math.isnan(s), -s if not math.isnan(s) else 0.0, lam)
        return sorted(self.lambdas, key=key)

    def table(self) -> str:
        """One row per λ: its score and rank, the chosen one marked."""
        rank = {lam: i + 1 for i, lam in enumerate(self.ranking())}
        lines = [f"label-free model selection of λ, criterion {self.criterion!r} (higher score ranks higher; "
                 "a score is not an accuracy)",
                 f"{'λ':>8}  {'score':>12}  {'rank':>4}"]
        for lam in self.lambdas:
            mark = "  <- chosen" if lam == self.best else ""
            lines.append(f"{lam:>8g}  {self.scores[lam]:>12.6g}  {rank[lam]:>4}{mark}")
        return "\n".join(lines)

    def explain(self) -> str:
        """The choice in plain words, with what a label-free score can and cannot say."""
        name = self.criterion
        parts = [f"Criterion {name!r} ranks λ = {self.best:g} first among {len(self.lambdas)} stage-1 models "
                 f"(λ ∈ {{{', '.join(f'{lam:g}' for lam in self.lambdas)}}}), scored on "
                 f"{int(self.validation_indices.numel())} held-out source samples and the unlabelled target."]
        if self.best == 0.0:
            parts.append("λ = 0 is source-only training: by this criterion, aligning the domains did not help.")
        elif len(self.lambdas) > 1 and self.best == max(self.lambdas):
            parts.append("The chosen λ is the largest of the grid: a larger λ might score higher still.")
        parts.append("Label-free scores rank models; they do not measure accuracy. The score of the chosen model "
                     "is not its target accuracy, and a criterion can rank models wrongly (docs/validation.md says "
                     "when each one fails). With a few labelled target samples, check the chosen model (and "
                     "source-only, λ = 0) on them before trusting the choice.")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (f"LambdaSelection(best={self.best:g}, criterion={self.criterion!r}, "
                f"scores={{{', '.join(f'{k:g}: {v:.4g}' for k, v in self.scores.items())}}})")


def select_lambda(
    source: Any,
    target_unlabeled: Any,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    criterion: str = "im",
    *,
    source_validation: float = 0.2,
    seed: int = 0,
    model: nn.Module | None = None,
    criterion_options: dict[str, Any] | None = None,
    **config: Any,
) -> LambdaSelection:
    """Train stage 1 (CE + λ·MMD², ``TwoStageTrainer.align``) once per λ and pick λ by a label-free criterion.

    A stratified, seeded ``source_validation`` fraction of the source (per class, rounded; at least one
    sample of every class on both sides) is held out as ``source_val`` and never trained on (nor used
    for the default model's input statistics). Every λ starts from the same initial weights (a deep copy
    of ``model``, or compare_strategies' default model seeded with ``seed``) and trains with the same
    seed and settings; λ = 0 trains on the source alone. Each model is scored with
    ``pytl.validation.score(criterion, model, source_val, target_unlabeled, **criterion_options)``.

    source: (X, y) arrays or tensors; target_unlabeled: X. criterion: a name of
    ``pytl.validation.CRITERIA``; the default ``"im"`` (information maximisation) ranked λ best of the five
    on the tutorial problem and on the real pairs of benchmarks/label_free_ranking.py (docs/validation.md),
    where the density-ratio criteria (``"iwv"``, ``"dev"``) mostly picked source-only. config:
    compare_strategies' options (``DEFAULT_CONFIG``); only those of stage 1 matter (model, trainer and
    ``align_epochs``), and λ comes from ``lambdas``, not ``lambda_mmd``.
    Every argument is checked (and the criterion run once on the initial model) before training.
    """
    lams = _check_lambdas(lambdas)
    criterion = check_criterion(criterion)
    if criterion_options is not None and not isinstance(criterion_options, dict):
        raise TypeError(f"criterion_options must be a dict or None, got {type(criterion_options).__name__}")
    options = dict(criterion_options or {})
    if "lambda_mmd" in config:
        raise TypeError("select_lambda takes the λ values as lambdas=[...], not lambda_mmd")
    cfg = resolve_config(config, caller="select_lambda")
    seed = check_int(seed, "seed", 0)
    fraction = check_float(source_validation, "source_validation", 0.0, 1.0, strict_min=True, strict_max=True)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")

    xs, ys, xu, num_classes = _check_data(source, target_unlabeled, cfg["num_classes"])
    train_idx, val_idx = split_source(ys, fraction, seed)
    x_train, y_train = xs[train_idx], ys[train_idx]
    source_val = (xs[val_idx], ys[val_idx])

    device = resolve_device(cfg["device"], model)
    common = {k: cfg[k] for k in TRAINER_OPTIONS if k not in POLICIES}
    common.update(num_classes=num_classes, device=device, seed=seed)
    probe = TwoStageTrainer(None, lambda_align=max(lams), **common)  # the trainer's checks of the settings
    # compare_strategies' initial model, its statistics from the training rows only (source_val stays unseen)
    base = initial_model(model, (x_train, y_train), xu, num_classes, cfg, seed).to(device)
    probe.model = copy.deepcopy(base)
    probe.check_inputs((x_train, y_train), xu if max(lams) > 0 else None)
    CRITERIA[criterion](probe.model, source_val, xu, **options)  # the criterion's own checks, before training

    models: dict[float, nn.Module] = {}
    histories: dict[float, list[dict[str, Any]]] = {}
    for lam in lams:
        trainer = TwoStageTrainer(copy.deepcopy(base), lambda_align=lam,
                                  align_policy=copy.deepcopy(cfg["align_policy"]), **common)
        trainer.state.label = f"λ={lam:g}: "
        histories[lam] = trainer.align((x_train, y_train), xu if lam > 0 else None)
        models[lam] = trainer.model
    scores = by_criterion(models, criterion, source_val, xu, options)  # compare_strategies' λ search does the same
    return LambdaSelection(best=pick(scores), scores=scores, models=models, criterion=criterion, lambdas=lams,
                           train_indices=train_idx, validation_indices=val_idx, histories=histories, seed=seed)


def _check_lambdas(lambdas: Any) -> tuple[float, ...]:
    if isinstance(lambdas, (str, bytes)) or not isinstance(lambdas, Sequence):
        raise TypeError(f"lambdas must be a sequence of numbers >= 0, got {lambdas!r} ({type(lambdas).__name__})")
    if len(lambdas) == 0:
        raise ValueError("lambdas is empty: give at least one λ (0 is source-only training)")
    lams = tuple(check_float(v, f"lambdas[{i}]", 0.0) for i, v in enumerate(lambdas))
    if len(set(lams)) != len(lams):
        dup = sorted({v for v in lams if lams.count(v) > 1})
        raise ValueError(f"lambdas must be unique, got {list(lambdas)!r} (repeated: {dup})")
    return lams


def _check_data(source: Any, target_unlabeled: Any, num_classes: int | None) -> tuple[Tensor, Tensor, Tensor, int]:
    """Arrays or tensors only (the held-out split indexes rows), one feature shape, labels in range."""
    if isinstance(source, torch.utils.data.DataLoader) or isinstance(target_unlabeled, torch.utils.data.DataLoader):
        raise TypeError("select_lambda takes arrays or tensors (it holds out source rows); not a DataLoader")
    xs, ys = inp.as_labeled(source, "source")
    xu = inp.as_unlabeled(target_unlabeled, "target_unlabeled")
    if xs.shape[1:] != xu.shape[1:]:
        raise ValueError(f"feature size mismatch: target_unlabeled has samples of shape "
                         f"{inp.format_shape(tuple(xu.shape[1:]))} but source has "
                         f"{inp.format_shape(tuple(xs.shape[1:]))}; both domains must share a feature space")
    if num_classes is None:
        num_classes = int(ys.max()) + 1
        if num_classes < 2:
            raise ValueError("every source label is 0: classification needs at least 2 classes (pass num_classes=)")
    inp.check_label_range(ys, num_classes, "source[1] (y)")
    return xs, ys, xu, num_classes

