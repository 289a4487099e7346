"""What ``compare_strategies`` returns: one seed's ``ComparisonReport``, and ``SeedSummary`` over seeds."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pytl import _inputs as inp
from pytl.experiments.comparison_table import TableParts, render_html, render_text, table_parts
from pytl.experiments.estimate import ALPHA, Estimate, PairedComparison, compare_paired
from pytl.experiments.weighted_ensemble import WEIGHTED_ENSEMBLE, WeightedEnsemble
from pytl.experiments.strategies import ALIGNED, NEEDS_TARGET_LABELS, STRATEGIES, best_transfer, negative_transfer
from pytl.inference import EVAL_BATCH, eval_mode
from pytl.train import validation_loss_climbs

__all__ = ["ComparisonReport", "SeedSummary", "summarize"]

LABEL_FREE = tuple(s for s in STRATEGIES if s not in NEEDS_TARGET_LABELS)  # trained without a target label


@dataclass
class ComparisonReport:
    """Result of ``compare_strategies`` for one seed. Every number says where it comes from:

    accuracy: strategy → accuracy on the target *test* set (empty when none was given).
    estimate: strategy → ``Estimate`` (``.mean``, ``.std``, per-fold ``.folds``) cross-validated over the
    target labels (empty without labels or with ``folds=None``).
    paired: the best transfer strategy against scratch, sample by sample (test set, else the
    cross-validated predictions): its exact sign test decides ``verdict``.
    label_free: without target labels, strategy → {criterion → score} for every criterion of
    pytl.validation (higher is better), scored on held-out source rows and the unlabelled target;
    ``criterion`` is the one that picks ``best``. Such scores rank models; they do not measure accuracy.
    embedding_mmd2: strategy → MMD² between source and target embeddings of its final model (the
    tutorial's rule of thumb: < 0.1 looks transferable, > 0.5 does not).
    models: strategy → its model trained on all the target labels (ship="folds": the mean of its fold models).
    lambdas: alignment → ``LambdaSearch`` where its λ option was "auto" or a grid: every λ's score and
    noise, the chosen λ (the one ``config`` and the table show) and each cross-validation fold's choice.
    """

    accuracy: dict[str, float]
    embedding_mmd2: dict[str, float]
    seconds: dict[str, float]
    skipped: dict[str, str]
    models: dict[str, nn.Module] = field(repr=False)
    histories: dict[str, dict[str, list]] = field(repr=False)
    config: dict[str, Any] = field(repr=False)
    seed: int = 0
    estimate: dict[str, Estimate] = field(default_factory=dict, repr=False)
    paired: PairedComparison | None = field(default=None, repr=False)
    cv_seconds: float = 0.0
    label_free: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    criterion: str | None = None
    lambdas: dict[str, Any] = field(default_factory=dict, repr=False)
    #: class_weights="estimated": strategy → the label-shift estimate its stage 1 took (pytl.diagnostics)
    label_shift: dict[str, Any] = field(default_factory=dict, repr=False)
    #: strategies=[..., "weighted_ensemble"]: its members, weights and the two nested estimates best weighs
    weighted_ensemble: WeightedEnsemble | None = field(default=None, repr=False)

    @property
    def negative_transfer(self) -> bool | None:
        """With a test set: True exactly when the best of "naive" and "mmd" is below "scratch" on it.
        Without one, from the cross-validated paired comparison: True for a significant loss, False for a
        significant gain, None when it is inconclusive. None also when the strategies needed did not run."""
        rule = negative_transfer(self.accuracy)
        if rule is not None or self.accuracy or self.paired is None:
            return rule
        return {"negative transfer": True, "transfer helps": False}.get(self.paired.verdict)

    @property
    def verdict(self) -> str | None:
        """"transfer helps", "negative transfer" or "inconclusive" (``paired``'s exact sign test at the 5%
        level); None when scratch or every transfer strategy is missing."""
        return None if self.paired is None else self.paired.verdict

    @property
    def best(self) -> str | None:
        """The strategy to ship, by the cross-validated estimate (ensemble included).

        The lowest held-out cross-entropy at its best temperature (``Estimate.loss``) wins, then the higher
        mean accuracy, then STRATEGIES order: the cross-entropy separates what a few labels' accuracies
        cannot, and the temperature takes out calibration, which the shipped argmax does not use (the
        measurements behind this choice: docs/python_layer.md). A label-free strategy ("source_only",
        "mmd_only") is scored as shipped, a fine-tuned one by fold models with (k−1)/k of the labels, a
        pessimistic estimate: so the former is picked over the best fine-tuned strategy only when it is
        significantly more accurate on the same labels (paired sign test, 5%). "weighted_ensemble", where
        compared, is shipped: on real pairs it was within 2 points of the test set's best more often than
        picking one, with any number of labels measured, and comparing the two by their nested estimates
        (``weighted_ensemble.better``) did not tell when picking one would be more accurate (measured:
        docs/python_layer.md). Without target labels: the highest label-free score of ``criterion``.
        None when neither exists."""
        if not self.estimate:
            if not self.label_free or self.criterion is None:
                return None
            ranked = [s for s in STRATEGIES if s in self.label_free]
            return max(ranked, key=lambda s: self.label_free[s][self.criterion])  # type: ignore[index]
        if self.weighted_ensemble is not None:  # the stacked mixture, which averages the noise of choosing
            return WEIGHTED_ENSEMBLE
        ranked = [s for s in STRATEGIES if s in self.estimate and s != WEIGHTED_ENSEMBLE]
        ranked.sort(key=lambda s: (*self.estimate[s].rank_key(), STRATEGIES.index(s)))
        top = ranked[0]
        tuned = [s for s in ranked if s not in LABEL_FREE]
        if top in LABEL_FREE and tuned:
            vs = compare_paired(top, tuned[0], self.estimate[top].correct, self.estimate[tuned[0]].correct, "")
            if vs.p_value >= ALPHA:
                return tuned[0]
        return top

    @property
    def best_model(self) -> nn.Module:
        """The model of ``best``, trained on all the target labels (ship="folds": its fold models' mean): the one to
        ship."""
        if self.best is None:
            raise ValueError("no best model: it is chosen by the cross-validated estimate, which needs target_labeled "
                             "and folds (compare_strategies(..., target_labeled=(X, y), folds=5)), or without target "
                             "labels by a label-free criterion")
        return self.models[self.best]

    def _model(self, strategy: str) -> nn.Module:
        if strategy == "best":
            return self.best_model
        if strategy not in self.models:
            raise KeyError(f"no model for {strategy!r}; trained: {sorted(self.models)} (or 'best')")
        return self.models[strategy]

    def predict_proba(self, strategy: str, X: Any) -> Tensor | np.ndarray:
        """Class probabilities (N, C) of one strategy's model ("best": ``best_model``) on X: a numpy array for
        numpy input, else a CPU tensor. X's samples must have the shape the models were trained on."""
        model = self._model(strategy)
        x = self._features(X)
        p = next(model.parameters())
        with torch.no_grad(), eval_mode(model):
            out = torch.cat([F.softmax(model(b.to(p.device, p.dtype)), dim=1).cpu() for b in x.split(EVAL_BATCH)])
        return out.numpy() if isinstance(X, np.ndarray) else out

    def predict(self, strategy: str, X: Any) -> Tensor | np.ndarray:
        """Predicted classes (N,) of one strategy's model ("best": ``best_model``) on X: a numpy array for
        numpy input, else a CPU tensor."""
        p = self.predict_proba(strategy, X)
        return p.argmax(1)

    def _features(self, X: Any) -> Tensor:
        x = inp.as_features(X, "X")
        shape = self.config.get("sample_shape")
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            one = " (one sample? X.reshape(1, -1))" if x.dim() == 2 and x.shape[0] == inp.prod(tuple(shape)) else ""
            raise ValueError(f"X has samples of shape {inp.format_shape(tuple(x.shape[1:]))}; the models were trained "
                             f"on samples of shape {inp.format_shape(tuple(shape))}{one}")
        return x

    def scores(self) -> tuple[dict[str, float], str]:
        """The accuracies a verdict reads, and where they come from: test accuracy when there is a test set,
        else the cross-validated estimates."""
        if self.accuracy or not self.estimate:
            return self.accuracy, "on the target test set"
        n = next(iter(self.estimate.values())).correct.numel()
        return {s: e.mean for s, e in self.estimate.items()}, f"cross-validated over {n} target labels"

    def explain(self) -> str:
        """A paragraph for a report: the from-scratch baseline, the best transfer strategy, the gap and how
        sure it is, the strategy to ship, the warning signs seen, and, when transfer does not clearly pay,
        the remedies in order of cost."""
        acc, where = self.scores()
        mmd = self.embedding_mmd2
        # one transfer strategy in the whole paragraph: the one the verdict compares with scratch
        best = self.paired.strategy if self.paired is not None and self.paired.strategy in acc else best_transfer(acc)
        if "scratch" not in acc or best is None:
            missing = "target labels (scratch, naive and mmd need them)" if "scratch" not in acc else "naive/mmd"
            return (f"No negative-transfer check was possible: it compares transfer with a from-scratch baseline "
                    f"on the target labels, and this comparison lacks {missing}." + self._label_free_text())
        gap = 100 * (acc[best] - acc["scratch"])
        text = (f"Trained from scratch on the target labels alone, the model reaches {100 * acc['scratch']:.1f}% "
                f"target accuracy ({where}); the best transfer strategy, {best}, reaches {100 * acc[best]:.1f}% "
                f"({gap:+.1f} points).")
        if best in mmd and math.isfinite(mmd[best]):
            text += (f" Its source-target embedding MMD² is {mmd[best]:.3f} (below 0.1 looks transferable, "
                     f"above 0.5 does not).")
        if "ensemble" in acc:
            text += f" The ensemble of mmd and scratch reaches {100 * acc['ensemble']:.1f}%."
        if self.paired is not None:
            text += " " + self.paired.explain()
        negative = self.negative_transfer
        if negative:
            text += (" This is negative transfer: the borrowed knowledge hurts. Remedies, cheapest first: transfer "
                     "fewer layers (freeze less of the backbone or re-initialise its top blocks, "
                     "pytl.freezing.FreezeFirst with a smaller k); regularise fine-tuning toward the pretrained "
                     "weights (pytl.freezing.L2SP); change the source domain; or ship the ensemble with the "
                     "from-scratch model as a safety net.")
        elif negative is None:
            text += (" Until more labels settle it, ship the strategy with the best estimate, and treat transfer "
                     "as unproven here.")
        elif gap < 1.0:
            text += (" Transfer barely pays here (less than a point): before relying on it, try transferring "
                     "fewer layers or L2-SP regularisation, and keep the ensemble as a safety net.")
        else:
            text += " Transfer pays here: no sign of negative transfer on this seed."
        if self.best == WEIGHTED_ENSEMBLE and self.weighted_ensemble is not None:
            we = self.weighted_ensemble
            text += (f" The model to ship: weighted_ensemble ({we.describe()}), the stacked mixture of the "
                     f"strategies; report.best_model is it, its members trained on all {we.estimate.correct.numel()} "
                     f"target labels. Its nested cross-validated estimate (calibrated held-out cross-entropy "
                     f"{we.estimate.loss:.3f}) against picking one strategy, nested the same way "
                     f"({we.pick_one.loss:.3f}): ")
            text += ("the mixture measured better." if we.better else
                     f"picking one measured better, which on real pairs did not tell when the single pick is more "
                     f"accurate; the mixture ships anyway (report.models[{we.one!r}] is that pick).")
        elif self.best is not None:
            e = self.estimate[self.best]
            text += (f" The strategy to ship: {self.best} (best cross-validated estimate: calibrated held-out "
                     f"cross-entropy {e.loss:.3f}, accuracy {100 * e.mean:.1f}% ± {100 * e.std:.1f} over {len(e.folds)} folds); "
                     f"report.best_model is it, trained on all {e.correct.numel()} target labels.")
        return text + self._warning_signs()

    def _label_free_text(self) -> str:
        """Without target labels: what the label-free criterion ranks first, and what such a score cannot say."""
        if not self.label_free or self.criterion is None or self.best is None:
            return ""
        c = self.criterion
        order = sorted(self.label_free, key=lambda s: -self.label_free[s][c])
        ranked = " > ".join(f"{s} ({self.label_free[s][c]:.4g})" for s in order)
        return (f" Without labels, the label-free criterion {c!r} (pytl.validation) ranks {ranked}; report.best is "
                f"{self.best}. Label-free scores rank models; they do not measure accuracy, and a criterion can "
                "rank wrongly (docs/validation.md says when). A few labelled target samples, cross-validated, "
                "would say more.")

    def _warning_signs(self) -> str:
        """The tutorial's warning sign seen in the fine-tuning histories (which record a validation loss
        when ``finetune_validation`` is set): validation loss climbing while training goes on."""
        climbing = [s for s, h in self.histories.items() if validation_loss_climbs(h.get("finetune", []))]
        if not climbing:
            return ""
        restored = [s for s in climbing if any(r.get("best") for r in self.histories[s]["finetune"])]
        text = (f" Warning sign: validation loss climbs during fine-tuning ({', '.join(climbing)}): the model "
                "overfits the few labels")
        if restored:
            text += f" (the weights of the best validation epoch were restored for {', '.join(restored)})"
        return text + "; lower finetune_lr, freeze more of the backbone (pytl.freezing) or fine-tune fewer epochs."

    def _table_parts(self) -> TableParts:
        scores = None
        if self.label_free and self.criterion is not None:
            scores = (self.criterion, {s: v[self.criterion] for s, v in self.label_free.items()})
        return table_parts(self.accuracy, None, self.embedding_mmd2, self.skipped, title=f"seed {self.seed}",
                           config=self.config, estimate=self.estimate, paired=self.paired, best=self.best,
                           label_free=scores, lambdas=self._lambda_notes(),
                           histories=self.histories)

    def _lambda_notes(self) -> list[str]:
        """The table's λ notes: each search's summary; the "auto" options that without target labels kept their
        alignment's default (and why)."""
        notes = [f"λ chosen from the data: {s.summary()}" for s in self.lambdas.values()]
        kept = self.config.get("lambdas_unsearched") or []
        if kept:
            used = ", ".join(f"{o} {self.config[o]:g}" for o in kept)
            notes.append(f"λ: \"auto\" without target labels keeps each alignment's default ({used}): no label-free "
                         "criterion chose λ reliably better on real pairs (benchmarks/OUTCOMES.md); a grid of your own "
                         f"is searched by the {self.criterion} criterion")
        return notes

    def table(self) -> str:
        return render_text(self._table_parts())

    def _repr_html_(self) -> str:
        """Jupyter's view: the table's rows and notes, report.best in bold, then ``explain()``."""
        parts = self._table_parts()
        return render_html(parts, extra=[self.explain()])


@dataclass
class SeedSummary:
    """Accuracies of several ``ComparisonReport`` runs (one per seed): mean, std, per seed. They are test
    accuracies when every report has them, else cross-validated estimates (``source`` says which)."""

    reports: list[ComparisonReport]

    @property
    def source(self) -> str:
        return "test accuracy" if all(r.accuracy for r in self.reports) else "cross-validated estimate"

    @property
    def per_seed(self) -> dict[str, list[float]]:
        if self.source == "test accuracy":
            scores = [r.accuracy for r in self.reports]
        else:  # as the docstring says: every report's estimate, even where some have a test set
            scores = [{s: e.mean for s, e in r.estimate.items()} for r in self.reports]
        keys = [s for s in STRATEGIES if all(s in sc for sc in scores)]
        return {s: [sc[s] for sc in scores] for s in keys}

    @property
    def mean(self) -> dict[str, float]:
        return {s: sum(v) / len(v) for s, v in self.per_seed.items()}

    @property
    def std(self) -> dict[str, float]:
        """Sample standard deviation (ddof = 1) over the seeds; 0 for a single seed."""
        out = {}
        for s, v in self.per_seed.items():
            mu = sum(v) / len(v)
            out[s] = math.sqrt(sum((a - mu) ** 2 for a in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        return out

    @property
    def negative_transfer(self) -> bool | None:
        """The same rule as ComparisonReport.negative_transfer's test-set rule, on the mean accuracies."""
        return negative_transfer(self.mean)

    def _table_parts(self) -> TableParts:
        mean = self.mean
        several = len(self.reports) > 1
        mmd = {s: sum(r.embedding_mmd2.get(s, math.nan) for r in self.reports) / len(self.reports) for s in mean}
        seeds = ", ".join(str(r.seed) for r in self.reports)
        title = f"mean ± std over seeds {seeds}" if several else f"seed {seeds}"
        config, lambdas = _lambdas_across_seeds(self.reports)
        if self.source == "test accuracy":
            return table_parts(mean, self.std if several else None, mmd, self.reports[0].skipped, title=title,
                               config=config, lambdas=lambdas)
        return table_parts({}, None, mmd, self.reports[0].skipped, title=title, config=config,
                           estimate_mean=(mean, self.std if several else None), lambdas=lambdas)

    def table(self) -> str:
        return render_text(self._table_parts())

    def _repr_html_(self) -> str:
        return render_html(self._table_parts())


def summarize(reports: Sequence[ComparisonReport]) -> SeedSummary:
    """Mean and standard deviation of several reports (e.g. one per seed)."""
    reports = list(reports)
    if not reports or not all(isinstance(r, ComparisonReport) for r in reports):
        raise TypeError("summarize takes a non-empty sequence of ComparisonReport")
    return SeedSummary(reports)


def _lambdas_across_seeds(reports: Sequence[ComparisonReport]) -> tuple[dict[str, Any], list[str]]:
    """The first report's config, with each searched λ left unnamed ("λ") where the seeds chose differently, and
    one line per searched λ option: the λs the seeds chose and how often (a seed's own report names its own)."""
    config, lines = dict(reports[0].config), []
    per_seed = {key: [r.config.get(key) or {} for r in reports] for key in ("finetune_lambdas", "ssl_lambdas")}
    agree = {key: {k: lam for k, lam in seeds[0].items() if all(p.get(k) == lam for p in seeds)}
             for key, seeds in per_seed.items()}  # named in "uses" where every seed agrees
    config["finetune_lambdas"] = agree["finetune_lambdas"]
    config["ssl_lambdas"] = {k: agree["ssl_lambdas"].get(k, "λ") for k in per_seed["ssl_lambdas"][0]}  # else "λ"
    tuned = per_seed["finetune_lambdas"]
    for alignment, option in ALIGNED.items():
        chosen = Counter(r.lambdas[alignment].chosen for r in reports if alignment in r.lambdas)
        if not chosen:
            continue
        if len(chosen) > 1:
            config[option] = "λ"
        line = f"λ chosen from the data: {option}, per seed: {_counted(chosen)}"
        finetuned = Counter(t[alignment] for t in tuned if alignment in t)
        if finetuned:
            line += f"; fine-tuned {alignment}: {_counted(finetuned)}"
        lines.append(line)
    return config, lines


def _counted(values: Counter) -> str:
    """"0.158 (2 seeds), 0.5 (1 seed)"."""
    return ", ".join(f"{lam:g} ({n} seed{'s' * (n > 1)})" for lam, n in sorted(values.items()))
