"""Writes a percent-format script (``# %%`` code cells, ``# %% [markdown]`` cells of ``# `` comments) as a Jupyter
notebook beside it (nbformat 4, no dependency), so the notebook and the script that the tests run are one text.

    python examples/export_notebook.py examples/few_labels_workflow.py   # -> examples/few_labels_workflow.ipynb
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cells(script: str) -> list[dict]:
    out: list[dict] = []
    for chunk in script.split("# %%")[1:]:
        header, _, body = chunk.partition("\n")
        if header.strip() == "[markdown]":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.strip("\n").splitlines()]
            out.append({"cell_type": "markdown", "metadata": {}, "source": _source(lines)})
        else:
            out.append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                        "source": _source(body.strip("\n").splitlines())})
    return out


def _source(lines: list[str]) -> list[str]:
    return [line + "\n" for line in lines[:-1]] + lines[-1:]


def notebook(script: str) -> str:
    nb = {"cells": cells(script), "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                              "name": "python3"},
                                               "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        path = Path(arg)
        path.with_suffix(".ipynb").write_text(notebook(path.read_text()))
        print(f"{path.with_suffix('.ipynb')} written")
