"""Stage 1's alignment terms, one class per ``TwoStageTrainer(alignment=...)``, and the source class weights.

Each term compares a source batch's embeddings with a target batch's and is weighted by λ in the step's
loss (``CE + λ·term``), except DANN, whose λ scales the reversed gradient instead (adversarial.py):

- "mmd": MMD² of the embeddings (pytl.mmd2; with class weights, the source rows weighted by them);
- "cmmd": the class-conditional MMD (LMMD, DSAN): per class, the MMD² between the source rows of that
  class and the target rows weighted by the current classifier's (detached, eval-mode) probability of it, averaged
  over the classes present on both sides. Off during the warm-up (the classifier is still guessing);
  target rows below ``cmmd_confidence`` (top probability) get no weight;
- "coral": Deep CORAL of the embeddings' covariances;
- "dann": a domain discriminator's BCE through a gradient reversal layer; the discriminator and its Adam
  optimizer belong to the term and travel in checkpoints.

``ClassWeights`` holds the source class weights (``class_weights=``): given, or estimated by BBSE once at
the end of the warm-up from the model's own predictions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pytl import distributed as pd
from pytl.adversarial import DomainDiscriminator, domain_adversarial_loss
from pytl.losses import classes_on_both_sides, coral_loss
from pytl.ops import class_conditional_mmd2, mmd2
from pytl.train import ddp
from pytl.train.evaluate import eval_mode, predict_proba

if TYPE_CHECKING:
    from pytl.diagnostics.label_shift import LabelShiftEstimate
    from pytl.train.trainer import TwoStageTrainer

#: each alignment of stage 1 and the history key of its term
ALIGNMENT_KEYS = {"mmd": "mmd2", "cmmd": "cmmd", "coral": "coral", "dann": "dann"}
ALIGNMENTS = tuple(ALIGNMENT_KEYS)
#: rows per domain that the class-weight estimate predicts on
ESTIMATE_ROWS = 4096


class Alignment:
    """One alignment term. ``key``: its history key. ``reversed``: λ scales a reversed gradient inside the term
    (the step's loss is CE + term) instead of weighing the term."""

    reversed = False

    def __init__(self, trainer: TwoStageTrainer) -> None:
        self.t = trainer
        self.key = ALIGNMENT_KEYS[trainer.alignment]

    def begin(self, model: nn.Module, resume: dict[str, Any] | None) -> None:
        """At the start of stage 1 (after a checkpoint's weights are restored)."""

    def term(self, zs: Tensor, zt: Tensor, ys: Tensor, ns: int, nt: int, lam: float, active: bool,
             source_weights: Tensor | None) -> Tensor | None:
        raise NotImplementedError

    def after_step(self) -> None:
        """After the model's optimizer step."""

    def state(self) -> dict[str, Any] | None:
        return None


class MMDAlignment(Alignment):
    def term(self, zs, zt, ys, ns, nt, lam, active, source_weights):
        t = self.t
        zs, zt, (sw,) = _gathered(t, zs, zt, ns, nt, [] if source_weights is None else [source_weights[:, None]])
        sig = t.mmd_sigmas(zs.detach(), zt.detach()) if callable(t.mmd_sigmas) else t.mmd_sigmas
        if sw is None:
            return mmd2(zs, zt, sig, estimator=t.mmd_estimator)
        return mmd2(zs, zt, sig, x_weights=sw[:, 0], estimator=t.mmd_estimator)


class CMMDAlignment(Alignment):
    def term(self, zs, zt, ys, ns, nt, lam, active, source_weights):
        if not active:
            return None
        t = self.t
        head = _unwrapped(t.model).head
        # the pseudo-labels: the head in eval mode (no dropout drawn, no BatchNorm statistics moved), detached
        with torch.no_grad(), eval_mode(head):
            pt = torch.softmax(head(zt.detach()).float(), 1).to(zt.dtype)
            if t.cmmd_confidence > 0:
                pt = pt * (pt.amax(1, keepdim=True) >= t.cmmd_confidence).to(pt.dtype)
        ps = F.one_hot(ys, pt.shape[1]).to(zs.dtype)
        zs, zt, (ps, pt) = _gathered(t, zs, zt, ns, nt, [ps, pt])
        sig = t.mmd_sigmas(zs.detach(), zt.detach()) if callable(t.mmd_sigmas) else t.mmd_sigmas
        return class_conditional_mmd2(zs, zt, ps, pt, sig) / classes_on_both_sides(ps, pt)


class CORALAlignment(Alignment):
    def term(self, zs, zt, ys, ns, nt, lam, active, source_weights):
        zs, zt, _ = _gathered(self.t, zs, zt, ns, nt, [])
        return coral_loss(zs, zt)


class DANNAlignment(Alignment):
    reversed = True

    def begin(self, model: nn.Module, resume: dict[str, Any] | None) -> None:
        t = self.t
        if t._world > 1:
            raise ValueError("alignment='dann' is not supported under torch.distributed yet: its discriminator would "
                             "train apart on every rank; use alignment='mmd', 'cmmd' or 'coral' there")
        if t.amp and t.device.type == "cuda":
            raise ValueError("alignment='dann' does not support amp=True on CUDA yet (the GradScaler would scale the "
                             "discriminator's gradients too); use amp=False")
        self.discriminator: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.resume = None if resume is None else resume.get("alignment")

    def term(self, zs, zt, ys, ns, nt, lam, active, source_weights):
        if self.discriminator is None:  # built on the first batch, when the embedding width is known
            # its initial weights from a seeded fork: a resumed run draws the same, and the global stream
            # (dropout, data order) is untouched
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.t.seed * 1009 + 17)
                disc = DomainDiscriminator(zs[0].numel(), self.t.dann_hidden)
            self.discriminator = disc.to(zs.device, zs.dtype)
            self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.t.lr)
            if self.resume is not None:
                self.discriminator.load_state_dict(self.resume["discriminator"])
                self.optimizer.load_state_dict(self.resume["optimizer"])
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        return domain_adversarial_loss(self.discriminator, zs, zt, lam, source_weights)

    def after_step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()

    def state(self) -> dict[str, Any] | None:
        if self.discriminator is None or self.optimizer is None:
            return self.resume
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}


