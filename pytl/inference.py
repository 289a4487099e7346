"""What many layers need from a trained model, below all of them: eval mode, batched predictions,
embeddings and logits on whole data sets, probabilities and entropies.

The trainer (pytl.train), the diagnostics (label-shift estimation), the label-free criteria
(pytl.validation) and the experiments all read models through these functions, so this module imports
nothing of pytl but the input conventions (pytl._inputs) and the shared checks.

``read``/``model_outputs`` give a model's outputs on a labelled (X, y) pair or an unlabelled X (arrays,
tensors, lists, or DataLoaders), computed once, in eval mode, without gradients, batch by batch; everything
computed on them afterwards is float64 on the CPU, so a score does not depend on the model's dtype or
device beyond its forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pytl import _inputs as inp
from pytl._checks import check_choice, check_int

__all__ = ["EVAL_BATCH", "FEATURES", "Outputs", "check_model", "embed_all", "entropies", "eval_mode", "model_outputs",
           "param_dtype", "predict_proba", "probabilities", "read"]

EVAL_BATCH = 4096  # rows per forward pass when evaluating arrays

#: where the density-ratio criteria (IWV, DEV) look for the domain shift: the model's embedding
#: (``model.embed(x)``, as DEV does) or the raw inputs, flattened (as Sugiyama et al.'s IWV does)
FEATURES = ("embedding", "input")

@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, each submodule's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode

def param_dtype(model: nn.Module | None) -> torch.dtype:
    """The model's floating-point dtype (float32 for no model or no floating parameter)."""
    p = next(model.parameters(), None) if model is not None else None
    return p.dtype if p is not None and p.dtype.is_floating_point else torch.float32


@torch.no_grad()
def predict_proba(model: nn.Module, x: Tensor, device: torch.device, batch_size: int = EVAL_BATCH) -> Tensor:
    """Class probabilities (N, C) on the CPU, computed in eval mode."""
    with eval_mode(model):
        out = [F.softmax(model(xb.to(device)).float(), dim=1).cpu() for xb in x.split(batch_size)]
    return torch.cat(out)


@torch.no_grad()
def embed_all(model: nn.Module, x: Tensor, device: torch.device) -> Tensor:
    """``model.embed`` of every row, flattened, in eval mode."""
    with eval_mode(model):
        return torch.cat([model.embed(xb.to(device)).flatten(1) for xb in x.split(EVAL_BATCH)])


@dataclass(frozen=True)
class Outputs:
    """A model's outputs on one data set, float64 on the CPU: ``logits`` (n, C), ``labels`` (n,) int64
    for labelled data (else None), ``features`` (n, F) when asked for (else None)."""

    logits: Tensor
    labels: Tensor | None
    features: Tensor | None

    @property
    def num_samples(self) -> int:
        return int(self.logits.shape[0])


def probabilities(logits: Tensor) -> Tensor:
    """softmax(logits) in float64."""
    return torch.softmax(logits.double(), dim=1)


def entropies(logits: Tensor) -> Tensor:
    """The Shannon entropy (nats) of each row's softmax, −Σ_c p_c log p_c, in float64 from log-softmax."""
    logp = torch.log_softmax(logits.double(), dim=1)
    return -(logp.exp() * logp).sum(1)


