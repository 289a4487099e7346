"""What ``compare_strategies`` returns: one seed's ``ComparisonReport``, and ``SeedSummary`` over seeds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pytl import _inputs as inp
from pytl.experiments.strategies import STRATEGIES, best_transfer, describe, negative_transfer
from pytl.train import eval_mode

__all__ = ["ComparisonReport", "SeedSummary", "format_table", "summarize"]


@dataclass
class ComparisonReport:
    """Result of ``compare_strategies`` for one seed.

    accuracy: strategy → target test accuracy (strategies in STRATEGIES order).
    embedding_mmd2: strategy → MMD² between source and target embeddings of its final model (the
    tutorial's rule of thumb: < 0.1 looks transferable, > 0.5 does not).
    """

    accuracy: dict[str, float]
    embedding_mmd2: dict[str, float]
    seconds: dict[str, float]
    skipped: dict[str, str]
    models: dict[str, nn.Module] = field(repr=False)
    histories: dict[str, dict[str, list]] = field(repr=False)
    config: dict[str, Any] = field(repr=False)
    seed: int = 0

    @property
    def negative_transfer(self) -> bool | None:
        """True exactly when the best of "naive" and "mmd" is below "scratch"; None when not all ran."""
        return negative_transfer(self.accuracy)

    def predict_proba(self, strategy: str, X: Any) -> Tensor:
        """Class probabilities of one strategy's model on X (CPU tensor)."""
        if strategy not in self.models:
            raise KeyError(f"no model for {strategy!r}; trained: {sorted(self.models)}")
        model = self.models[strategy]
        x = inp.as_features(X, "X")
        p = next(model.parameters())
        with torch.no_grad(), eval_mode(model):
            return F.softmax(model(x.to(p.device, p.dtype)), dim=1).cpu()

    def explain(self) -> str:
        """One paragraph for a report: the from-scratch baseline, the best transfer strategy, the gap,
        and, when transfer does not clearly pay, the remedies in order of cost."""
        acc, mmd = self.accuracy, self.embedding_mmd2
        best = best_transfer(acc)
        if "scratch" not in acc or best is None:
            missing = "target labels (scratch, naive and mmd need them)" if "scratch" not in acc else "naive/mmd"
            return (f"No negative-transfer check was possible: it compares transfer with a from-scratch baseline "
                    f"on the target labels, and this comparison lacks {missing}.")
        gap = 100 * (acc[best] - acc["scratch"])
        text = (f"Trained from scratch on the target labels alone, the model reaches {100 * acc['scratch']:.1f}% "
                f"target accuracy; the best transfer strategy, {best}, reaches {100 * acc[best]:.1f}% "
                f"({gap:+.1f} points).")
        if best in mmd and math.isfinite(mmd[best]):
            text += (f" Its source-target embedding MMD² is {mmd[best]:.3f} (below 0.1 looks transferable, "
                     f"above 0.5 does not).")
        if "ensemble" in acc:
            text += f" The ensemble of mmd and scratch reaches {100 * acc['ensemble']:.1f}%."
        if self.negative_transfer:
            text += (" This is negative transfer: the borrowed knowledge hurts. Remedies, cheapest first: transfer "
                     "fewer layers (freeze less of the backbone or re-initialise its top blocks, "
                     "pytl.freezing.FreezeFirst with a smaller k); regularise fine-tuning toward the pretrained "
                     "weights (pytl.freezing.L2SP); change the source domain; or ship the ensemble with the "
                     "from-scratch model as a safety net.")
        elif gap < 1.0:
            text += (" Transfer barely pays here (less than a point): before relying on it, try transferring "
                     "fewer layers or L2-SP regularisation, and keep the ensemble as a safety net.")
        else:
            text += " Transfer pays here: no sign of negative transfer on this seed."
        return text

    def table(self) -> str:
        return format_table(self.accuracy, None, self.embedding_mmd2, self.skipped, title=f"seed {self.seed}",
                            config=self.config)


@dataclass
class SeedSummary:
    """Accuracies of several ``ComparisonReport`` runs (one per seed): mean, std, per seed."""

    reports: list[ComparisonReport]

    @property
    def per_seed(self) -> dict[str, list[float]]:
        keys = [s for s in STRATEGIES if all(s in r.accuracy for r in self.reports)]
        return {s: [r.accuracy[s] for r in self.reports] for s in keys}

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
        """The same rule as ComparisonReport.negative_transfer, on the mean accuracies."""
        return negative_transfer(self.mean)

    def table(self) -> str:
        mean = self.mean
        several = len(self.reports) > 1
        mmd = {s: sum(r.embedding_mmd2.get(s, math.nan) for r in self.reports) / len(self.reports) for s in mean}
        seeds = ", ".join(str(r.seed) for r in self.reports)
        return format_table(mean, self.std if several else None, mmd, self.reports[0].skipped,
                            title=f"mean ± std over seeds {seeds}" if several else f"seed {seeds}",
                            config=self.reports[0].config)


def summarize(reports: Sequence[ComparisonReport]) -> SeedSummary:
    """Mean and standard deviation of several reports (e.g. one per seed)."""
    reports = list(reports)
    if not reports or not all(isinstance(r, ComparisonReport) for r in reports):
        raise TypeError("summarize takes a non-empty sequence of ComparisonReport")
    return SeedSummary(reports)


def format_table(accuracy: Mapping[str, float], std: Mapping[str, float] | None, mmd: Mapping[str, float],
                 skipped: Mapping[str, str], title: str, config: Mapping[str, Any]) -> str:
    """The comparison table: one line per strategy (accuracy, ± std when given, embedding MMD², what it
    uses), the skipped strategies, and the negative-transfer verdict."""
    rows = [("strategy", "target acc", "emb. MMD²", "uses")]
    for s in STRATEGIES:
        if s not in accuracy:
            continue
        a = f"{100 * accuracy[s]:.1f}%" + (f" ± {100 * std[s]:.1f}" if std is not None else "")
        m = f"{mmd[s]:.3f}" if s in mmd and math.isfinite(mmd[s]) else "-"
        rows.append((s, a, m, describe(s, config)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"pytl strategy comparison ({title})"]
    for j, r in enumerate(rows):
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip())
        if j == 0:
            lines.append("-" * len(lines[-1]))
    for s, why in skipped.items():
        lines.append(f"({s}: skipped, {why})")
    negative = negative_transfer(accuracy)
    if negative is not None:
        best = best_transfer(accuracy)
        verdict = "YES: transfer is worse than scratch" if negative else "no"
        lines.append(f"negative transfer: {verdict} (best transfer: {best} {100 * accuracy[best]:.1f}% vs scratch "
                     f"{100 * accuracy['scratch']:.1f}%)")
    return "\n".join(lines)