ALIGNMENT_CLASSES = {"mmd": MMDAlignment, "cmmd": CMMDAlignment, "coral": CORALAlignment, "dann": DANNAlignment}


def make_alignment(trainer: TwoStageTrainer) -> Alignment:
    return ALIGNMENT_CLASSES[trainer.alignment](trainer)


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _gathered(t: TwoStageTrainer, zs: Tensor, zt: Tensor, ns: int, nt: int,
              extra: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor | None]]:
    """The embeddings of the global batch under DDP with mmd_scope="global", else this rank's, and the per-row
    ``extra`` (constants: one source tensor, or a source and a target tensor) that go with them, gathered as
    extra columns of the same all-gather and returned detached. An empty ``extra`` gives [None]."""
    if t._world == 1 or t.mmd_scope != "global":
        return zs, zt, list(extra) or [None]
    if not extra:
        zs, zt = ddp.gather_for_mmd(t, zs, zt, ns, nt)
        return zs, zt, [None]
    es = extra[0]
    et = extra[1] if len(extra) > 1 else zt.new_zeros(zt.shape[0], es.shape[1])
    zs, zt, cs, ct = pd.gather_with_columns(zs, zt, es, et, dist.group.WORLD, sizes=ddp.global_sizes(t, ns, nt))
    return zs, zt, [cs.detach()] + ([ct.detach()] if len(extra) > 1 else [])


class ClassWeights:
    """The source class weights of stage 1 (``class_weights=``): None, fixed (C,), or "estimated" by BBSE at
    the end of the warm-up (the model's hard predictions on up to ESTIMATE_ROWS source training rows and
    target rows; the estimate is kept as ``trainer.label_shift``)."""

    def __init__(self, trainer: TwoStageTrainer, source: Any, target: Any) -> None:
        self.t, self.source, self.target = trainer, source, target
        spec = trainer.class_weights
        self.estimated = isinstance(spec, str)
        self.weights: Tensor | None = None
        if spec is not None and not self.estimated:
            self.weights = torch.as_tensor(spec, dtype=trainer._param_dtype(), device=trainer.device)

    def begin(self, resume: dict[str, Any] | None) -> None:
        if resume is not None and self.estimated and resume.get("class_weights") is not None:
            self.weights = resume["class_weights"].to(device=self.t.device, dtype=self.t._param_dtype())

    def due(self) -> bool:
        return self.estimated and self.weights is None

    def estimate(self, model: nn.Module) -> None:
        # diagnostics/ sits above train/ (it imports the trainer's evaluation): imported when used
        from pytl.diagnostics.label_shift import label_shift_from_predictions

        t = self.t
        xs, ys = self.source[0][:ESTIMATE_ROWS], self.source[1][:ESTIMATE_ROWS]
        xt = self.target[:ESTIMATE_ROWS]
        was_training = model.training
        ps = predict_proba(model, xs, t.device).argmax(1)
        pt = predict_proba(model, xt, t.device).argmax(1)
        model.train(was_training)
        est: LabelShiftEstimate = label_shift_from_predictions(ps, ys.cpu(), pt, num_classes=t.num_classes)
        t.label_shift = est
        self.weights = est.weights.to(device=t.device, dtype=t._param_dtype())

    def of(self, ys: Tensor) -> Tensor | None:
        return None if self.weights is None else self.weights[ys]

    def state(self) -> Tensor | None:
        return None if self.weights is None or not self.estimated else self.weights.detach().cpu()
