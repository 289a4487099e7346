"""The training progress bar: tqdm's where someone watches and tqdm is installed (a widget in notebooks), else
the dependency-free line; in a log, a line about every 10% of the epochs."""

from __future__ import annotations

import io
import sys
import types

import pytest

from pytl._progress import LineProgress, TqdmProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_line_per_tenth_and_no_tqdm():
    log = io.StringIO()
    bar = progress_bar(20, "align", stream=log)
    assert isinstance(bar, LineProgress)
    for _ in range(20):
        bar.update(1, loss=0.5)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("align 20/20") and "loss 0.5" in lines[-1]


def test_where_someone_watches_tqdm_draws_it_with_the_postfix():
    pytest.importorskip("tqdm", reason="tqdm (the [notebook] extra) is not installed")
    term = Terminal()
    bar = progress_bar(3, "finetune", stream=term)
    assert isinstance(bar, TqdmProgress)
    for _ in range(3):
        bar.update(1, loss=0.25)
    bar.close()
    out = term.getvalue()
    assert "finetune" in out and "3/3" in out and "loss=0.25" in out


def test_without_tqdm_a_terminal_gets_the_redrawn_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import tqdm.auto raises ImportError
    term = Terminal()
    bar = progress_bar(2, "align", stream=term)
    assert isinstance(bar, LineProgress)
    bar.update(1)
    bar.update(1)
    assert "\r" in term.getvalue() and "align 2/2" in term.getvalue()


def test_a_notebook_kernel_counts_as_watching(monkeypatch):
    """tqdm.auto picks the widget itself; pytl only has to see that a Jupyter kernel runs the code."""
    class ZMQInteractiveShell:
        pass

    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=ZMQInteractiveShell))
    seen = []

    class FakeTqdm:
        def __init__(self, **kw):
            seen.append(kw)

        def set_postfix(self, *a, **k):
            pass

        def update(self, n):
            seen.append(n)

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "tqdm.auto", types.SimpleNamespace(tqdm=FakeTqdm))
    bar = progress_bar(4, "align", stream=io.StringIO())
    bar.update(1)
    assert isinstance(bar, TqdmProgress) and seen[0]["total"] == 4 and seen[0]["desc"] == "align" and seen[1] == 1
