"""Input checking and conversion shared by the trainer and compare_strategies.

Everything a user passes (numpy arrays, tensors, nested lists, DataLoaders) is checked here, before
any training starts, so that a wrong shape, a NaN or a bad label is reported by argument name
instead of surfacing as a cryptic error (or a silent wrong result) deep inside an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pytl._checks import DataWarning, warn_user

ArrayLike = Union[np.ndarray, Tensor, Sequence[Any]]
LabeledData = Union[tuple[ArrayLike, ArrayLike], DataLoader]
UnlabeledData = Union[ArrayLike, DataLoader]
PEEK_SEED = 0  # the global seed under which first_batch draws a shuffling DataLoader's first batch


def to_tensor(value: Any, name: str) -> Tensor:
    """An array, tensor (detached) or nested list of real numbers as a tensor; TypeError naming ``name`` else."""
    if isinstance(value, Tensor):
        if value.is_meta:  # shapes only: every check and computation below needs the values
            raise ValueError(f"{name} is a tensor on the meta device, which holds no values; pass real data "
                             "(a CPU or CUDA tensor, or an array)")
        return value.detach()
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise TypeError(f"{name} must be a numpy array, a torch.Tensor or a nested list of numbers, got "
                        f"{type(value).__name__}")
    try:
        arr = np.asarray(value)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{name} could not be converted to an array: {e}") from None
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise TypeError(f"{name} must hold numbers, got an array of dtype {arr.dtype}")
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} must be real-valued, got complex dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def as_features(value: Any, name: str, allow_empty: bool = False) -> Tensor:
    """Samples × features (or samples × any shape), non-empty, finite; floats kept, ints/bools cast.
    allow_empty: no rows is fine (a rank's shard: the global samples are checked after the shape exchange)."""
    x = to_tensor(value, name)
    if x.is_complex():
        raise TypeError(f"{name} must be real-valued, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(
            f"{name} must be at least 2-D (samples, features), got shape {tuple(x.shape)}"
            + ("; one sample of several features: x.reshape(1, -1); several samples of one feature: "
               "x.reshape(-1, 1)" if x.dim() == 1 else "")
        )
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: it has no samples (shape {tuple(x.shape)})")
    if any(s == 0 for s in x.shape[1:]):
        raise ValueError(f"{name} has no features (shape {tuple(x.shape)})")
    if not x.dtype.is_floating_point:
        x = x.to(torch.float32)
    if not _all_finite(x):
        bad = ~torch.isfinite(x)
        n_bad = int(bad.reshape(x.shape[0], -1).any(1).sum())
        kind = "NaN" if bool(torch.isnan(x).any()) else "infinite values"
        raise ValueError(f"{name} contains {kind} in {n_bad} of its {x.shape[0]} samples; clean or impute them first")
    return x


#: elements per finiteness check: torch.isfinite builds temporaries the size of its input (|x| among them), so
#: 10^7 rows of 64 floats are checked a slice at a time instead of with gigabytes of temporaries
FINITE_CHECK_ELEMENTS = 1 << 22


def _all_finite(x: Tensor) -> bool:
    if x.numel() == 0:
        return True
    flat = x.reshape(x.shape[0], -1)
    step = max(1, FINITE_CHECK_ELEMENTS // flat.shape[1])
    return all(bool(torch.isfinite(flat[r0:r0 + step]).all()) for r0 in range(0, flat.shape[0], step))


def as_labels(value: Any, name: str, num_samples: int | None = None) -> Tensor:
    """1-D int64 class indices >= 0; integral floats (1.0) and bools are accepted, 0.5 is not."""
    y = to_tensor(value, name)
    if y.dim() != 1:
        hint = " (one-hot labels? pass y.argmax(1))" if y.dim() == 2 and y.shape[1] > 1 else ""
        raise ValueError(f"{name} must be 1-D class indices, got shape {tuple(y.shape)}{hint}")
    if y.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has no labels")
    if num_samples is not None and y.shape[0] != num_samples:
        raise ValueError(f"{name} has {y.shape[0]} labels for {num_samples} samples")
    if y.dtype == torch.bool:
        y = y.to(torch.int64)
    elif y.dtype.is_floating_point:
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"{name} contains NaN or infinite labels")
        if not bool((y == y.round()).all()):
            bad = y[y != y.round()][:3].tolist()
            raise ValueError(f"{name} must be integer class indices, got non-integer values such as {bad}")
        y = y.to(torch.int64)
    elif y.dtype.is_complex:
        raise TypeError(f"{name} must be integer class indices, got {y.dtype}")
    else:
        y = y.to(torch.int64)
    if bool((y < 0).any()):
        raise ValueError(f"{name} must be class indices >= 0, got minimum {int(y.min())}")
    return y


def check_label_range(y: Tensor, num_classes: int, name: str) -> None:
    top = int(y.max())
    if top >= num_classes:
        raise ValueError(
            f"{name} has label {top}, out of range for {num_classes} classes (labels must be 0..{num_classes - 1})"
        )


def check_label_space(
    source_labels: Any,
    target_labels: Any,
    num_classes: int | None = None,
    *,
    source_name: str = "source[1] (y)",
    target_name: str = "target_labeled[1] (y)",
    single_target_class: bool = False,
) -> None:
    """The label space of a transfer problem, checked before anything trains on it.

    source_labels, target_labels: 1-D class indices (anything :func:`as_labels` takes; either may be None),
    the whole labelled sets (not a DataLoader's first batch); source_labels may also be a mapping
    {name: labels} of candidate sources, each checked in turn and each problem warned once for all of them.
    num_classes: the declared number of classes, or None when the caller infers it as 1 + the largest label.

    Refused (ValueError naming the argument), because every number computed from such labels is wrong or
    meaningless: a label >= num_classes; labels of a single class, in the source or in the target (a
    classifier trained on them is a constant, and one tested on them scores a vacuous 0 error: typically
    the first rows of data sorted by class); and, with num_classes inferred, source labels without a 0
    (1-based labels 1..K: an empty class 0, and every class shifted by one against 0-based target labels;
    num_classes= declares a source that simply lacks class 0). Warned once (warn_user), because it can be
    a legitimate partial label space: target classes absent from the source labels (nothing learnt from the
    source predicts them; only target labels can teach them). ``single_target_class=True`` lets target labels
    of one class through (the trainer fine-tunes on what it gets and warns about the classes it lacks)."""
    sources = dict(source_labels) if isinstance(source_labels, Mapping) else (
        {} if source_labels is None else {source_name: source_labels})
    ys = {name: as_labels(y, name) for name, y in sources.items()}
    yt = None if target_labels is None else as_labels(target_labels, target_name)
    named = list(ys.items()) + ([] if yt is None else [(target_name, yt)])
    if num_classes is not None:
        for name, y in named:
            check_label_range(y, num_classes, name)
    for name, y in named:
        classes = y.unique()
        if classes.numel() < 2 and not (single_target_class and y is yt):
            raise ValueError(
                f"{name} holds a single class ({int(classes[0])}) in its {y.numel()} labels; a classifier needs "
                "at least two classes to learn from or to be tested on (data sorted by class? draw a random "
                "subset instead of the first rows)")
    if num_classes is None:
        for name, y in ys.items():
            if int(y.min()) > 0:
                raise ValueError(
                    f"{name} has no label 0 (its labels run {int(y.min())}..{int(y.max())}): class indices start "
                    "at 0, and 1-based labels add an empty class 0 and shift every class by one against 0-based "
                    "labels; subtract 1 from them, or pass num_classes= if this source simply lacks class 0")
    if yt is None or not ys:
        return
    target_classes = set(yt.unique().tolist())
    lacking = {name: sorted(target_classes - set(y.unique().tolist())) for name, y in ys.items()}
    lacking = {name: missing for name, missing in lacking.items() if missing}
    if lacking:
        which = "; ".join(f"{name} lacks class(es) {missing}" for name, missing in lacking.items())
        warn_user(f"{target_name} has classes absent from the source labels ({which}): nothing learnt from the "
                  "source predicts them, only the target labels can teach them; if the two label sets are coded "
                  "differently, map them to one coding first", DataWarning)


def as_labeled(data: Any, name: str) -> tuple[Tensor, Tensor] | DataLoader:
    """(X, y) pair, converted and checked, or a DataLoader passed through."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, dict) or not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a pair (X, y) or a DataLoader yielding (x, y) batches, got "
                        f"{type(data).__name__}" + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
    x = as_features(data[0], f"{name}[0] (X)")
    y = as_labels(data[1], f"{name}[1] (y)", num_samples=x.shape[0])
    return x, y


def as_unlabeled(data: Any, name: str) -> Tensor | DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, tuple) and len(data) == 2 and _looks_like_pair(data):
        raise TypeError(f"{name} must be unlabelled features X (an array), not a pair (X, y); pass X only")
    return as_features(data, name)


def _looks_like_pair(data: tuple[Any, Any]) -> bool:
    """(X, y) with X at least 2-D and y 1-D of the same length."""
    try:
        x, y = np.shape(data[0]), np.shape(data[1])
    except ValueError:  # ragged
        return False
    return len(x) >= 2 and len(y) == 1 and x[0] == y[0]


def split_batch(batch: Any, labeled: bool, name: str) -> tuple[Tensor, Tensor | None]:
    """A DataLoader batch as (x, y) (y None for unlabelled data)."""
    if isinstance(batch, Tensor):
        if labeled:
            raise TypeError(f"{name} must yield (x, y) batches, got a single tensor")
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        if labeled:
            if len(batch) < 2 or not isinstance(batch[1], Tensor):
                raise TypeError(f"{name} must yield (x, y) batches, got a sequence of length {len(batch)}")
            return batch[0], batch[1]
        return batch[0], None
    if isinstance(batch, dict):
        raise TypeError(f"{name} yields dicts; wrap it so that it yields (x, y) tuples")
    raise TypeError(f"{name} must yield tensors or (x, y) tuples of tensors, got {type(batch).__name__}")


def first_batch(loader: DataLoader, labeled: bool, name: str) -> tuple[Tensor, Tensor | None]:
    """A look at a DataLoader's first batch (shapes, labels, input statistics). A shuffling loader without
    a generator of its own draws its order from the global RNG: the look draws it from a fixed seed inside
    a fork, so that it is the same batch in every run and the caller's RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PEEK_SEED)
        it: Iterator = iter(loader)
        try:
            batch = next(it)
        except StopIteration:
            raise ValueError(f"{name} is empty: the DataLoader yields no batches") from None
    return split_batch(batch, labeled, name)


def sample_shape(data: Tensor | tuple[Tensor, Tensor] | DataLoader, labeled: bool, name: str) -> tuple[int, ...]:
    if isinstance(data, DataLoader):
        x, _ = first_batch(data, labeled, name)
        return tuple(x.shape[1:])
    x = data[0] if isinstance(data, tuple) else data
    return tuple(x.shape[1:])


def num_samples(data: Tensor | tuple[Tensor, Tensor] | DataLoader) -> int | None:
    if isinstance(data, DataLoader):
        try:
            return len(data.dataset)  # type: ignore[arg-type]
        except TypeError:
            return None
    return int((data[0] if isinstance(data, tuple) else data).shape[0])


def check_batch(x: Tensor, y: Tensor | None, num_classes: int, shape: tuple[int, ...], name: str) -> tuple[Tensor, Tensor | None]:
    """Per-batch checks for DataLoader input (arrays are checked once, up front)."""
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"{name} yielded a batch of shape {tuple(x.shape)}; expected samples of shape {shape}")
    if not x.dtype.is_floating_point:
        x = x.to(torch.float32)
    if y is not None:
        y = as_labels(y, f"labels from {name}")
        check_label_range(y, num_classes, f"labels from {name}")
    return x, y


def format_shape(shape: tuple[int, ...]) -> str:
    return str(shape[0]) if len(shape) == 1 else "×".join(str(s) for s in shape)


def prod(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))
