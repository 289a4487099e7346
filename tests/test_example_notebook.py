"""examples/few_labels_workflow.ipynb: the notebook is the export of the percent-format script beside it (they
cannot drift), and its cells run top to bottom as Jupyter would (each cell's last expression displayed through
its ``_repr_html_``), on the real digits→MNIST pair with PYTL_EXAMPLE_FAST=1 (small data, 2 epochs)."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "few_labels_workflow.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def _exporter():
    spec = importlib.util.spec_from_file_location("export_notebook", ROOT / "examples" / "export_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_notebook_is_the_scripts_export():
    assert SCRIPT.with_suffix(".ipynb").read_text() == _exporter().notebook(SCRIPT.read_text()), \
        "run: python examples/export_notebook.py examples/few_labels_workflow.py"


def test_the_cells_run_as_jupyter_runs_them(monkeypatch, capsys):
    for extra in ("sklearn", "mlxtend", "matplotlib"):
        pytest.importorskip(extra, reason="the example needs the [bench] and [plot] extras")
    monkeypatch.setenv("PYTL_EXAMPLE_FAST", "1")
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))
    namespace: dict = {"__name__": "__main__"}
    shown = []
    for cell in _exporter().cells(SCRIPT.read_text()):
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse("".join(cell["source"]))
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, str(SCRIPT), "exec"), namespace)  # noqa: S102 - our own example
        if last is not None:
            value = eval(compile(ast.Expression(last.value), str(SCRIPT), "eval"), namespace)  # noqa: S307
            if value is None:  # a print() call
                continue
            shown.append(type(value).__name__)
            if type(value).__module__.startswith("pytl."):  # Jupyter shows pytl's reports as HTML tables
                assert "<table>" in value._repr_html_()
    assert shown == ["dict", "FeasibilityReport", "ComparisonReport", "Figure"]
    out = capsys.readouterr().out
    assert "verdict:" in out and "ssl_cmmd on exported embeddings: target test accuracy" in out
    assert namespace["report"].best in namespace["report"].accuracy
