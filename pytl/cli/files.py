"""The data files of ``divergence``, ``feasibility`` and ``rank-sources``, read and checked in one place.

Features: .npy, .npz (its only array, or ``--key NAME``) or .csv (comma-separated numbers, one sample per
row; a first row that is not numbers while the rest are is taken as a header, skipped, and said so on
stderr). Labelled files: .npz with arrays ``X`` and ``y``, or .npy/.csv whose last column is the integer
label. Every error is one line that names the file (and its role: "source", "candidate source 2", ...)
and says what was expected; every file is read and checked before anything is computed.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from pytl.diagnostics import MIN_PAD_SAMPLES

__all__ = ["KEY_HELP", "LABELED_FILES", "Note", "add_key_option", "check_distinct", "check_file", "check_filled",
           "check_samples", "file_label", "load_features", "load_labeled", "numeric", "stderr_note"]

LABELED_FILES = "Labelled files: .npz with arrays X and y, or .npy/.csv whose last column is the integer label."
KEY_HELP = "the array to read from a .npz file that holds several arrays"
_FEATURE_FILES = "a .npy, .npz or .csv file"
Note = Callable[[str], None]


def add_key_option(parser: argparse.ArgumentParser, labeled: bool) -> None:
    """``--key NAME``; ``labeled``: the subcommand also reads labelled files, which --key does not concern."""
    extra = (" (the unlabelled target); labelled .npz files (sources, --target-labeled) are always read as "
             "their arrays X and y, whatever --key says") if labeled else " (source and target alike)"
    parser.add_argument("--key", default=None, metavar="NAME", help=KEY_HELP + extra)


def stderr_note(prog: str) -> Note:
    """A note for the user (a skipped header row): one line on stderr, prefixed like the subcommand's errors."""
    return lambda message: print(f"{prog}: note: {message}", file=sys.stderr)


def file_label(path: str, role: str = "") -> str:
    """How errors name a file: its role ("source", "candidate source 2") and its path."""
    return f"{role} {path}" if role else str(path)


def load_features(path: str, key: str | None = None, *, role: str = "", note: Note | None = None) -> np.ndarray:
    """A non-empty, finite 2-D float64 array (samples, features) from .npy, .npz (its only array, or ``key``)
    or .csv (comma-separated, an optional header row). ValueError naming the file (and ``role``) otherwise."""
    where = file_label(path, role)
    arr = _read(path, key, where, note)
    arr = numeric(arr, where, "the array")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D array (samples, features), got shape {arr.shape}")
    return check_filled(arr, where, "features").astype(np.float64)


