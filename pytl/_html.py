"""HTML tables for Jupyter (``_repr_html_``): one small renderer every report shares, so that a notebook shows the
same rows and notes as ``table()`` prints, escaped, with no dependency."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["html_table"]


def html_table(title: str, rows: Sequence[Sequence[str]], notes: Sequence[str] = (), bold: Sequence[int] = (),
               align_left: Sequence[int] = (0,)) -> str:
    """``rows[0]`` is the header; ``bold``: indices of body rows (0-based) to emphasise; ``align_left``: column
    indices set flush left (the others, numbers, flush right)."""
    def cell(tag: str, text: str, col: int) -> str:
        side = "left" if col in align_left else "right"
        return f'<{tag} style="text-align:{side}">{escape(str(text))}</{tag}>'

    head = "".join(cell("th", h, i) for i, h in enumerate(rows[0]))
    body = []
    for j, r in enumerate(rows[1:]):
        cells = "".join(cell("td", c, i) for i, c in enumerate(r))
        body.append(f'<tr style="font-weight:bold">{cells}</tr>' if j in bold else f"<tr>{cells}</tr>")
    foot = "".join(f'<p style="font-size:smaller">{escape(n)}</p>' for n in notes)
    return (f'<div class="pytl-report"><table><caption style="text-align:left">{escape(title)}</caption>'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{foot}</div>')
