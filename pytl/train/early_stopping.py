"""Early stopping for fine-tuning: a stratified held-out part of the target labels, its loss after every
epoch, the best epoch's weights, the patience counter, and the "validation loss climbs" warning sign.

With ``TwoStageTrainer(finetune_validation=f)`` the labelled target samples are split once, before
any training and before DDP sharding (``split_target``): stage 2 trains on the rest and, after every
epoch, ``EarlyStopping`` evaluates the held-out part in eval mode (every rank evaluates all of it: the
weights are the same on every rank, so are the decisions), keeps the weights of the epoch with the
lowest validation loss and restores them when the stage ends. Its state is saved in checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler, Subset

from pytl import _inputs as inp
from pytl.inference import eval_mode
from pytl.train.evaluate import labeled_sums

if TYPE_CHECKING:
    from pytl.train.settings import TrainSettings
    from pytl.train.state import RunState

__all__ = ["CLIMB_TOLERANCE", "EarlyStopping", "split_target", "stratified_split", "validation_loss_climbs"]

SPLIT_RNG_OFFSET = 3  # the split's seed stream: seed·1009 + 3 (0: default model, 1: align, 2: finetune)
CLIMB_TOLERANCE = 0.10  # validation_loss_climbs: "clearly above" = more than 10% above the minimum


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, validation indices), both sorted, disjoint, together all of ``range(len(labels))``.

    Per class of n samples, k = min(n − 1, max(1, ⌊fraction·n + ½⌋)) go to validation (round half
    up, at least one, and one always stays in training); a class of a single sample stays in training.
    Which ones: a permutation drawn from ``torch.Generator().manual_seed(seed·1009 + 3)``, one per class
    in increasing label order, so the split depends only on the labels, the fraction and the seed."""
    gen = torch.Generator().manual_seed(seed * 1009 + SPLIT_RNG_OFFSET)
    held: list[Tensor] = []
    for c in torch.unique(labels).tolist():  # sorted
        idx = (labels == c).nonzero().flatten()
        n = idx.numel()
        k = 0 if n < 2 else min(n - 1, max(1, math.floor(fraction * n + 0.5)))
        perm = torch.randperm(n, generator=gen)
        held.append(idx[perm[:k]])
    val = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.int64)
    mask = torch.ones(labels.shape[0], dtype=torch.bool)
    mask[val] = False
    return mask.nonzero().flatten(), val


def split_target(settings: TrainSettings, tl: Any, name: str = "target_labeled") -> tuple[Any, Any]:
    """The labelled target data as (training part, validation part), split by ``stratified_split``.

    Arrays are indexed. A DataLoader over a map-style dataset is split by index: its labels are read
    by indexing the dataset once (``dataset[i][1]``; target labels are few), and two loaders over
    ``Subset``s are built with its batch size, collate_fn and workers (the training one shuffles if
    the original did; the validation one does not, and keeps every batch). Iterable datasets, custom
    samplers and batch samplers cannot be split from outside: a ValueError says so."""
    fraction = settings.finetune_validation
    assert fraction is not None
    if isinstance(tl, DataLoader):
        labels = _dataset_labels(tl, name)
    else:
        labels = tl[1]
    train_idx, val_idx = stratified_split(labels, fraction, settings.seed)
    if val_idx.numel() == 0:
        counts = torch.bincount(labels).tolist()
        raise ValueError(f"finetune_validation={fraction:g} holds out nothing: {name} has no class with at least 2 "
                         f"samples (samples per class: {counts}); pass finetune_validation=None or more labels")
    if isinstance(tl, DataLoader):
        return _subset_loader(tl, train_idx, tl.sampler), _subset_loader(tl, val_idx, None)
    x, y = tl
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def _dataset_labels(loader: DataLoader, name: str) -> Tensor:
    dataset = loader.dataset
    where = f"{name} with finetune_validation"
    if isinstance(dataset, IterableDataset):
        raise ValueError(f"{where}: a DataLoader over an IterableDataset cannot be split into training and "
                         "validation parts; pass arrays, a DataLoader over a map-style dataset (with __len__), "
                         "or finetune_validation=None")
    if loader.batch_size is None or not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        raise ValueError(f"{where}: a DataLoader with a custom sampler or batch sampler "
                         f"({type(loader.sampler).__name__}) cannot be split; pass arrays, a plain DataLoader "
                         "(batch_size, shuffle) or finetune_validation=None")
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{where}: the DataLoader's dataset has no len(), so it cannot be split") from None
    labels = []
    for i in range(n):
        item = dataset[i]
        if not isinstance(item, Sequence) or len(item) < 2:
            raise TypeError(f"{where}: dataset[{i}] must be an (x, y) pair to read its label, got "
                            f"{type(item).__name__}")
        label = torch.as_tensor(item[1])
        if label.numel() != 1:
            raise ValueError(f"{where}: dataset[{i}][1] must be one class index, got shape {tuple(label.shape)}")
        labels.append(label.reshape(1))
    return inp.as_labels(torch.cat(labels) if labels else torch.zeros(0), f"labels of {name}'s dataset")


