"""RunState: what a trainer's runs know and produce, apart from what the user asked for (settings.py).

The engine and its parts (loop, steps, batches, ddp, checkpoint, evaluate, early stopping, the
alignment terms) are handed this object and the model, never the trainer, the way pytorch/ignite keeps
its ``Engine`` apart from the ``State`` its handlers read: the settings, where the run happens (device,
rank, world), what the data turned out to be (classes, sample shape, dtype) and what training produced
(history, freezing summaries, the label-shift estimate, early stopping's best epoch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from pytl.train.settings import TrainSettings
from pytl.train.threads import using_threads

__all__ = ["RunState"]


def _empty_history() -> dict[str, list[dict[str, Any]]]:
    return {"align": [], "finetune": []}


@dataclass
class RunState:
    settings: TrainSettings
    device: torch.device
    #: the model's classes: as given (settings.num_classes) until a stage's checks find them out
    num_classes: int | None = None
    rank: int = 0  # this process's rank and the ranks that train together (ddp.setup_ranks, at each stage)
    world: int = 1
    sample_shape: tuple[int, ...] | None = None  # the shape of one sample the model was trained on
    dtype: torch.dtype = torch.float32  # the model's floating-point dtype, which the batches are cast to
    label: str = ""  # prefix of the progress bar ("mmd: align"), set by compare_strategies
    #: one record per epoch and stage (losses, the alignment term, λ, accuracies on eval_data)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=_empty_history)
    #: per stage, the freezing summary (trainable/frozen counts and lr per block) at its start
    policy_summary: dict[str, str] = field(default_factory=dict)
    label_shift: Any = None  # class_weights="estimated": the pytl.diagnostics.LabelShiftEstimate
    best_epoch: int | None = None  # after fine-tuning with finetune_validation: the epoch whose weights were kept
    stopped_early: bool = False  # after fine-tuning: whether patience stopped it before finetune_epochs

    @contextlib.contextmanager
    def rng(self, offset: int, per_rank: bool = False, threads: int | None = None) -> Iterator[torch.Generator]:
        """Seed the global RNGs (dropout, init) inside a fork, so the user's RNG state is untouched, and apply
        ``threads`` (torch CPU threads; None: as they are), for the duration. The generator it yields (data
        order) is the same on every rank; with ``per_rank``, the global RNG (dropout) differs between ranks,
        whose samples differ."""
        seed = self.settings.seed
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with using_threads(threads), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed * 1009 + offset + (7919 * self.rank if per_rank else 0))
            yield torch.Generator().manual_seed(seed * 1009 + offset)
