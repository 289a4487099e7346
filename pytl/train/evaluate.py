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
    gen = torch.Generator().manual_seed(0)
    with eval_mode(model):
        for name, data in ev.items():
            correct, loss, n = 0, 0.0, 0
            if isinstance(data, DataLoader):
                pairs = ((xb, yb) for xb, yb, _ in batches(t, data, 0, gen, labeled=True, name=f"eval_data[{name!r}]",
                                                           min_size=1))
            else:
                x, y = data
                if t._world > 1:
                    x, y = x.tensor_split(t._world)[t._rank], y.tensor_split(t._world)[t._rank]
                pairs = ((xb.to(t.device), yb.to(t.device)) for xb, yb in zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH)))
            for xb, yb in pairs:
                logits = model(xb)
                loss += float(F.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(1) == yb).sum())
                n += xb.shape[0]
            if t._world > 1:
                counts = [torch.tensor(float(v), device=t.device) for v in (correct, loss, n)]
                correct_t, loss_t, n_t = pd.all_reduce_sum(counts)
                correct, loss, n = int(correct_t), float(loss_t), int(n_t)
            out[f"{name}_acc"] = correct / max(n, 1)
            out[f"{name}_loss"] = loss / max(n, 1)
    return out


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
