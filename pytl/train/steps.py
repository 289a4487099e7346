"""The objective of a training step: CE + λ·alignment (stage 1: alignments/) or CE (stage 2), plus the
policy's penalty.

Each stage is a small object that knows its batches and its loss (``AlignStage``, ``FinetuneStage``,
both ``Stage``s); the one stage loop (loop.py) runs either. Also here: what a rank back-propagates under
DDP (``objective``). The λ schedules are in schedules.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pytl.train import ddp
from pytl.train.alignments import make_alignment
from pytl.train.batches import LabeledTargetBatches, TargetBatches, batches, steps_per_epoch
from pytl.train.class_weights import ClassWeights
from pytl.train.collapse import ClassCounts, warn_if_collapsed
from pytl.train.early_stopping import EarlyStopping
from pytl.train.schedules import lambda_factor

if TYPE_CHECKING:
    from pytl.train.state import RunState

__all__ = ["AlignStage", "FinetuneStage", "Stage", "StepLoss", "objective"]


@dataclass
class StepLoss:
    """One step's loss before the policy's penalty, its parts, and the batch it was computed on."""

    loss: Tensor
    ce: Tensor
    align: Tensor | None  # the alignment term (MMD², CMMD, CORAL, DANN's domain loss), before λ
    lam: float
    logits: Tensor
    n_global: int  # the global batch size (== the local one without DDP)
    # under DDP with class weights: this rank's share of the global batch's weight sum (its CE is a weighted
    # mean); None: the share of rows, logits.shape[0] / n_global
    ce_share: Tensor | None = None


def objective(run: RunState, loss: Tensor, step: StepLoss, pen: Tensor | None) -> Tensor:
    """What this rank back-propagates: ``loss`` alone; under DDP, a reweighting of its terms.

    DDP averages parameter gradients over the W ranks. So that the average is the gradient of
    the single-process loss, CE over the global batch + λ·MMD² + penalty: this rank's CE (a mean
    over its n_local samples) is weighted by W·n_local/n_global; the global MMD², the same on
    every rank but with gradients reaching only this rank's rows (pytl.distributed), by W (CORAL of the
    gathered batch alike); the
    penalty, a function of the shared weights, is the same on every rank and stays as it is. A
    class-weighted CE (a weighted mean) is weighted by this rank's share of the global weight sum instead."""
    world = run.world
    if world == 1:
        return loss
    share = step.logits.shape[0] / step.n_global if step.ce_share is None else step.ce_share
    obj = step.ce * (share * world)
    if step.align is not None:
        obj = obj + (step.lam * world if run.settings.mmd_scope == "global" else step.lam) * step.align
    return obj if pen is None else obj + pen


class Stage:
    """What the loop asks of a stage. Class attributes: ``name`` (history key), ``rng_offset`` (its seed
    stream), ``advice`` (when the loss diverges), ``bar_keys`` (record keys on the progress bar),
    ``align_key`` (the record key of its alignment term)."""

    name: str
    rng_offset: int
    advice: str
    bar_keys: tuple[str, ...]
    align_key = "mmd2"  # the record key of the alignment term (None in a stage without one)
    policy: Any  # the stage's freezing policy (None: train everything)
    rows_per_step: int  # rows a step forwards (both domains in stage 1): what num_threads="auto" sizes by
    lr: float
    epochs: int

    def begin(self, gen: torch.Generator, resume: dict[str, Any] | None, model: nn.Module, policy: Any) -> None:
        """Called once the policy is applied (and a checkpoint restored): ``gen`` orders the data."""
        self.gen = gen

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor | None, int]]:
        raise NotImplementedError

    def loss(self, step_fn: nn.Module, x: Tensor, y: Tensor, n: int) -> StepLoss:
        raise NotImplementedError

    def after_step(self) -> None:
        """After each optimizer step."""

    def record(self) -> dict[str, Any]:
        """The stage's own keys of an epoch's record."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The stage's own state in a checkpoint (keyword arguments of checkpoint.save_checkpoint)."""
        return {}

    def after_epoch(self, epoch: int, model: nn.Module, rec: dict[str, Any]) -> bool:
        """After the epoch's record is made (adds to it); True stops the stage after this epoch."""
        return False

    def stopped(self) -> bool:
        """Whether the stage has stopped before its last epoch (restored from a checkpoint too)."""
        return False

    def finish(self, model: nn.Module, records: list[dict[str, Any]]) -> None:
        """After the last epoch (or the stop), before the policy is released."""