def _subset_loader(loader: DataLoader, idx: Tensor, sampler: Any) -> DataLoader:
    """A loader like ``loader`` over ``Subset(loader.dataset, idx)``; shuffling as ``sampler`` does
    (None: in order, every batch kept)."""
    extra = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers} \
        if loader.num_workers > 0 else {}
    return DataLoader(Subset(loader.dataset, idx.tolist()), batch_size=loader.batch_size,
                      shuffle=isinstance(sampler, RandomSampler), num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      drop_last=loader.drop_last if sampler is not None else False, timeout=loader.timeout,
                      worker_init_fn=loader.worker_init_fn, generator=loader.generator, **extra)


@torch.no_grad()
def validation_metrics(run: RunState, model: nn.Module, data: Any) -> dict[str, float]:
    """``val_loss`` (mean cross-entropy) and ``val_accuracy`` of ``model`` on all of ``data``, in eval mode.
    Not sharded: under DDP each rank evaluates every held-out sample."""
    with eval_mode(model):
        correct, loss, n = labeled_sums(run, model, data, "target_labeled (validation part)")
    return {"val_loss": loss / max(n, 1), "val_accuracy": correct / max(n, 1)}


class EarlyStopping:
    """The validation part's metrics after each fine-tuning epoch, the best epoch (lowest ``val_loss``,
    the first on ties) and its weights, and the patience counter.

    ``after_epoch`` adds ``val_loss``, ``val_accuracy`` and ``best`` (False until ``finish``) to the
    epoch's record and says whether to stop; ``finish`` loads the best weights (buffers included) and
    marks that record ``best: True``. ``state_dict``/``load_state_dict`` carry all of it through a checkpoint."""

    def __init__(self, run: RunState, data: Any) -> None:
        self.run, self.data, self.patience = run, data, run.settings.patience
        self.best_loss: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.stopped = False

    def after_epoch(self, epoch: int, model: nn.Module, rec: dict[str, Any], advice: str) -> bool:
        metrics = validation_metrics(self.run, model, self.data)
        if not math.isfinite(metrics["val_loss"]):
            raise FloatingPointError(f"finetune epoch {epoch}: the validation loss became {metrics['val_loss']}; "
                                     f"{advice}")
        rec.update(metrics, best=False)
        if self.best_loss is None or metrics["val_loss"] < self.best_loss:
            self.best_loss, self.best_epoch = metrics["val_loss"], epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif self.patience is not None and epoch - self.best_epoch >= self.patience:  # type: ignore[operator]
            self.stopped = True
        return self.stopped

    def finish(self, model: nn.Module, records: list[dict[str, Any]]) -> None:
        if self.best_state is None:  # no epoch ran
            return
        model.load_state_dict(self.best_state)
        for rec in records:
            if rec["epoch"] == self.best_epoch:
                rec["best"] = True

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "best_state": self.best_state,
                "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss, self.best_epoch = state["best_loss"], state["best_epoch"]
        self.best_state, self.stopped = state["best_state"], bool(state["stopped"])


def validation_loss_climbs(records: Sequence[dict[str, Any]], tolerance: float = CLIMB_TOLERANCE) -> bool:
    """Whether a fine-tuning history shows the warning sign "validation loss climbs during fine-tuning".

    True when the last record's ``val_loss`` is more than ``tolerance`` (default 10%) above the
    smallest ``val_loss`` of the records, relative to it (last > min · (1 + tolerance)), and that
    minimum was not reached in the last record. Records without ``val_loss`` (None or missing) are
    skipped; fewer than two such records: False. ``records`` is e.g. ``trainer.history["finetune"]``."""
    tol = float(tolerance)
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    losses = [float(r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if len(losses) < 2:
        return False
    low = min(losses)
    return losses.index(low) != len(losses) - 1 and losses[-1] > low * (1 + tol)
