"""Evaluation after each epoch and on demand: accuracy and loss on labelled sets, embeddings, eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pytl import distributed as pd
from pytl.train.batches import batches

if TYPE_CHECKING:
    from pytl.train.trainer import TwoStageTrainer

EVAL_BATCH = 4096  # rows per forward pass when evaluating arrays


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


@torch.no_grad()
def evaluate(t: TwoStageTrainer, ev: dict[str, Any]) -> dict[str, float]:
    """Accuracy and loss on each eval set. Under DDP each rank evaluates its part of an array and a
    DataLoader as given; the sums are reduced over ranks (a replicated loader scales both counts alike)."""
    out: dict[str, float] = {}
    if not ev:
        return out
    model = t._require_model()
    with eval_mode(model):
        for name, data in ev.items():
            if isinstance(data, tuple) and t._world > 1:  # each rank its part of an array
                data = tuple(v.tensor_split(t._world)[t._rank] for v in data)
            correct, loss, n = labeled_sums(t, model, data, f"eval_data[{name!r}]")
            if t._world > 1:
                counts = [torch.tensor(float(v), device=t.device) for v in (correct, loss, n)]
                correct_t, loss_t, n_t = pd.all_reduce_sum(counts)
                correct, loss, n = int(correct_t), float(loss_t), int(n_t)
            out[f"{name}_acc"] = correct / max(n, 1)
            out[f"{name}_loss"] = loss / max(n, 1)
    return out


@torch.no_grad()
def labeled_sums(t: TwoStageTrainer, model: nn.Module, data: Any, name: str) -> tuple[int, float, int]:
    """(correct, summed cross-entropy, samples) of ``model`` on all of ``data``, an (X, y) pair or a
    DataLoader (every batch, even of one sample), on the trainer's device; the caller sets eval mode."""
    if isinstance(data, DataLoader):
        pairs: Any = ((xb, yb) for xb, yb, _ in batches(t, data, 0, torch.Generator(), labeled=True, name=name,
                                                        min_size=1))
    else:
        x, y = data
        pairs = ((xb.to(t.device), yb.to(t.device)) for xb, yb in zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH)))
    correct, loss, n = 0, 0.0, 0
    for xb, yb in pairs:
        logits = model(xb)
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
        n += xb.shape[0]
    return correct, loss, n


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