class AlignStage(Stage):
    """Stage 1: labelled source batches (one pass per epoch), each with an unlabelled target batch
    when alignment is on (λ > 0 and target data given); λ follows the schedule step by step.
    The alignment term (alignments/) and the source class weights (class_weights.py) are parts of their own."""

    name, rng_offset = "align", 1

    def __init__(self, run: RunState, source: Any, target: Any, labeled: Any = None) -> None:
        settings = run.settings
        self.run, self.settings, self.source = run, settings, source
        # semi-supervised: the target labels' own batches (a CE of their own; they join the target side)
        self.labeled = None
        if labeled is not None:
            if not isinstance(labeled, tuple):
                raise ValueError("semi_supervised=True takes target_labeled as arrays or tensors (X, y), not a "
                                 "DataLoader: its few labels cycle through stage 1")
            self.labeled = LabeledTargetBatches(run, labeled, settings.finetune_batch_size_value)
        self.alignment = make_alignment(run)
        self.align_key = self.alignment.record_key
        self.bar_keys = ("loss", self.align_key)
        self.advice = "lower lr or lambda_align"
        self.use_alignment = settings.lambda_align > 0 and target is not None
        self.class_weights = ClassWeights(run, source, target)
        self.target_data = target
        self.policy, self.lr, self.epochs = settings.align_policy, float(settings.lr), settings.align_epochs
        self.rows_per_step = (settings.batch_size + (settings.target_batch_size_value if target is not None else 0)
                              + (settings.finetune_batch_size_value if labeled is not None else 0))
        self.step, self.lam = 0, 0.0
        self.counts: ClassCounts | None = None
        self.target: TargetBatches | None = None
        self.total, self.warmup_steps = 1, 0

    def begin(self, gen: torch.Generator, resume: dict[str, Any] | None, model: nn.Module, policy: Any) -> None:
        super().begin(gen, resume, model, policy)
        self.model = model
        self.total = max(1, self.epochs * steps_per_epoch(self.source, self.settings.batch_size, self.run.world))
        self.warmup_steps = round(self.settings.warmup * self.total)
        self.target = TargetBatches(self.run, self.target_data, gen) if self.use_alignment else None
        if self.labeled is not None and self.run.world > 1:
            raise ValueError("semi_supervised=True is not supported under torch.distributed yet (the few target "
                             "labels are not sharded); train in one process")
        if resume is not None:
            self.step, self.lam = resume["step"], resume["lambda"]
            if self.target is not None and resume["target"] is not None:
                self.target.load_state_dict(resume["target"])
            if self.labeled is not None and resume.get("labeled") is not None:
                self.labeled.load_state_dict(resume["labeled"])
        self.class_weights.begin(None if resume is None else resume.get("class_weights"))
        if self.use_alignment:
            self.alignment.begin(model, None if resume is None else resume.get("alignment"))

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor | None, int]]:
        # the last epoch counts the classes the model gives the unlabelled target rows (collapse.py)
        self.counts = (ClassCounts(self.run.num_classes) if self.use_alignment and epoch == self.epochs - 1
                       and self.run.num_classes else None)
        return batches(self.run, self.source, self.settings.batch_size, self.gen, labeled=True, name="source",
                       epoch=epoch)

    def loss(self, step_fn: nn.Module, xs: Tensor, ys: Tensor, n: int) -> StepLoss:
        s = self.settings
        self.lam = float(s.lambda_align) * lambda_factor(s.lambda_schedule, self.step / self.total) \
            if self.use_alignment else 0.0
        weights = self.class_weights.of(ys)
        share = None if weights is None or self.run.world == 1 else ddp.share_of_sum(weights.detach().sum())
        xl = yl = None
        if self.labeled is not None:  # the labelled target rows go through the step beside the source rows
            xl, yl = self.labeled.next()
        x_lab = xs if xl is None else torch.cat([xs, xl])
        if not self.use_alignment:
            logits, _ = step_fn(x_lab)
            ce = self._ce(logits, ys, yl)
            return StepLoss(ce, ce, None, 0.0, logits[: xs.shape[0]], n, share)
        assert self.target is not None
        xt, nt = self.target.next()
        logits, z = step_fn(x_lab, xt)  # one pass: BatchNorm sees both domains
        ns, nl = xs.shape[0], 0 if xl is None else xl.shape[0]
        zs = z[:ns]
        zt = z[ns:] if nl == 0 else torch.cat([z[ns + nl:], z[ns:ns + nl]])  # target side: unlabelled, then labelled
        ce = self._ce(logits, ys, yl)
        extra = {}
        if yl is not None and self.alignment.uses_target_labels:
            extra["target_labels"] = torch.cat([torch.full((zt.shape[0] - nl,), -1, dtype=yl.dtype, device=yl.device), yl])
        m = self.alignment.term(zs, zt, ys, n, nt + nl, self.lam, self.step >= self.warmup_steps, weights, **extra)
        if self.counts is not None:
            with torch.no_grad():
                self.counts.add(ys, self.model.head(z[ns + nl:].detach()))
        logits = logits[:ns]
        if m is None:  # the warm-up of a class-aware term
            return StepLoss(ce, ce, None, self.lam, logits, n, share)
        loss = ce + m if self.alignment.reversed else ce + self.lam * m
        return StepLoss(loss, ce, m, self.lam, logits, n, share)

    def after_step(self) -> None:
        if self.use_alignment:
            self.alignment.after_step()
        self.step += 1
        if self.class_weights.due() and self.step >= self.warmup_steps:
            self.class_weights.estimate(self.model)

    def _ce(self, logits: Tensor, ys: Tensor, yl: Tensor | None) -> Tensor:
        """The source CE (class-weighted as set), plus the labelled target rows' CE when semi-supervised."""
        ce = _cross_entropy(logits[: ys.shape[0]], ys, self.class_weights.weights)
        return ce if yl is None else ce + F.cross_entropy(logits[ys.shape[0]:], yl)

    def record(self) -> dict[str, Any]:
        return {"lambda": self.lam}

    def finish(self, model: nn.Module, records: list[dict[str, Any]]) -> None:
        if self.use_alignment and self.run.rank == 0:  # a collapse is silent otherwise (collapse.py)
            s, run = self.settings, self.run.label.strip().rstrip(":") or "the run"
            warn_if_collapsed(records, self.counts, f"{run} ({s.alignment}, λ={s.lambda_align:g})",
                              self.alignment.lambda_option)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "lam": self.lam,
                "target": None if self.target is None else self.target.state_dict(),
                "alignment": self.alignment.state_dict() if self.use_alignment else None,
                "class_weights": self.class_weights.state_dict(),
                "labeled": None if self.labeled is None else self.labeled.state_dict()}