def check_model(model: Any, features: str | None, criterion: str) -> None:
    """An nn.Module; one with ``embed(x)`` when the criterion reads embeddings."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if features == "embedding" and not callable(getattr(model, "embed", None)):
        raise TypeError(f"criterion {criterion!r} with features='embedding' needs a model with embed(x) (a pytl "
                        f"TransferModel), got {type(model).__name__}; pass features='input' to estimate the density "
                        "ratio on the inputs instead")


def read(model: Any, source_val: Any, target_unlabeled: Any, *, criterion: str, need_source: bool,
         features: str | None = None, batch_size: int = EVAL_BATCH) -> tuple[Outputs | None, Outputs]:
    """Checks everything a criterion takes, then the model's outputs on ``source_val`` (None when the
    criterion does not need it) and on ``target_unlabeled``.

    need_source: the criterion reads the labelled source validation set (IWV, DEV); the others take
    ``source_val=None`` and, when it is given, only check its sample shape against the target's.
    features: None, or one of ``FEATURES`` (then ``Outputs.features`` is filled for both sets)."""
    if features is not None:
        check_choice(features, "features", FEATURES)
    batch_size = check_int(batch_size, "batch_size", 1)
    check_model(model, features, criterion)
    if source_val is None and need_source:
        raise ValueError(f"criterion {criterion!r} needs source_val, a labelled (X, y) pair of source samples the "
                         "model was not trained on")
    tgt = inp.as_unlabeled(target_unlabeled, "target_unlabeled")
    t_shape = inp.sample_shape(tgt, False, "target_unlabeled")
    src = None
    if source_val is not None:
        src = inp.as_labeled(source_val, "source_val")
        s_shape = inp.sample_shape(src, True, "source_val")
        if s_shape != t_shape:
            raise ValueError(f"feature shape mismatch: source_val has samples of shape {inp.format_shape(s_shape)} but "
                             f"target_unlabeled has {inp.format_shape(t_shape)}; both domains must share a feature "
                             "space")
    t_out = model_outputs(model, tgt, labeled=False, features=features, batch_size=batch_size,
                          name="target_unlabeled", shape=t_shape)
    if not need_source:
        return None, t_out
    s_out = model_outputs(model, src, labeled=True, features=features, batch_size=batch_size, name="source_val",
                          shape=t_shape)
    if s_out.logits.shape[1] != t_out.logits.shape[1]:  # a model whose output width depends on the input
        raise ValueError(f"the model gives {s_out.logits.shape[1]} logits on source_val but "
                         f"{t_out.logits.shape[1]} on target_unlabeled")
    return s_out, t_out


@torch.no_grad()
def model_outputs(model: nn.Module, data: Tensor | tuple[Tensor, Tensor] | DataLoader, *, labeled: bool,
                  features: str | None, batch_size: int, name: str, shape: tuple[int, ...]) -> Outputs:
    """Logits (and features) of every sample of ``data`` in eval mode (each submodule's mode restored
    after), batch by batch on the model's device and dtype; float64 on the CPU."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = param_dtype(model)
    logits, labels, feats = [], [], []
    with eval_mode(model):
        for xb, yb in _batches(data, labeled, batch_size, name, shape):
            xd = xb.to(device, dtype)
            out = model(xd)
            if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != xb.shape[0]:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"the model must return logits of shape (batch, classes); on {name} it returned {got} "
                                 f"for a batch of {xb.shape[0]}")
            logits.append(out.detach().double().cpu())
            if yb is not None:
                labels.append(yb)
            if features == "embedding":
                feats.append(model.embed(xd).detach().flatten(1).double().cpu())
            elif features == "input":
                feats.append(xb.detach().flatten(1).double().cpu())
    if not logits:
        raise ValueError(f"{name} is empty: the DataLoader yields no batches")
    lg = torch.cat(logits)
    if lg.shape[1] < 2:
        raise ValueError(f"the model must output at least 2 logits (classes), got {lg.shape[1]}")
    if not bool(torch.isfinite(lg).all()):
        raise ValueError(f"the model's logits on {name} contain NaN or infinite values")
    y = None
    if labeled:
        y = inp.as_labels(torch.cat(labels), f"labels of {name}", num_samples=lg.shape[0])
        top = int(y.max())
        if top >= lg.shape[1]:
            raise ValueError(f"{name} has label {top}, but the model outputs {lg.shape[1]} logits (classes "
                             f"0..{lg.shape[1] - 1})")
    return Outputs(lg, y, torch.cat(feats) if feats else None)


def _batches(data: Tensor | tuple[Tensor, Tensor] | DataLoader, labeled: bool, batch_size: int, name: str,
             shape: tuple[int, ...]) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(x, y) batches (y None for unlabelled data). A DataLoader is read under a fixed seed inside a fork of
    the global RNG, so a shuffling one gives the same order every time and the caller's RNG is untouched."""
    if not isinstance(data, DataLoader):
        x, y = data if labeled else (data, None)
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size], (None if y is None else y[i:i + batch_size])
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(inp.PEEK_SEED)
        for batch in data:
            xb, yb = inp.split_batch(batch, labeled, name)
            xb = inp.as_features(xb, f"a batch of {name}")
            if tuple(xb.shape[1:]) != shape:
                raise ValueError(f"{name} yielded a batch of shape {tuple(xb.shape)}; expected samples of shape "
                                 f"{shape}")
            if yb is not None and yb.shape[:1] != xb.shape[:1]:
                raise ValueError(f"{name} yielded {xb.shape[0]} samples with {yb.shape[0] if yb.dim() else 1} labels")
            yield xb, yb
