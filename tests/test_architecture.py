"""The shape docs/architecture.md promises, checked from the source so that it cannot silently break:
layers that import one way (no cycle, lazy imports included; imports under TYPE_CHECKING excepted), no
module reading another class's private attribute, and the size limits (file, class, function)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pytl"

#: every top-level unit of pytl (a module or a subpackage) and its layer; an import must go to a lower one
LAYERS = {
    **dict.fromkeys(["_C", "_checks", "_toolchain", "_progress", "_html"], 0),  # _C: the compiled extension
    **dict.fromkeys(["_inputs", "_loader", "data", "distributed", "projection"], 1),
    **dict.fromkeys(["_samples", "bandwidths"], 2),
    **dict.fromkeys(["random_features", "block_mmd", "ring_mmd"], 2.5),  # the scalable estimators, under the op wrappers
    "sharded_data": 1.5,  # data sets sharded over ranks: subsamples, collective checks
    "sharded_estimates": 2.75,  # rff and block of sharded samples: over the estimators and the ring's median
    "ops": 3,
    **dict.fromkeys(["inference", "losses", "models", "freezing", "adversarial", "testing"], 4),
    "diagnostics": 5,
    "train": 6,
    "validation": 7,
    "experiments": 8,
    **dict.fromkeys(["plot", "sklearn"], 9),
    "cli": 10,
    "__main__": 11,
}
MAX_FILE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 400, 250, 120
#: private names of other classes that pytl may read: NamedTuple's API, and torch.nn.Module's child registry
#: (the one view that lists a module registered twice, which named_children() skips)
ALLOWED_PRIVATE = {"_replace", "_asdict", "_fields", "_modules"}


def _sources() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str | None:
    """The top-level unit of a pytl module ("pytl.train.steps" -> "train"); None for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(sub) for sub in ast.walk(node))
    return skip


def _imports(path: pathlib.Path) -> list[tuple[str, int]]:
    """(imported pytl module, line) for every import of the file, at any depth (lazy ones too)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("pytl")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base == "pytl":  # "from pytl import ops": the names are the modules
                out += [(f"pytl.{a.name}", node.lineno) for a in node.names]
            elif base.startswith("pytl"):
                out.append((base, node.lineno))
    return out


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in _sources()} - {None}
    assert not units - set(LAYERS), f"place these in LAYERS (and in docs/architecture.md): {sorted(units - set(LAYERS))}"


def test_imports_go_down_the_layers():
    upward = []
    for path in _sources():
        here = _unit(_module_name(path))
        if here is None or here not in LAYERS:
            continue  # pytl/__init__.py gathers the public names of every layer; a unit without a layer: above
        for target, line in _imports(path):
            there = _unit(target)
            if there is None or there == here:
                continue
            if there not in LAYERS or LAYERS[there] >= LAYERS[here]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({here}, layer {LAYERS[here]}) imports "
                              f"{target} (layer {LAYERS.get(there)})")
    assert not upward, "imports that go up or sideways:\n" + "\n".join(upward)


def test_no_import_cycle_between_units():
    edges: dict[str, set[str]] = {}
    for path in _sources():
        here = _unit(_module_name(path))
        for target, _ in _imports(path):
            there = _unit(target)
            if here is not None and there is not None and there != here:
                edges.setdefault(here, set()).add(there)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    cycles = sorted(u for u in edges if reaches(u, u, set()))
    assert not cycles, f"units on an import cycle: {cycles}"


def test_no_module_reads_another_class_private_attribute():
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text())
        modules = {(a.asname or a.name).split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for a in node.names}
        modules |= {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    for a in node.names}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner in ("self", "cls") or owner in modules or node.attr in ALLOWED_PRIVATE:
                continue
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "private attributes read from outside their class:\n" + "\n".join(found)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_sizes(path):
    text = path.read_text()
    assert text.count("\n") <= MAX_FILE_LINES, f"{path.name}: {text.count(chr(10))} lines (at most {MAX_FILE_LINES})"
    for node in ast.walk(ast.parse(text)):
        lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
        if isinstance(node, ast.ClassDef):
            assert lines <= MAX_CLASS_LINES, f"class {node.name}: {lines} lines (at most {MAX_CLASS_LINES})"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert lines <= MAX_FUNCTION_LINES, f"{node.name}: {lines} lines (at most {MAX_FUNCTION_LINES})"


def test_the_checks_can_fail(tmp_path):
    """The import parser finds what it must: relative, lazy and 'from pytl import' imports, not TYPE_CHECKING ones."""
    pkg = tmp_path / "pytl" / "train"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("from typing import TYPE_CHECKING\nfrom ..experiments import report\nfrom pytl import cli\n"
                 "if TYPE_CHECKING:\n    from pytl.plot import y\ndef g():\n    import pytl.validation.iwv\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "pytl"
    try:
        assert sorted(t for t, _ in _imports(f)) == ["pytl.cli", "pytl.experiments", "pytl.validation.iwv"]
    finally:
        PACKAGE = saved
