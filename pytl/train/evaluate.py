"""Evaluation after each epoch: accuracy and loss on the labelled eval sets, reduced over ranks under DDP.

Eval mode, batched predictions and embeddings live in pytl.inference, below every layer that needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pytl import distributed as pd
from pytl.inference import EVAL_BATCH, eval_mode
from pytl.train.batches import batches

if TYPE_CHECKING:
    from pytl.train.state import RunState


@torch.no_grad()
def evaluate(run: RunState, model: nn.Module, ev: dict[str, Any]) -> dict[str, float]:
    """Accuracy and loss on each eval set. Under DDP each rank evaluates its part of an array and a
    DataLoader as given; the sums are reduced over ranks (a replicated loader scales both counts alike)."""
    out: dict[str, float] = {}
    if not ev:
        return out
    with eval_mode(model):
        for name, data in ev.items():
            if isinstance(data, tuple) and run.world > 1:  # each rank its part of an array
                data = tuple(v.tensor_split(run.world)[run.rank] for v in data)
            correct, loss, n = labeled_sums(run, model, data, f"eval_data[{name!r}]")
            if run.world > 1:
                counts = [torch.tensor(float(v), device=run.device) for v in (correct, loss, n)]
                correct_t, loss_t, n_t = pd.all_reduce_sum(counts)
                correct, loss, n = int(correct_t), float(loss_t), int(n_t)
            out[f"{name}_acc"] = correct / max(n, 1)
            out[f"{name}_loss"] = loss / max(n, 1)
    return out


@torch.no_grad()
def labeled_sums(run: RunState, model: nn.Module, data: Any, name: str) -> tuple[int, float, int]:
    """(correct, summed cross-entropy, samples) of ``model`` on all of ``data``, an (X, y) pair or a
    DataLoader (every batch, even of one sample), on the run's device; the caller sets eval mode."""
    if isinstance(data, DataLoader):
        pairs: Any = ((xb, yb) for xb, yb, _ in batches(run, data, 0, torch.Generator(), labeled=True, name=name,
                                                        min_size=1))
    else:
        x, y = data
        pairs = ((xb.to(run.device), yb.to(run.device)) for xb, yb in zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH)))
    correct, loss, n = 0, 0.0, 0
    for xb, yb in pairs:
        logits = model(xb)
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
        n += xb.shape[0]
    return correct, loss, n
