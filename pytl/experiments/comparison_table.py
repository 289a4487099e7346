"""The comparison table of a ``ComparisonReport`` or ``SeedSummary``: its rows and notes built once
(``table_parts``), printed as text (``render_text``) or rendered as HTML for notebooks (``render_html``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pytl._html import html_table
from pytl.experiments.estimate import Estimate, PairedComparison, format_p
from pytl.experiments.strategies import STRATEGIES, best_transfer, describe, negative_transfer

__all__ = ["TableParts", "render_html", "render_text", "table_parts"]


class TableParts(NamedTuple):
    title: str
    rows: list[tuple[str, ...]]  # the header first, then one row per strategy
    notes: list[str]  # skipped strategies, what the columns mean, the λs chosen, the verdicts
    best_row: int | None  # the body row of report.best (0-based), if any


def table_parts(accuracy: Mapping[str, float], std: Mapping[str, float] | None, mmd: Mapping[str, float],
                skipped: Mapping[str, str], title: str, config: Mapping[str, Any],
                estimate: Mapping[str, Estimate] | None = None, paired: PairedComparison | None = None,
                best: str | None = None,
                estimate_mean: tuple[Mapping[str, float], Mapping[str, float] | None] | None = None,
                label_free: tuple[str, Mapping[str, float]] | None = None, lambdas: Sequence[str] = (),
                histories: Mapping[str, Any] | None = None) -> TableParts:
    """The comparison table's parts: one row per strategy (test accuracy ± std when given, cross-validated
    estimate ± std over folds when given, embedding MMD², what it uses), the skipped strategies, the
    negative-transfer verdict and the strategy to ship."""
    if estimate_mean is None and estimate:
        estimate_mean = ({s: e.mean for s, e in estimate.items()}, {s: e.std for s, e in estimate.items()})
    head = ["strategy"] + (["target acc"] if accuracy else []) + (["CV estimate"] if estimate_mean else [])
    head += ["CV loss"] if estimate else []
    head += [f"{label_free[0]} score"] if label_free else []
    rows = [tuple(head + ["emb. MMD²", "uses"])]
    shown = [s for s in STRATEGIES if s in accuracy or (estimate_mean and s in estimate_mean[0])
             or (label_free and s in label_free[1])]
    for s in shown:
        cells = [s + (" *" if s == best else "")]
        if accuracy:
            cells.append("-" if s not in accuracy else
                         f"{100 * accuracy[s]:.1f}%" + (f" ± {100 * std[s]:.1f}" if std is not None else ""))
        if estimate_mean:
            means, stds = estimate_mean
            cells.append("-" if s not in means else
                         f"{100 * means[s]:.1f}%" + (f" ± {100 * stds[s]:.1f}" if stds is not None else ""))
        if estimate:
            cells.append(f"{estimate[s].loss:.3f}" if s in estimate else "-")
        if label_free:
            cells.append(f"{label_free[1][s]:.4g}" if s in label_free[1] else "-")
        cells.append(f"{mmd[s]:.3f}" if s in mmd and math.isfinite(mmd[s]) else "-")
        cells.append(describe(s, config, (histories or {}).get(s)))
        rows.append(tuple(cells))
    notes = []
    for s, why in skipped.items():
        notes.append(f"({s}: skipped, {why})")
    if estimate:
        folds = len(next(iter(estimate.values())).folds)
        notes.append(f"(CV estimate: accuracy, mean ± std over {folds} stratified folds of the target labels; CV loss: "
                     "held-out cross-entropy at its best temperature; * = report.best, shipped as report.best_model: "
                     "the lowest CV loss, except that a strategy trained without target labels must also be "
                     "significantly more accurate than the best fine-tuned one (paired sign test, 5%)"
                     + ("; weighted_ensemble's loss is nested (each fold's weights chosen without its labels), and "
                        "where it is compared it is what ships"
                        if "weighted_ensemble" in estimate else "") + ")")
        if config.get("ship") == "folds":
            notes.append(f"(ship='folds': each strategy that uses target labels ships the mean of its {folds} "
                         "fold models, the models its CV estimate scored, not a model retrained on every label; a "
                         "λ-searched label-free strategy, the mean of its folds' λ choices)")
    if label_free:
        notes.append(f"({label_free[0]} score: label-free (pytl.validation), higher ranks higher; it ranks models, it "
                     "does not measure accuracy; * = best)")
    for line in lambdas:
        notes.append(f"({line})")
    negative = negative_transfer(accuracy)
    if negative is not None:
        bt = best_transfer(accuracy)
        verdict = "YES: transfer is worse than scratch" if negative else "no"
        notes.append(f"negative transfer: {verdict} (best transfer: {bt} {100 * accuracy[bt]:.1f}% vs scratch "
                     f"{100 * accuracy['scratch']:.1f}%)")
    if paired is not None:
        notes.append(f"verdict: {paired.verdict} ({paired.strategy} vs {paired.baseline} on {paired.source}: "
                     f"{paired.wins} vs {paired.losses} samples right only for one, sign test {format_p(paired.p_value)})")
    best_row = shown.index(best) if best in shown else None
    return TableParts(f"pytl strategy comparison ({title})", rows, notes, best_row)


def render_text(parts: TableParts) -> str:
    """The table as text: aligned columns, then the notes."""
    title, rows, notes, _ = parts
    cols = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(cols)]
    lines = [title]
    for j, r in enumerate(rows):
        cells = [f"{r[0]:<{widths[0]}}"] + [f"{r[i]:>{widths[i]}}" for i in range(1, cols - 1)] + [r[-1]]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines + notes)



def render_html(parts: TableParts, extra: Sequence[str] = ()) -> str:
    """The table as HTML (Jupyter): the same rows and notes, report.best in bold, then ``extra`` paragraphs."""
    title, rows, notes, best_row = parts
    return html_table(title, rows, [*notes, *extra], bold=() if best_row is None else (best_row,),
                      align_left=(0, len(rows[0]) - 1))
