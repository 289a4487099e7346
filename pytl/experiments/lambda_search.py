"""λ chosen from the data: each alignment's grid, the scores of its stage-1 models, and the choice.

``compare_strategies(lambda_mmd="auto")`` (any alignment's λ option) trains stage 1 once per λ of the
alignment's grid (geometric, 0.1× to 10× its default in steps of √10, so one grid fits every alignment
whatever the scale of its term) and keeps the model of the best-scoring λ:

- with target labels, the score is minus the calibrated cross-entropy of each λ's stage-1 model on the
  labels (the held-out cross-entropy at its best temperature, as ``report.best`` ranks): stage 1 never
  sees a target label, so every label is held out for it. Under cross-validation each fold chooses its
  own λ from the other folds' labels, so a fold's labels never choose the λ its models are scored with;
- without target labels, the score is a label-free criterion (pytl.validation) on held-out source rows
  and the unlabelled target, as ``select_lambda`` uses.

``LambdaSearch`` (``report.lambdas[alignment]``) keeps the grid, each λ's score and its noise, the choice
and each fold's choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pytl._checks import check_float
from pytl.experiments.estimate import calibrated_cross_entropy
from pytl.experiments.folds import training_rows
from pytl.train import ALIGNMENTS
from pytl.validation.criteria import CRITERIA

__all__ = ["AUTO", "LAMBDA_FACTORS", "LambdaSearch", "by_labels", "by_criterion", "comparison_grids", "fixed_lambdas",
           "fold_choices", "is_auto", "lambda_grid", "pick", "semi_supervised_defaults"]

AUTO = "auto"
#: the "auto" grid of an alignment: its default λ times these (geometric, ratio √10, 0.1× to 10×)
LAMBDA_FACTORS = tuple(10.0 ** (k / 2) for k in range(-2, 3))


def is_auto(spec: Any) -> bool:
    """Whether a λ option's value is "auto" (a grid or a number is not; an array is never compared to a str)."""
    return isinstance(spec, str) and spec == AUTO


def fixed_lambdas() -> dict[str, float]:
    """Every alignment's λ option at the alignment's declared default, the centre of its "auto" grid: one stage-1
    run per alignment instead of a search (``compare_strategies(**fixed_lambdas())``; the default before "auto",
    and what the benchmarks' "fixed" runs use)."""
    return {cls.lambda_option: cls.lambda_default for cls in ALIGNMENTS.values()}


def comparison_grids(cfg: Mapping[str, Any], labeled: bool) -> dict[str, tuple[float, ...]]:
    """Each alignment's λ values in a comparison (alignment → grid; its option checked): the option's grid
    (lambda_grid), except that "auto" without target labels is the alignment's default alone. No label-free
    criterion chose λ reliably better than the defaults on the measured pairs, and a grid chosen by the criterion
    that then ranks the strategies favours the searched strategy (benchmarks/OUTCOMES.md, seventh session: what
    ships fell 4.7 points on the tabular pair, up to 5.5 on pixels). A grid of your own is searched by it."""
    grids = {}
    for a, cls in ALIGNMENTS.items():
        spec = cfg[cls.lambda_option]
        grids[a] = (cls.lambda_default,) if is_auto(spec) and not labeled else lambda_grid(a, spec, cls.lambda_option)
    return grids


def semi_supervised_defaults(cfg: Mapping[str, Any]) -> dict[str, float]:
    """alignment → the λ of "ssl_<alignment>" where its option is "auto": the alignment's default. The search
    scores the unsupervised stage-1 models, not the semi-supervised ones; taking its choice (per fold, nested)
    left their estimates noisier and what ships worse on pixels (benchmarks/OUTCOMES.md, seventh session).
    With a number that number is theirs, with a grid of your own the search's choice."""
    return {a: cls.lambda_default for a, cls in ALIGNMENTS.items() if is_auto(cfg[cls.lambda_option])}


def lambda_grid(alignment: str, spec: Any, option: str | None = None) -> tuple[float, ...]:
    """The λ values to train for ``alignment`` given its option's value: a number (that λ alone), "auto"
    (the alignment's default × LAMBDA_FACTORS, rounded to 3 significant digits), or a sequence of numbers
    >= 0 (a grid of your own, distinct)."""
    cls = ALIGNMENTS[alignment]
    name = option or cls.lambda_option
    if isinstance(spec, str):
        if spec != AUTO:
            raise ValueError(f"{name} must be a number >= 0, 'auto' or a sequence of numbers >= 0, got {spec!r}")
        return tuple(float(f"{cls.lambda_default * f:.3g}") for f in LAMBDA_FACTORS)
    if isinstance(spec, (Tensor, np.ndarray)) and spec.ndim == 1:
        spec = spec.tolist()  # Python numbers, checked as any sequence's
    if isinstance(spec, Sequence):
        values = tuple(check_float(v, f"{name}[{i}]", 0.0) for i, v in enumerate(spec))
        if not values:
            raise ValueError(f"{name} is an empty grid: give at least one λ, or 'auto'")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} must hold distinct values, got {list(values)}")
        return values
    try:
        return (check_float(spec, name, 0.0),)
    except TypeError:
        raise TypeError(f"{name} must be a number >= 0, 'auto' or a sequence of numbers >= 0, got {spec!r} "
                        f"({type(spec).__name__})") from None


