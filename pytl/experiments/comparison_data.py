"""The inputs of a comparison: arrays, tensors, DataLoaders and map-style Datasets converted to one form
(``ComparisonData``), the held-out source rows of label-free ranking, and the initial model every run
starts from (also select_lambda's)."""

from __future__ import annotations

import copy
import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from pytl import _inputs as inp
from pytl._checks import DataWarning, check_float, check_int
from pytl.experiments.folds import split_source
from pytl.models import Standardize, default_model

__all__ = ["LOADER_ROWS", "ComparisonData", "check_data", "first_rows", "hold_out_source", "initial_model"]

LOADER_ROWS = 1024  # rows a DataLoader lends to input statistics and the embedding MMD²


class ComparisonData(NamedTuple):
    """The comparison's checked inputs: tensors or DataLoaders, target labels as tensors, the class count."""

    source: tuple[Tensor, Tensor] | DataLoader
    target_unlabeled: Tensor | DataLoader
    test: tuple[Tensor, Tensor] | DataLoader | None
    labeled: tuple[Tensor, Tensor] | None
    num_classes: int


def as_loader_if_dataset(value: Any, name: str, cfg: dict[str, Any], seed: int, shuffle: bool) -> Any:
    """A map-style Dataset batched as the trainer would batch arrays; anything else unchanged."""
    if isinstance(value, IterableDataset):
        raise TypeError(f"{name} is an IterableDataset; wrap it in a DataLoader")
    if isinstance(value, Dataset):
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(value, batch_size=cfg["batch_size"], shuffle=shuffle, generator=generator)
    return value


def gather_labeled(loader: DataLoader, name: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Every (x, y) of a DataLoader, concatenated: the few target labels fit in memory. A shuffling loader
    draws its order from the global RNG, here seeded by ``seed`` inside a fork (the caller's RNG untouched),
    so that the same seed gives the same order, the same folds and the same estimates (a loader with a
    ``generator`` of its own follows that generator)."""
    xs, ys = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in loader:
            x, y = inp.split_batch(batch, True, name)
            xs.append(x)
            ys.append(y)
    if not xs:
        raise ValueError(f"{name} is empty: the DataLoader yields no batches")
    return inp.as_labeled((torch.cat(xs), torch.cat(ys)), name)  # type: ignore[return-value]


def check_data(source: Any, target_unlabeled: Any, target_test: Any, target_labeled: Any, cfg: dict[str, Any],
                seed: int) -> ComparisonData:
    """Converts the inputs: arrays to checked tensors, map-style Datasets to DataLoaders, the target labels
    into memory. Shapes, label ranges and label counts are then checked by the trainer (check_inputs)."""
    source = inp.as_labeled(as_loader_if_dataset(source, "source", cfg, seed, True), "source")
    xu = inp.as_unlabeled(as_loader_if_dataset(target_unlabeled, "target_unlabeled", cfg, seed, True),
                          "target_unlabeled")
    test = None
    if target_test is not None:
        test = inp.as_labeled(as_loader_if_dataset(target_test, "target_test", cfg, seed, False), "target_test")
    labeled = None
    if target_labeled is not None:
        labeled = inp.as_labeled(as_loader_if_dataset(target_labeled, "target_labeled", cfg, seed, False),
                                 "target_labeled")
        if isinstance(labeled, DataLoader):
            labeled = gather_labeled(labeled, "target_labeled", seed)
    ref = inp.sample_shape(source, True, "source")
    for name, d, lab in (("target_unlabeled", xu, False), ("target_test", test, True), ("target_labeled", labeled, True)):
        shape = None if d is None else inp.sample_shape(d, lab, name)
        if shape is not None and shape != ref:
            raise ValueError(f"feature size mismatch: {name} has samples of shape {inp.format_shape(shape)} but source "
                             f"has {inp.format_shape(ref)}; both domains must share a feature space")
    num_classes = cfg["num_classes"]
    # the label sets against each other, before the classes are inferred from them (1-based labels, ...); its
    # warnings come once, from the trainer's checks that compare_strategies runs next
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        inp.check_label_space(source[1] if isinstance(source, tuple) else None,
                              None if labeled is None else labeled[1], num_classes, single_target_class=True)
    if num_classes is None:
        from pytl.train.prepare import infer_num_classes  # the trainer's rule: 1 + the largest label seen

        num_classes = infer_num_classes(source, labeled, {} if test is None else {"target_test": test})
    return ComparisonData(source, xu, test, labeled, check_int(num_classes, "num_classes", 2))


def hold_out_source(data: ComparisonData, source_validation: Any, seed: int) -> tuple[ComparisonData, tuple[Tensor, Tensor]]:
    """Without target labels: the source rows the label-free criteria score on, and the data without them.
    ``source_validation``: a fraction of an array source (stratified, seeded), or a labelled set (X, y)."""
    if isinstance(source_validation, (tuple, list)):
        held = inp.as_labeled(source_validation, "source_validation")
        assert isinstance(held, tuple)
        return data, held
    if isinstance(data.source, DataLoader):
        raise ValueError("without target labels the strategies are ranked on held-out source samples, and a "
                         "DataLoader source cannot be split from outside: pass source_validation=(X, y), labelled "
                         "source samples that are not in the loader")
    fraction = check_float(source_validation, "source_validation", 0.0, 1.0, strict_min=True, strict_max=True)
    train, val = split_source(data.source[1], fraction, seed)
    xs, ys = data.source
    return data._replace(source=(xs[train], ys[train])), (xs[val], ys[val])


def first_rows(data: Any, n: int | None, labeled: bool) -> Tensor:
    """The first ``n`` feature rows of a tensor or an (X, y) pair (all of them for None), or of a
    DataLoader (in its order, drawn under a fixed seed; LOADER_ROWS for None)."""
    if isinstance(data, tuple):
        data = data[0]
    if isinstance(data, Tensor):
        return data if n is None else data[:n]
    n = LOADER_ROWS if n is None else n
    rows, have = [], 0
    with torch.random.fork_rng(devices=[]):  # a shuffling loader's order must not depend on the caller's RNG
        torch.manual_seed(inp.PEEK_SEED)
        for batch in data:
            x, _ = inp.split_batch(batch, labeled, "a DataLoader")
            rows.append(x)
            have += x.shape[0]
            if have >= n:
                break
    return torch.cat(rows)[:n]


def initial_model(model: nn.Module | None, source: Any, target_unlabeled: Any, num_classes: int,
                  cfg: dict[str, Any], seed: int) -> nn.Module:
    """The weights every run starts from: a copy of ``model``, or the default MLP of ``cfg`` seeded with
    ``seed`` (inputs standardised by the pooled statistics of the source and target inputs: of all the rows
    of an array, of the first rows of a DataLoader)."""
    if model is not None:
        return copy.deepcopy(model)
    xs = first_rows(source, None, True)
    stats = None
    if cfg["standardize"]:
        xu = first_rows(target_unlabeled, None, False)
        stats = Standardize.fit(*(x if x.is_floating_point() else x.float() for x in (xs, xu)))
    return default_model(inp.prod(tuple(xs.shape[1:])), num_classes, cfg["hidden_sizes"], cfg["activation"],
                         cfg["dropout"], cfg["batch_norm"], standardize=stats, seed=seed)
