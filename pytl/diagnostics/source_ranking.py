"""Which of several candidate sources to transfer from: :func:`pytl.transfer_feasibility` for each, ranked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytl._html import html_table
from pytl._inputs import check_label_space
from pytl.diagnostics.feasibility import FeasibilityReport, Term, estimate_feasibility
from pytl.diagnostics.feasibility_inputs import (
    as_source,
    as_target,
    check_options,
    featurize_source,
    featurize_target,
)

__all__ = ["SourceRanking", "rank_sources"]


@dataclass(frozen=True)
class SourceRanking:
    """The outcome of :func:`rank_sources`: names best first, each one's report, and what ranked them."""

    order: list[str]
    reports: dict[str, FeasibilityReport]
    key: str  # "bound" or "divergence"

    def _rows(self) -> list[tuple[str, ...]]:
        def f(t: Term) -> str:
            return "-" if t.value is None else f"{t.value:.3f}"

        rows: list[tuple[str, ...]] = [("source", "eps_S", "1/2 d", "lambda*", "bound", "MMD²", "verdict")]
        for name in self.order:
            r = self.reports[name]
            rows.append((name, f(r.source_error), f(r.divergence), f(r.joint_error), f(r.bound), f"{r.mmd2:.4f}",
                         r.verdict))
        return rows

    def table(self) -> str:
        rows = self._rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join([f"{r[0]:<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(r[1:-1], widths[1:-1])), r[-1]])
                 for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """Jupyter's view: the candidates best first (the first in bold), then ``explain()``."""
        return html_table("pytl source ranking", self._rows(), [self.explain()], bold=(0,), align_left=(0, 6))

    def explain(self) -> str:
        best = self.reports[self.order[0]]
        how = ("by the estimated bound eps_S + 1/2 d_HdH + lambda* (lowest first)" if self.key == "bound" else
               "by the divergence 1/2 d_HdH (lowest first; lambda* needs target labels, so the bound is unknown)")
        return (f"{len(self.order)} candidate sources ranked {how}: {', '.join(self.order)}. The first, "
                f"{self.order[0]!r}, has verdict {best.verdict!r}. {best.explain()}")


def rank_sources(
    target_unlabeled: Any,
    sources: Mapping[str, Any],
    target_labeled: Any = None,
    *,
    features: Any = None,
    classifier: str = "linear",
    num_classes: int | None = None,
    seed: int = 0,
) -> SourceRanking:
    """Which of several labelled sources to transfer from: :func:`transfer_feasibility` for each, ranked by
    the estimated bound when target labels give lambda*, by the divergence 1/2 d_HdH otherwise (ties: MMD²).

    sources: {name: (X, y)} with at least one entry; features, classifier, num_classes, seed: as for
    transfer_feasibility, the same for every source, so the numbers compare. Every candidate is checked
    (its data and its label space against the target's) before any report is computed; a label-space
    problem shared by several candidates is warned once, naming them all."""
    if not isinstance(sources, Mapping) or not sources:
        raise TypeError("sources must be a non-empty mapping {name: (X, y)} of candidate source domains")
    for name in sources:
        if not isinstance(name, str):
            raise TypeError(f"sources: names must be strings, got {name!r}")
    num_classes, seed = check_options(features, classifier, num_classes, seed)
    xt, labeled = as_target(target_unlabeled, target_labeled)
    data = {name: as_source(src, f"sources[{name!r}]") for name, src in sources.items()}
    check_label_space({f"sources[{name!r}][1] (y)": ys for name, (_, ys) in data.items()},
                      None if labeled is None else labeled[1], num_classes)
    xt, labeled = featurize_target(xt, labeled, features)  # once for all candidates
    data = {name: (featurize_source(xs, features, f"sources[{name!r}]", xt, labeled), ys)
            for name, (xs, ys) in data.items()}
    reports = {name: estimate_feasibility(xs, ys, xt, labeled, num_classes, classifier, seed)
               for name, (xs, ys) in data.items()}
    key = "bound" if target_labeled is not None else "divergence"
    order = sorted(reports, key=lambda n: (getattr(reports[n], key).value, reports[n].mmd2))
    return SourceRanking(order=order, reports=reports, key=key)