def load_labeled(path: str, *, role: str = "", note: Note | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): X a non-empty finite 2-D float64 array, y int64 labels >= 0, from .npz (arrays X and y, any
    case) or .npy/.csv (the last column holds the labels). ValueError naming the file otherwise."""
    where = file_label(path, role)
    if Path(path).suffix.lower() == ".npz":
        def pick(names: list[str]) -> list[str]:
            lower = {n.lower(): n for n in names}
            if "x" not in lower or "y" not in lower:
                raise ValueError(f"{where}: a labelled .npz needs arrays X and y, it holds {names}")
            return [lower["x"], lower["y"]]

        x, y = _read_npz(path, where, pick).values()
        x = numeric(x, where, "X")
        if x.ndim == 0:
            raise ValueError(f"{where}: X must be an array of samples (samples, features), got a scalar")
        x = check_filled(x, where, "X")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            hint = " (one-hot? store y.argmax(1))" if y.ndim == 2 else ""
            raise ValueError(f"{where}: y must be 1-D, one label per sample, got shape {y.shape}{hint}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{where}: X has {x.shape[0]} samples but y has {y.shape[0]} labels")
        return x.astype(np.float64), _labels(y, where, "y")
    arr = numeric(_read(path, None, where, note), where, "the array")
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"{where}: a labelled .npy/.csv needs feature columns and a last label column, got shape "
                         f"{arr.shape}")
    x = check_filled(arr[:, :-1], where, "features")
    return x.astype(np.float64), _labels(arr[:, -1], where, "the last column")


def check_samples(items: Sequence[tuple[str, np.ndarray]], minimum: int = MIN_PAD_SAMPLES) -> None:
    """Every array has at least ``minimum`` samples and the width of the first: ``items`` are (where, X)."""
    first, x0 = items[0]
    for where, x in items:
        if x.shape[1] != x0.shape[1]:
            raise ValueError(f"{where}: {x.shape[1]} features per sample, but {first} has {x0.shape[1]}; every "
                             "file must have the same features")
        if x.shape[0] < minimum:
            raise ValueError(f"{where}: {x.shape[0]} samples; at least {minimum} are needed")


def check_distinct(paths: Sequence[str], what: str) -> None:
    """No file given twice (by the same or another spelling of its path)."""
    seen: dict[str, str] = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            same = "given twice" if seen[real] == path else f"the same file as {seen[real]}"
            raise ValueError(f"{what} {path} is {same}: give each candidate once")
        seen[real] = path


# ---------------------------------------------------------------------------------------- reading


def _read(path: str, key: str | None, where: str, note: Note | None) -> np.ndarray:
    suffix = Path(path).suffix.lower()
    check_file(path, where)
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"{where}: not a readable .npy file of numbers ({_one_line(e)})") from None
    if suffix == ".npz":
        def pick(names: list[str]) -> list[str]:
            if not names:
                raise ValueError(f"{where}: the .npz holds no arrays; expected one array of features")
            if key is None and len(names) != 1:
                raise ValueError(f"{where} holds {len(names)} arrays {names}: choose one with --key")
            if key is not None and key not in names:
                raise ValueError(f"{where} has no array {key!r} (--key); it holds {names}")
            return [key if key is not None else names[0]]

        return next(iter(_read_npz(path, where, pick).values()))
    if suffix == ".csv":
        return _read_csv(path, where, note)
    raise ValueError(f"{where}: expected {_FEATURE_FILES}, got {suffix or 'no extension'!r}")


def check_file(path: str, where: str) -> None:
    if not Path(path).is_file():
        raise ValueError(f"{where}: no such file" if not Path(path).exists() else f"{where}: not a file")


def _read_npz(path: str, where: str, pick: Callable[[list[str]], list[str]]) -> dict[str, np.ndarray]:
    """The arrays of a .npz that ``pick`` chooses from its names (only those are read)."""
    check_file(path, where)
    problems = (OSError, ValueError, EOFError, zipfile.BadZipFile)
    try:
        archive = np.load(path, allow_pickle=False)
        names = list(archive.files)
    except problems as e:
        raise ValueError(f"{where}: not a readable .npz file of numeric arrays ({_one_line(e)})") from None
    with archive:
        chosen = pick(names)
        try:
            return {name: archive[name] for name in chosen}
        except problems as e:
            raise ValueError(f"{where}: not a readable .npz file of numeric arrays ({_one_line(e)})") from None


def _read_csv(path: str, where: str, note: Note | None) -> np.ndarray:
    """Comma-separated numbers; a first row that does not parse as numbers while the rest do is a header."""
    try:
        first = _first_row(path)
        if first is None:
            raise ValueError(f"{where}: the file is empty; expected comma-separated numbers, one sample per row")
        index, line = first
        header = any(v.strip() and not _is_number(v) for v in line.split(","))  # an empty cell: a missing value
        skip = index + 1 if header else 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": reported below
            try:
                arr = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip, encoding="utf-8-sig")
            except ValueError:
                raise ValueError(f"{where}: {_csv_problem(path, skip)}; expected comma-separated numbers, one "
                                 "sample per row (a first row of column names is skipped)") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where}: not a text file; expected comma-separated numbers, one sample per row") from None
    except OSError as e:
        raise ValueError(f"{where}: cannot be read ({_one_line(e)})") from None
    if header:
        if arr.size == 0:
            raise ValueError(f"{where}: a header row and no samples; expected comma-separated numbers, one sample "
                             "per row")
        (note or stderr_note("pytl"))(f"{where}: its first row {_short(line)} is not numbers: skipped as a header")
    return arr


def _data_lines(path: str) -> Iterator[tuple[int, str]]:
    """(0-based line index, text without its comment) for every line that holds data, as np.loadtxt sees them."""
    with open(path, encoding="utf-8-sig") as f:
        for i, raw in enumerate(f):
            text = raw.split("#", 1)[0].strip()
            if text:
                yield i, text


def _first_row(path: str) -> tuple[int, str] | None:
    for row in _data_lines(path):
        return row
    return None


def _csv_problem(path: str, skip: int) -> str:
    """Where and why np.loadtxt failed, 1-based lines and columns."""
    width = None
    for i, text in _data_lines(path):
        if i < skip:
            continue
        values = text.split(",")
        for col, v in enumerate(values, 1):
            if not _is_number(v):
                return f"line {i + 1}, column {col}: {_short(v.strip())} is not a number"
        if width is None:
            width = (i, len(values))
        elif len(values) != width[1]:
            return f"line {i + 1} has {_values(len(values))}, line {width[0] + 1} has {width[1]}"
    return "could not read it as numbers"


def _values(n: int) -> str:
    return f"{n} value" + ("" if n == 1 else "s")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return "_" not in text  # float() reads "1_000", np.loadtxt does not


# ---------------------------------------------------------------------------------------- checking


def numeric(arr: np.ndarray, where: str, what: str) -> np.ndarray:
    if arr.dtype.kind in "USO":
        raise ValueError(f"{where}: expected real numbers, {what} holds {_kind(arr)} (dtype {arr.dtype})")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{where}: expected real numbers, {what} has dtype {arr.dtype}")
    return arr


def check_filled(x: np.ndarray, where: str, what: str) -> np.ndarray:
    """``x`` as (samples, features): at least one of each, all finite."""
    if x.shape[0] == 0:
        raise ValueError(f"{where}: no samples ({what} of shape {x.shape}); expected one sample per row")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] == 0:
        raise ValueError(f"{where}: no features ({what} of shape {x.shape})")
    bad = ~np.isfinite(flat).all(1)
    if bad.any():
        raise ValueError(f"{where}: {what} contain NaN or infinite values in {int(bad.sum())} of {x.shape[0]} "
                         f"samples (the first in row {int(np.argmax(bad))}, 0-based); clean or impute them first")
    return flat


def _labels(y: np.ndarray, where: str, what: str) -> np.ndarray:
    """``what`` ("y", "the last column") as int64 class indices >= 0."""
    expected = f"{where}: labels must be non-negative integers (class indices), one per row"
    if y.dtype.kind in "USO":
        raise ValueError(f"{expected}; {what} holds {_kind(y)} (dtype {y.dtype}): map them to 0..C-1 first, e.g. "
                         "np.unique(y, return_inverse=True)[1]")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{expected}; {what} has dtype {y.dtype}")
    odd = (~np.isfinite(y) | (y != np.round(y)) | (y < 0)) if y.dtype.kind == "f" else (y < 0)
    if odd.any():
        first = int(np.argmax(odd))
        raise ValueError(f"{expected}; {what} holds {y[first].item():g} in row {first} (0-based)")
    return y.astype(np.int64)


def _kind(arr: np.ndarray) -> str:
    return "text" if arr.dtype.kind in "US" else "Python objects"


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    # numpy's "pickled data ... load it unsafely" is also what any non-NumPy file gets: not advice to follow
    return "not a NumPy file, or it holds Python objects" if "pickle" in text else text
