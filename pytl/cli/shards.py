"""The part of a data file that this rank reads when ``divergence`` or ``feasibility`` runs under torchrun.

A path with ``{rank}`` names one file per rank (``src-{rank}.npy``: rank r reads src-r.npy). Any other path is
one file that the ranks split into contiguous row ranges, as even as possible: a .npy is memory-mapped and each
rank reads only its rows; a .npz or .csv is read whole and sliced (their formats cannot be read by rows).
"""

from __future__ import annotations

import numpy as np

from pytl.cli import files
from pytl.cli.files import Note

__all__ = ["SUBSAMPLE_ROWS", "load_feature_shard", "load_labeled_shard"]

#: rows per domain that ``feasibility`` under torchrun gathers from the ranks for its classifiers (the proxy
#: A-distance of ``divergence`` likewise); the MMD test of ``divergence`` reads every row
SUBSAMPLE_ROWS = 20_000


def _rows(total: int, rank: int, world: int) -> slice:
    bounds = np.linspace(0, total, world + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def load_feature_shard(path: str, key: str | None, *, role: str, note: Note, rank: int, world: int) -> np.ndarray:
    """This rank's rows of a features file (module docstring), checked like files.load_features."""
    if "{rank}" in path:
        return files.load_features(path.format(rank=rank), key, role=role, note=note)
    if path.lower().endswith(".npy"):
        where = files.file_label(path, role)
        files.check_file(path, where)
        try:
            whole = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"{where}: not a readable .npy file of numbers ({e})") from None
        if whole.ndim not in (1, 2):
            raise ValueError(f"{where}: expected a 2-D array (samples, features), got shape {whole.shape}")
        part = np.asarray(whole[_rows(whole.shape[0], rank, world)])
        part = files.numeric(part, where, "the array")
        return files.check_filled(part[:, None] if part.ndim == 1 else part, where, "features").astype(np.float64)
    whole = files.load_features(path, key, role=role, note=note)
    return whole[_rows(whole.shape[0], rank, world)]


def load_labeled_shard(path: str, *, role: str, note: Note, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's rows of a labelled file (X and y), checked like files.load_labeled."""
    if "{rank}" in path:
        return files.load_labeled(path.format(rank=rank), role=role, note=note)
    x, y = files.load_labeled(path, role=role, note=note)
    rows = _rows(x.shape[0], rank, world)
    return x[rows], y[rows]