@dataclass
class LambdaSearch:
    """How λ of one alignment was chosen. grid: the λ values trained; scores: λ → score (higher is better:
    minus the calibrated cross-entropy on the target labels, or a label-free criterion's score); noise:
    λ → the standard error of that score (labels only; None for a label-free criterion); chosen: the λ
    whose stage-1 model the strategies use; by: what scored them; fold_choices: under cross-validation, the
    λ each fold chose without its own labels. finetune_scores, finetune_noise, finetune_chosen,
    finetune_fold_choices: the same for the fine-tuned strategy "<alignment>" where cross-validation scored every
    λ's stage-1 model fine-tuned (None and () otherwise: it starts from ``chosen``'s)."""

    alignment: str
    option: str
    grid: tuple[float, ...]
    scores: dict[float, float]
    chosen: float
    by: str
    noise: dict[float, float] | None = None
    fold_choices: tuple[float, ...] = ()
    seconds: float = 0.0
    models: dict[float, nn.Module] = field(default_factory=dict, repr=False)
    finetune_scores: dict[float, float] | None = None
    finetune_noise: dict[float, float] | None = None
    finetune_chosen: float | None = None
    finetune_fold_choices: tuple[float, ...] = ()

    def table(self) -> str:
        """One row per λ: its score (± noise), the chosen one marked."""
        lines = [f"λ of {self.alignment} ({self.option}), scored by {self.by} (higher is better)"]
        for lam in self.grid:
            noise = "" if self.noise is None else f" ± {self.noise[lam]:.3g}"
            mark = "  <- chosen" if lam == self.chosen else ""
            lines.append(f"{lam:>10g}  {self.scores[lam]:>10.4g}{noise}{mark}")
        if self.fold_choices:
            lines.append(f"each cross-validation fold, without its labels, chose: "
                         f"{', '.join(f'{v:g}' for v in self.fold_choices)}")
        if self.finetune_scores is not None and self.finetune_noise is not None:
            lines.append(f"fine-tuned {self.alignment}: each λ's stage-1 model fine-tuned per fold, scored by the "
                         "held-out target labels (calibrated cross-entropy, negated)")
            for lam in self.grid:
                mark = "  <- chosen" if lam == self.finetune_chosen else ""
                lines.append(f"{lam:>10g}  {self.finetune_scores[lam]:>10.4g} ± {self.finetune_noise[lam]:.3g}{mark}")
            chosen = ", ".join(f"{v:g}" for v in self.finetune_fold_choices)
            lines.append(f"each fold, without its labels, chose: {chosen}")
        if self.chosen in (self.grid[0], self.grid[-1]) and len(self.grid) > 1:
            lines.append("the chosen λ is at the edge of the grid: the best may lie beyond it")
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for the comparison table."""
        edge = " (edge of the grid)" if self.chosen in (self.grid[0], self.grid[-1]) and len(self.grid) > 1 else ""
        folds = f"; folds chose {', '.join(f'{v:g}' for v in self.fold_choices)}" if self.fold_choices else ""
        tuned = ("" if self.finetune_chosen is None else
                 f"; fine-tuned {self.alignment}: {self.finetune_chosen:g}, by cross-validated fine-tuning")
        return (f"{self.option}: {self.chosen:g} chosen from {', '.join(f'{v:g}' for v in self.grid)} by "
                f"{self.by}{edge}{folds}{tuned}")


def pick(scores: Mapping[float, float]) -> float:
    """The λ with the highest score; ties (and NaN scores, ranked last) go to the smaller λ."""
    return min(scores, key=lambda lam: (math.isnan(scores[lam]), -scores[lam] if not math.isnan(scores[lam]) else 0,
                                        lam))


def by_labels(log_proba: Mapping[float, Tensor], y: Tensor,
              rows: Tensor | None = None) -> tuple[dict[float, float], dict[float, float]]:
    """Scores (minus the calibrated cross-entropy) and their standard errors of each λ's stage-1 model, from
    its log class probabilities of the target labels; ``rows``: only those labels (a fold's training part)."""
    scores, noise = {}, {}
    for lam, lp in log_proba.items():
        lp_r, y_r = (lp, y) if rows is None else (lp[rows], y[rows])
        loss, temperature = calibrated_cross_entropy(lp_r, y_r)
        per_row = -torch.log_softmax(lp_r.double() / temperature, 1).gather(1, y_r[:, None])[:, 0]
        scores[lam] = -loss
        noise[lam] = float(per_row.std() / math.sqrt(per_row.numel())) if per_row.numel() > 1 else math.nan
    return scores, noise


def fold_choices(log_proba: Mapping[float, Tensor], y: Tensor, folds: list[Tensor]
                 ) -> tuple[tuple[float, ...], Tensor]:
    """Each fold's λ, chosen by ``by_labels`` on the other folds' rows of the held-out predictions ``log_proba``
    (λ → (N, C)), and the held-out predictions those choices make: the nested choice, so a fold's labels never
    choose the λ that scores them."""
    out, lams = torch.zeros_like(next(iter(log_proba.values()))), []
    for held in folds:
        train = training_rows(y.shape[0], held)
        lams.append(pick(by_labels(log_proba, y, rows=train)[0]))
        out[held] = log_proba[lams[-1]][held]
    return tuple(lams), out


def by_criterion(models: Mapping[float, nn.Module], criterion: str, source_val: Any, target: Any,
                 options: Mapping[str, Any] | None = None) -> dict[float, float]:
    """Each λ's stage-1 model scored by a label-free criterion of pytl.validation (higher is better)."""
    return {lam: float(CRITERIA[criterion](m, source_val, target, **dict(options or {}))) for lam, m in models.items()}
