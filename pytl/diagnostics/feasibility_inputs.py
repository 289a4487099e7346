"""The inputs of :func:`pytl.transfer_feasibility` and :func:`pytl.rank_sources`, converted and checked before
anything is computed (rank_sources checks every candidate first), and taken through ``features=``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pytl import _inputs as inp
from pytl._checks import check_choice, check_int, check_optional_int
from pytl._samples import check_same_features
from pytl.diagnostics.domain_classifier import CLASSIFIERS

__all__ = ["as_source", "as_target", "check_options", "featurize_source", "featurize_target"]


def check_options(features: Any, classifier: str, num_classes: Any, seed: Any) -> tuple[int | None, int]:
    """The settings of :func:`transfer_feasibility`; returns (num_classes, seed)."""
    check_choice(classifier, "classifier", CLASSIFIERS)
    if features is not None and not callable(features):
        raise TypeError(f"features must be a callable or an nn.Module (e.g. model.embed), got {type(features).__name__}")
    return check_optional_int(num_classes, "num_classes", 2), check_int(seed, "seed", 0)


def _refuse_loader(data: Any, name: str) -> None:
    if isinstance(data, DataLoader):
        raise TypeError(f"{name}: transfer_feasibility takes arrays or tensors (it trains full-batch "
                        "classifiers), not a DataLoader; pass (X, y) or X, e.g. a subsample of a few thousand rows")


def as_source(source: Any, name: str) -> tuple[Tensor, Tensor]:
    """A labelled source (X, y), converted, with enough rows for its two halves."""
    _refuse_loader(source, name)
    xs, ys = inp.as_labeled(source, name)
    if xs.shape[0] < 4:
        raise ValueError(f"{name} needs at least 4 samples (half to train on, half to test on), got {xs.shape[0]}")
    return xs, ys.long()


def as_target(target_unlabeled: Any, target_labeled: Any) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """The unlabelled target X and the optional labelled (X, y), converted, with enough rows."""
    _refuse_loader(target_unlabeled, "target_unlabeled")
    _refuse_loader(target_labeled, "target_labeled")
    xt = inp.as_features(target_unlabeled, "target_unlabeled")
    if xt.shape[0] < 4:
        raise ValueError(f"target_unlabeled needs at least 4 samples, got {xt.shape[0]}")
    if target_labeled is None:
        return xt, None
    xl, yl = inp.as_labeled(target_labeled, "target_labeled")
    if yl.numel() < 4:
        raise ValueError(f"target_labeled needs at least 4 labelled samples (two folds of two), got {yl.numel()}")
    return xt, (xl, yl.long())


def featurize_target(xt: Tensor, labeled: tuple[Tensor, Tensor] | None, features: Any
                     ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    xt = _apply_features(xt, features, "target_unlabeled")
    if labeled is None:
        return xt, None
    return xt, (_apply_features(labeled[0], features, "target_labeled"), labeled[1])


def featurize_source(xs: Tensor, features: Any, name: str, xt: Tensor, labeled: tuple[Tensor, Tensor] | None) -> Tensor:
    """The source through ``features``, checked against the (featurized) target's width."""
    xs = _apply_features(xs, features, name)
    check_same_features(xs, xt, (name, "target_unlabeled"))
    if labeled is not None:
        check_same_features(xs, labeled[0], (name, "target_labeled"))
    return xs


def _apply_features(x: Tensor, features: Any, name: str) -> Tensor:
    """The rows of x through ``features`` (a callable or nn.Module, in eval mode, no gradient), flattened."""
    if features is None:
        return x.flatten(1).double()
    module = features if isinstance(features, nn.Module) else None
    mode = module.training if module is not None else None
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            if module is not None:
                p = next(module.parameters(), None)
                if p is not None:
                    x = x.to(device=p.device, dtype=p.dtype)
            out = torch.cat([torch.as_tensor(features(xb)) for xb in x.split(4096)])
    finally:
        if module is not None:
            module.train(mode)
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"features returned {out.shape[0]} rows for {x.shape[0]} rows of {name}")
    out = out.detach().cpu().flatten(1).double()
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"features of {name} contain NaN or inf")
    return out