def _cross_entropy(logits: Tensor, labels: Tensor, class_weights: Tensor | None) -> Tensor:
    """Mean cross-entropy; with class weights, the weighted mean (sum w_y CE / sum w_y), 0 for a batch whose
    classes all weigh 0. (torch's weighted mean is 0/0 = NaN there: estimated weights with zeros met a last
    batch of 16 rows from zero-weight classes after 41 epochs of a real run.) No host synchronisation."""
    if class_weights is None:
        return F.cross_entropy(logits, labels)
    w = class_weights.to(logits.dtype)
    total = F.cross_entropy(logits, labels, weight=w, reduction="sum")
    return total / w[labels].sum().clamp_min(torch.finfo(logits.dtype).tiny)


class FinetuneStage(Stage):
    """Stage 2: passes over the labelled target samples, cross-entropy only. With a validation part
    (``finetune_validation``), early stopping (early_stopping.py): its loss after every epoch, the best
    epoch's weights restored at the end, the patience stop."""

    name, rng_offset, advice, bar_keys = "finetune", 2, "lower finetune_lr", ("loss", "val_loss")

    def __init__(self, run: RunState, target_labeled: Any, validation: Any = None) -> None:
        settings = run.settings
        self.run, self.settings, self.data = run, settings, target_labeled
        self.policy, self.lr, self.epochs = settings.finetune_policy, settings.finetune_lr_value, settings.finetune_epochs
        self.rows_per_step = settings.finetune_batch_size_value
        self.early = None if validation is None else EarlyStopping(run, validation)

    def begin(self, gen: torch.Generator, resume: dict[str, Any] | None, model: nn.Module, policy: Any) -> None:
        super().begin(gen, resume, model, policy)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"finetune_policy {policy!r} freezes every parameter; nothing would train")
        if resume is not None and self.early is not None:
            if resume.get("validation") is None:
                raise ValueError("resume_from is a fine-tuning checkpoint of a run without finetune_validation; "
                                 "resume it with finetune_validation=None (its early-stopping state is missing)")
            self.early.load_state_dict(resume["validation"])

    def after_epoch(self, epoch: int, model: nn.Module, rec: dict[str, Any]) -> bool:
        return False if self.early is None else self.early.after_epoch(epoch, model, rec, self.advice)

    def stopped(self) -> bool:
        return self.early is not None and self.early.stopped

    def finish(self, model: nn.Module, records: list[dict[str, Any]]) -> None:
        self.run.best_epoch = None if self.early is None else self.early.best_epoch
        self.run.stopped_early = self.stopped()
        if self.early is not None:
            self.early.finish(model, records)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.early is None else {"validation": self.early.state_dict()}

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor | None, int]]:
        return batches(self.run, self.data, self.settings.finetune_batch_size_value, self.gen, labeled=True,
                       name="target_labeled", epoch=epoch)

    def loss(self, step_fn: nn.Module, x: Tensor, y: Tensor, n: int) -> StepLoss:
        logits, _ = step_fn(x)
        ce = F.cross_entropy(logits, y)
        return StepLoss(ce, ce, None, 0.0, logits, n)
