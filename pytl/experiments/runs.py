"""The training runs of one comparison: each stage-1 model is trained once and shared by the strategies
(and the cross-validation folds) that start from it; with a λ grid ("auto" or a sequence), one stage-1
model per λ, the choice among them (lambda_search.py) made per fold without the fold's labels.

What a label-using strategy ships (the ``ship`` option): "refit", its training run on every label after the
cross-validation; "folds", the mean of its cross-validation fold models (``ship_folds``), so that the held-out
predictions that estimate and weigh it are predictions of the models that ship.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pytl._checks import DataWarning
from pytl.experiments.comparison_data import ComparisonData
from pytl.experiments.ensemble import EnsembleModel
from pytl.experiments.estimate import Estimate
from pytl.experiments.fold_models import FoldModels, Trained
from pytl.experiments.folds import training_rows
from pytl.experiments.lambda_search import (
    LambdaSearch,
    by_criterion,
    by_labels,
    comparison_grids,
    fold_choices,
    pick,
    semi_supervised_defaults,
)
from pytl.experiments.report import LABEL_FREE
from pytl.experiments.strategies import ALIGNED, SEMI_SUPERVISED, STRATEGIES
from pytl.freezing import FreezingPolicy
from pytl.inference import EVAL_BATCH, eval_mode
from pytl.train import TrainingWarning, TwoStageTrainer

__all__ = ["FINETUNED", "Runs", "log_proba"]

#: the strategies trained on target labels, and the stage-1 model each starts from ("": the initial weights)
FINETUNED = {"scratch": "", "naive": "source_only", **{a: f"{a}_only" for a in ALIGNED}}


class Runs:
    """The training runs of one comparison: models, histories and seconds by strategy name (the models
    trained on all the labels), and ``searches``: alignment → LambdaSearch where its λ was a grid."""

    def __init__(self, base: nn.Module, data: ComparisonData, common: dict[str, Any], cfg: dict[str, Any],
                 source_val: Any = None) -> None:
        self.base, self.data, self.common, self.cfg, self.source_val = base, data, common, cfg, source_val
        self.models: dict[str, nn.Module] = {}
        self.histories: dict[str, dict[str, list]] = {}
        self.seconds: dict[str, float] = {}
        self.searches: dict[str, LambdaSearch] = {}
        self.label_log_proba: dict[str, dict[float, Tensor]] = {}  # alignment → λ → log p of the target labels
        self.lambda_histories: dict[str, dict[float, dict[str, list]]] = {}  # alignment → λ → stage 1's history
        self.label_shift: dict[str, Any] = {}  # stage-1 run → its label-shift estimate (class_weights="estimated")
        #: each alignment's λ values: one number, or the grid stage 1 searches
        self.grids = comparison_grids(cfg, data.labeled is not None)
        #: alignment → the λ of "ssl_<alignment>" where it is not its search's choice ("auto": the default)
        self.ssl_defaults = semi_supervised_defaults(cfg)
        self.folds = FoldModels(keep=cfg.get("ship") == "folds")  # each strategy's fold runs, for ship="folds"

    def stage1(self, wanted: Sequence[str]) -> None:
        """The stage-1 models the ``wanted`` strategies need (each run has its own copy of the initial
        weights and the same seed: the order of the runs changes nothing). With ``ssl_epochs`` the
        semi-supervised strategies start from "source_only", trained here for them."""
        wanted = set(wanted)
        warm = self.cfg["ssl_epochs"] is not None and bool(wanted & set(SEMI_SUPERVISED))
        if wanted & {"source_only", "naive"} or warm:
            self.align("source_only", 0.0)
        for a, option in ALIGNED.items():
            grid = self.grids[a]
            if wanted & {f"{a}_only", a} or (a == "mmd" and "ensemble" in wanted):
                if len(grid) == 1:
                    self.align(f"{a}_only", grid[0], alignment=a)
                else:
                    self.search(a, option, grid)
            elif f"ssl_{a}" in wanted and len(grid) > 1 and a not in self.ssl_defaults:
                self.search(a, option, grid)  # "ssl_<a>" alone under a grid of one's own takes the search's λ

    def search(self, alignment: str, option: str, grid: tuple[float, ...]) -> None:
        """Stage 1 once per λ of ``grid``; "<alignment>_only" becomes the best-scoring λ's model (by the target
        labels when there are some, else by the label-free criterion). Its seconds are those of the whole search."""
        name, t0 = f"{alignment}_only", time.perf_counter()
        models, histories, held = {}, {}, {}
        for lam in grid:
            with _training_warnings_held(held.setdefault(lam, [])):
                self.align(name, lam, alignment=alignment, label=f"{name} λ={lam:g}: ")
            models[lam], histories[lam] = self.models[name], self.histories[name]
        self.lambda_histories[alignment] = histories
        noise = None
        if self.data.labeled is not None:
            xl, yl = self.data.labeled
            self.label_log_proba[alignment] = {lam: log_proba(m, xl) for lam, m in models.items()}
            scores, noise = by_labels(self.label_log_proba[alignment], yl)
            by = "the target labels (calibrated cross-entropy, negated)"
        else:
            criterion = self.cfg["criterion"]
            scores = by_criterion(models, criterion, self.source_val, self.data.target_unlabeled)
            by = f"the label-free criterion {criterion!r}"
        chosen = pick(scores)
        _show(held[chosen])  # a collapse of the model chosen (the grid's others are what the search avoided)
        self.models[name], self.histories[name] = models[chosen], histories[chosen]
        self.seconds[name] = time.perf_counter() - t0
        self.searches[alignment] = LambdaSearch(alignment, option, grid, scores, chosen, by, noise,
                                                seconds=self.seconds[name], models=models)

    def stage2(self, wanted: Sequence[str], labeled: tuple[Tensor, Tensor], label: str = "",
               lambdas: dict[str, float] | None = None) -> dict[str, nn.Module]:
        """The strategies that train on ``labeled`` (and the ensemble); kept as the report's models unless
        ``label`` names a cross-validation fold. ``lambdas``: strategy → its λ (a fold's own choices). On every
        label, a fine-tuned strategy whose λ was chosen by cross-validated fine-tuning starts from that λ's
        stage-1 model."""
        wanted = set(wanted)
        starts = {} if label else {a: s.models[s.finetune_chosen] for a, s in self.searches.items()
                                   if s.finetune_chosen is not None}
        needs = {s for s in FINETUNED if s in wanted} | ({"mmd", "scratch"} if "ensemble" in wanted else set())
        runs: dict[str, Trained] = {}
        for s in FINETUNED:
            if s in needs:
                runs[s] = self.finetune(s, labeled, keep=not label, label=label, starts=starts)
        for s, a in SEMI_SUPERVISED.items():  # stage 1 on these labels too: trained here, per fold under CV
            if s in wanted:
                runs[s] = self.semi_supervised(s, a, labeled, keep=not label, label=label, lambdas=lambdas or {})
        for s, run in runs.items() if label else ():  # a fold's runs, kept for ship="folds"
            self.folds.add(s, run)
        out = {s: run[0] for s, run in runs.items()}
        if "ensemble" in wanted:
            out["ensemble"] = EnsembleModel([out["mmd"], out["scratch"]])
            if not label:
                self.models["ensemble"] = out["ensemble"]
                self.seconds["ensemble"] = self.seconds["mmd"] + self.seconds["scratch"]
        return out

    def cross_validate(self, wanted: Sequence[str], folds: list[Tensor]) -> dict[str, Estimate]:
        """Each label-using strategy trained once per fold without that fold's labels and scored on it;
        each label-free strategy's one model scored on every label. Where λ was searched, each fold chooses
        λ from the other folds' labels, so the held-out labels never choose what they score: "<alignment>_only"
        and "ssl_<alignment>" by the stage-1 models' predictions of them; the fine-tuned "<alignment>" by
        cross-validated fine-tuning (every λ's stage-1 model fine-tuned per fold): the λ whose stage-1 model
        predicts the labels best is not the λ whose fine-tuned model does (benchmarks/OUTCOMES.md)."""
        xl, yl = self.data.labeled  # type: ignore[misc]
        logp = {s: torch.zeros(yl.shape[0], self.data.num_classes, dtype=torch.float64)
                for s in STRATEGIES if s in wanted}
        for s in LABEL_FREE:
            if s in logp:
                logp[s] = log_proba(self.models[s], xl)
        for a, by_lambda in self.label_log_proba.items():  # stage-1 λ per fold, from the other folds' labels
            self.searches[a].fold_choices, chosen = fold_choices(by_lambda, yl, folds)
            if f"{a}_only" in logp:
                logp[f"{a}_only"] = chosen
        tuned = self.tuned(wanted)
        later = {"ensemble"} if "mmd" in tuned else set()  # the ensemble of the fold's own mmd, after the λ choice
        rest = [s for s in wanted if s not in tuned and s not in later] + (["scratch"] if later & set(wanted) else [])
        scratch = torch.zeros_like(next(iter(logp.values())))
        for k, held in enumerate(folds):
            train = training_rows(yl.shape[0], held)
            lambdas = {f"ssl_{a}": self.searches[a].fold_choices[k] for a in self.label_log_proba
                       if a not in self.ssl_defaults}
            label, labeled = f"fold {k + 1}/{len(folds)} ", (xl[train], yl[train])
            fold_models = self.stage2(rest, labeled, label=label, lambdas=lambdas)
            for s, m in fold_models.items():
                if s in logp:
                    logp[s][held] = log_proba(m, xl[held])
            if "scratch" in fold_models:
                scratch[held] = log_proba(fold_models["scratch"], xl[held])
        for a, chosen in self.finetune_lambdas(tuned, folds).items():
            if a in logp:
                logp[a] = chosen
            if a == "mmd" and "ensemble" in logp:  # as EnsembleModel: log of the mean probability
                mean = (chosen.exp() + scratch.exp()) / 2
                logp["ensemble"] = torch.log_softmax(mean.clamp_min(torch.finfo(mean.dtype).tiny).log(), 1)
        if "ensemble" in wanted:  # after the folds' mmd λ choices, where it was searched
            self.folds.add_ensembles()
        return {s: Estimate.from_predictions(lp, yl, folds) for s, lp in logp.items()}

    def ship_folds(self, wanted: Sequence[str]) -> None:
        """ship="folds", after ``cross_validate``: each label-using strategy ships its fold models' mean
        (fold_models.FoldModels.ship)."""
        self.folds.ship(wanted, self.models, self.histories, self.seconds, FINETUNED, self.searches)

    def tuned(self, wanted: Sequence[str]) -> list[str]:
        """The alignments whose λ was searched with target labels and whose fine-tuned strategy is wanted (the
        ensemble's "mmd" included): each gets its own λ by cross-validated fine-tuning (finetune_lambdas)."""
        return [a for a in self.label_log_proba if a in wanted or (a == "mmd" and "ensemble" in wanted)]

    def finetune_lambdas(self, tuned: Sequence[str], folds: list[Tensor]) -> dict[str, Tensor]:
        """Every λ's stage-1 model of each ``tuned`` alignment fine-tuned on each fold's other labels and scored on
        the fold: the fine-tuned strategy's own λ, shipped from every label (``finetune_chosen``) and chosen per fold
        without the fold's labels (nested). Returns alignment → the held-out log-probabilities of those nested
        choices (the fine-tuned strategy's estimate)."""
        xl, yl = self.data.labeled  # type: ignore[misc]
        per_lambda = {a: {lam: torch.zeros(yl.shape[0], self.data.num_classes, dtype=torch.float64)
                          for lam in self.searches[a].models} for a in tuned}
        trained: dict[str, dict[float, list[Trained]]] = {a: {} for a in tuned}  # ship="folds": every λ's fold runs
        for k, held in enumerate(folds):
            train = training_rows(yl.shape[0], held)
            label, labeled = f"fold {k + 1}/{len(folds)} ", (xl[train], yl[train])
            for a in tuned:
                for lam, m in self.searches[a].models.items():
                    ft = self.finetune(a, labeled, keep=False, label=f"{label}λ={lam:g} ", starts={a: m})
                    per_lambda[a][lam][held] = log_proba(ft[0], xl[held])
                    if self.folds.keep:
                        trained[a].setdefault(lam, []).append(ft)
        out = {}
        for a in tuned:
            search = self.searches[a]
            search.finetune_scores, search.finetune_noise = by_labels(per_lambda[a], yl)
            search.finetune_chosen = pick(search.finetune_scores)
            search.finetune_fold_choices, out[a] = fold_choices(per_lambda[a], yl, folds)
            self.folds.add_chosen(a, search, trained[a], self.lambda_histories[a])
        return out

    def align(self, name: str, lam: float, alignment: str = "mmd", label: str | None = None) -> None:
        """Stage 1 from the initial weights: source labels, plus λ·alignment (pytl.train.alignments) toward the
        unlabelled target when λ > 0."""
        t0 = time.perf_counter()
        trainer = TwoStageTrainer(copy.deepcopy(self.base), lambda_align=lam, alignment=alignment,
                                  align_policy=copy.deepcopy(self.cfg["align_policy"]), **self.common)
        trainer.state.label = label or f"{name}: "
        d = self.data
        estimating = isinstance(self.cfg["class_weights"], str)  # the label-shift estimate predicts on the target
        with _data_warnings_shown_once():
            trainer.align(d.source, d.target_unlabeled if lam > 0 or estimating else None)
        self.models[name] = trainer.model
        self.histories[name] = {"align": trainer.history["align"], "finetune": []}
        if trainer.state.label_shift is not None:
            self.label_shift[name] = trainer.state.label_shift
        self.seconds[name] = time.perf_counter() - t0

    def semi_supervised(self, name: str, alignment: str, labeled: tuple[Tensor, Tensor], keep: bool,
                        label: str, lambdas: dict[str, float]) -> tuple[nn.Module, dict[str, list], float]:
        """Both stages of "ssl_<alignment>" on ``labeled``: stage 1 learns from them beside the source and the
        unlabelled target (TrainSettings.semi_supervised), then fine-tunes on them. λ (``ssl_lambda``): the
        option's value; with "auto" the alignment's default; with a grid of one's own the λ its unsupervised
        search chose (a fold's own choice, in ``lambdas``): stage1 runs that search even when "<alignment>_only"
        is not wanted.

        With ``ssl_epochs`` = k, stage 1 starts from "source_only", which never saw a target label, and trains k
        epochs instead of ``align_epochs`` from the initial weights, in the shipped model and in every fold
        alike: the per-fold stage 1 is what makes the semi-supervised strategies' cross-validation expensive,
        and the estimate must be of what ships (cheap folds alone, before a full shipped run, misranked 3 of 13
        real runs: benchmarks/OUTCOMES.md). Returns the model, its history and its seconds."""
        t0 = time.perf_counter()
        lam = lambdas.get(name, self.ssl_lambda(alignment))
        init, epochs = self.base, self.cfg["align_epochs"]
        if self.cfg["ssl_epochs"] is not None:
            init, epochs = self.models["source_only"], self.cfg["ssl_epochs"]
        trainer = TwoStageTrainer(copy.deepcopy(init), lambda_align=lam, alignment=alignment, semi_supervised=True,
                                  **{**self.common, "align_epochs": epochs,
                                     "align_policy": copy.deepcopy(self.cfg["align_policy"]),
                                     "finetune_policy": copy.deepcopy(self.cfg["finetune_policy"])})
        trainer.state.label = f"{label}{name}: "
        with _data_warnings_shown_once(), _training_warnings_held([] if not keep else None):
            trainer.fit(self.data.source, self.data.target_unlabeled, labeled)
        seconds = time.perf_counter() - t0
        if keep:
            self.models[name], self.histories[name], self.seconds[name] = trainer.model, trainer.history, seconds
        return trainer.model, trainer.history, seconds

    def ssl_lambda(self, alignment: str) -> float:
        """The λ of the shipped "ssl_<alignment>": its number, the alignment's default under "auto", or the
        search's choice under a grid of one's own."""
        if alignment in self.ssl_defaults:
            return self.ssl_defaults[alignment]
        grid = self.grids[alignment]
        return grid[0] if len(grid) == 1 else self.searches[alignment].chosen

    def finetune(self, name: str, labeled: tuple[Tensor, Tensor], keep: bool, label: str,
                 starts: dict[str, nn.Module]) -> tuple[nn.Module, dict[str, list], float]:
        """Stage 2 of strategy ``name`` on ``labeled``, from its stage-1 model (scratch: the initial weights): the
        model, its history (stage 1's and this fine-tuning) and this run's seconds."""
        t0 = time.perf_counter()
        start = FINETUNED[name]
        scratch = name == "scratch"
        policy: FreezingPolicy | None = None if scratch else self.cfg["finetune_policy"]
        init = self.base if scratch else starts.get(name, self.models[start])
        trainer = TwoStageTrainer(copy.deepcopy(init),
                                  **{**self.common, "lambda_align": 0.0, "finetune_policy": copy.deepcopy(policy),
                                     "finetune_epochs": self.cfg["scratch_epochs" if scratch else "finetune_epochs"]})
        trainer.state.label = f"{label}{name}: "
        with _data_warnings_shown_once():
            trainer.finetune(labeled)
        search = self.searches.get(name)
        first = (self.lambda_histories[name][search.finetune_chosen]
                 if search is not None and search.finetune_chosen is not None else self.histories.get(start, {}))
        history = {"align": first.get("align", []), "finetune": trainer.history["finetune"]}
        seconds = time.perf_counter() - t0
        if keep:
            self.models[name], self.histories[name] = trainer.model, history
            self.seconds[name] = seconds + self.seconds.get(start, 0.0)
        return trainer.model, history, seconds


@contextlib.contextmanager
def _data_warnings_shown_once():
    """The runs train on data that compare_strategies checked once (its probe trainer warned then): the same
    warnings from each run, and from each fold's part of the labels, would repeat it 10-20 times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        yield


@contextlib.contextmanager
def _training_warnings_held(held: list | None):
    """A run's TrainingWarnings (pytl.train.collapse) kept in ``held`` instead of shown (``held`` None: shown):
    a cross-validation fold's model, or a λ the search may not choose, is not what the user gets, and the
    same warning from every fold and grid point would bury the one that matters. Other warnings pass."""
    if held is None:
        yield
        return
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", TrainingWarning)
        yield
    held.extend(w for w in seen if issubclass(w.category, TrainingWarning))
    _show([w for w in seen if not issubclass(w.category, TrainingWarning)])


def _show(seen: list) -> None:
    """Warnings recorded by catch_warnings, issued again where they were raised."""
    for w in seen:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def log_proba(model: nn.Module, x: Tensor) -> Tensor:
    """Log class probabilities of ``x`` (CPU, float64), in eval mode."""
    p = next(model.parameters())
    with torch.no_grad(), eval_mode(model):
        return torch.cat([torch.log_softmax(model(b.to(p.device, p.dtype)).double(), 1).cpu()
                          for b in x.split(EVAL_BATCH)])


