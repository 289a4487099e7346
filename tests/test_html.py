"""Reports render as HTML tables in Jupyter (``_repr_html_``): parsed back with the standard library's parser,
each holds the rows and numbers its text ``table()`` prints, report.best / the verdict in bold, text escaped."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
import torch

import pytl
from pytl._html import html_table

pytestmark = pytest.mark.usefixtures("one_thread")


class Table(HTMLParser):
    """Rows of cell texts, the bold rows' first cells, the caption and the notes of one rendered table."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows, self.bold, self.notes, self.caption = [], [], [], ""
        self._where = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
            if ("style", "font-weight:bold") in attrs:
                self.bold.append(len(self.rows) - 1)
        elif tag in ("td", "th"):
            self.rows[-1].append("")
            self._where = "cell"
        elif tag == "p":
            self.notes.append("")
            self._where = "note"
        elif tag == "caption":
            self._where = "caption"

    def handle_endtag(self, tag):
        if tag in ("td", "th", "p", "caption"):
            self._where = None

    def handle_data(self, data):
        if self._where == "cell":
            self.rows[-1][-1] += data
        elif self._where == "note":
            self.notes[-1] += data
        elif self._where == "caption":
            self.caption += data


def test_text_is_escaped():
    t = Table(html_table("a <b> & c", [("x", "y"), ("<script>", "1 < 2")], ["note <i>"]))
    assert t.caption == "a <b> & c" and t.rows[1] == ["<script>", "1 < 2"] and t.notes == ["note <i>"]
    assert "<script>" not in html_table("t", [("x",), ("<script>",)])


def test_comparison_report_holds_the_tables_rows_with_best_in_bold():
    d = pytl.make_domain_shift(0, n_source=120, n_target_unlabeled=120, n_target_labeled=20, n_target_test=60)
    r = pytl.compare_strategies(**d.as_dict(), align_epochs=3, finetune_epochs=3, folds=2, num_threads=1)
    t = Table(r._repr_html_())
    text = r.table()
    assert t.caption == text.splitlines()[0]
    assert [row[0].rstrip(" *") for row in t.rows[1:]] == [line.split()[0]
                                                         for line in text.splitlines()[3:3 + len(r.accuracy)]]
    for row in t.rows[1:]:
        name = row[0].rstrip(" *")
        assert row[1] == f"{100 * r.accuracy[name]:.1f}%"  # target acc, as the text prints it
        assert row[-2] == f"{r.embedding_mmd2[name]:.3f}" if name != "ensemble" else row[-2] == "-"
    assert [t.rows[i][0] for i in t.bold] == [f"{r.best} *"]
    assert any(n.startswith("verdict:") for n in t.notes) and t.notes[-1] == r.explain()
    summary = Table(pytl.experiments.summarize([r, r])._repr_html_())
    assert summary.caption.endswith("(mean ± std over seeds 0, 0)") and len(summary.rows) == len(t.rows)


def test_feasibility_ranking_and_mmd_test_render_their_numbers():
    d = pytl.make_domain_shift(0, n_source=150, n_target_unlabeled=150, n_target_labeled=20, n_target_test=20)
    ranking = pytl.rank_sources(d.target_unlabeled, {"near": d.source, "far": (d.source[0] + 3, d.source[1])},
                                d.target_labeled)
    t = Table(ranking._repr_html_())
    assert [row[0] for row in t.rows[1:]] == ranking.order and t.bold == [1]
    for row, name in zip(t.rows[1:], ranking.order):
        rep = ranking.reports[name]
        assert row[1] == f"{rep.source_error.value:.3f}" and row[5] == f"{rep.mmd2:.4f}" and row[6] == rep.verdict
    report = ranking.reports[ranking.order[0]]
    t = Table(report._repr_html_())
    assert dict(t.rows[1:])["joint error lambda*"] == report.joint_error.text()
    assert t.rows[t.bold[0]] == ["verdict", report.verdict] and t.notes == [report.explain()]
    g = torch.Generator().manual_seed(0)
    res = pytl.mmd_test(torch.randn(40, 3, generator=g), torch.randn(50, 3, generator=g) + 1.0, num_permutations=99)
    t = Table(res._repr_html_())
    cells = dict(t.rows[1:])
    assert float(cells["p-value"]) == pytest.approx(res.p_value, rel=1e-3) and cells["null"] == "99 permutations"
    assert cells["at 5%"] == "different distributions" and res.rejects()
