"""Checkpoints: everything a resumed run needs, written atomically by rank 0 after every epoch, and read
back with checks (format, data shape, classes, settings) before anything trains."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from pytl import _inputs as inp
from pytl import distributed as pd
from pytl._checks import warn_user
from pytl.freezing import FreezingPolicy

if TYPE_CHECKING:
    from pytl.train.trainer import TwoStageTrainer

CHECKPOINT_FORMAT = "pytl.TwoStageTrainer.checkpoint/1"
# The settings a resumed run should share with the checkpoint's run (compared, a difference warns).
RESUME_SETTINGS = ("lambda_mmd", "alignment", "lambda_schedule", "align_epochs", "finetune_epochs", "lr", "finetune_lr",
                   "batch_size", "target_batch_size", "finetune_batch_size", "weight_decay", "optimizer",
                   "align_policy", "finetune_policy", "mmd_sigmas", "mmd_estimator", "mmd_scope", "seed",
                   "finetune_validation", "patience", "amp", "warmup", "cmmd_confidence", "class_weights",
                   "dann_hidden")


def settings_of(t: TwoStageTrainer) -> dict[str, Any]:
    """The trainer's RESUME_SETTINGS as plain values, for comparison."""
    def plain(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, Tensor):
            return v.detach().cpu().tolist()
        if callable(v) and not isinstance(v, FreezingPolicy):
            return getattr(v, "__qualname__", type(v).__name__)
        return repr(v)

    return {k: plain(getattr(t, k)) for k in RESUME_SETTINGS}


def save_checkpoint(t: TwoStageTrainer, stage: str, epoch: int, model: nn.Module, start_state: Any,
                    opt: torch.optim.Optimizer, gen: torch.Generator, records: list[dict[str, Any]],
                    step: int = 0, lam: float = 0.0, target: dict[str, Any] | None = None,
                    validation: dict[str, Any] | None = None, scaler: dict[str, Any] | None = None,
                    alignment: dict[str, Any] | None = None, class_weights: Any = None) -> None:
    """After each epoch: rank 0 writes everything a resumed run needs (atomically: a crash while
    writing leaves the previous checkpoint). Plain types and tensors only (torch.load weights_only)."""
    if t.checkpoint is None:
        return
    rng = (torch.get_rng_state(), torch.cuda.get_rng_state(t.device) if t.device.type == "cuda" else None)
    rngs = pd.gather_objects(rng) if t._world > 1 else [rng]
    if t._rank != 0:
        return
    state = {
        "format": CHECKPOINT_FORMAT, "stage": stage, "epoch": epoch,
        "model": model.state_dict(),  # the unwrapped model: no DDP "module." prefix
        "stage_start_model": start_state, "optimizer": opt.state_dict(), "generator": gen.get_state(),
        "rng": rngs, "step": step, "lambda": lam, "target": target,
        "validation": validation,  # fine-tuning's early-stopping state (best loss, epoch, weights; stopped)
        "scaler": scaler,  # amp on CUDA: the GradScaler's scale and growth tracker
        "alignment": alignment,  # stage 1's alignment state (DANN: discriminator and its optimizer)
        "class_weights": class_weights,  # class_weights="estimated": the estimate, once taken
        "history": t.history, "records": records, "policy_summary": t.policy_summary,
        "num_classes": t.num_classes, "sample_shape": list(t._sample_shape or ()),
        "settings": settings_of(t), "world_size": t._world,
    }
    path = os.path.abspath(t.checkpoint)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(t: TwoStageTrainer, path: Any) -> dict[str, Any] | None:
    """The checked contents of ``resume_from`` (None: no resume)."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"resume_from must be a file path or None, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"resume_from={path!r}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"resume_from={path!r} is not a readable checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"resume_from={path!r} is not a TwoStageTrainer checkpoint")
    if tuple(ckpt["sample_shape"]) != t._sample_shape or ckpt["num_classes"] != t.num_classes:
        raise ValueError(f"resume_from={path!r} was written for samples of shape "
                         f"{inp.format_shape(tuple(ckpt['sample_shape']))} and {ckpt['num_classes']} classes; this "
                         f"run has {inp.format_shape(t._sample_shape or ())} and {t.num_classes}")
    mine = settings_of(t)
    diff = {k: (v, mine.get(k)) for k, v in ckpt["settings"].items() if mine.get(k) != v}
    if diff:
        warn_user(f"resuming from {path!r} with settings that differ from its run (checkpoint, now): {diff}; "
                  "the result will differ from an uninterrupted run")
    return ckpt


def restore(t: TwoStageTrainer, stage: str, resume: dict[str, Any], model: nn.Module, policy: FreezingPolicy,
            opt: torch.optim.Optimizer, gen: torch.Generator) -> tuple[int, list[dict[str, Any]]]:
    """Puts the run back where the checkpoint left it: the policy's schedule replayed, weights, optimizer,
    data order, this rank's RNG streams, history. Returns (first epoch to run, the stage's records so far)."""
    first = int(resume["epoch"])
    for e in range(first):  # replay the policy's schedule (gradual unfreezing) up to the checkpoint
        policy.on_epoch_start(model, e, opt)
    model.load_state_dict(resume["model"])
    opt.load_state_dict(resume["optimizer"])
    gen.set_state(resume["generator"])
    cpu, cuda = resume["rng"][t._rank % len(resume["rng"])]  # dropout streams, per rank
    torch.set_rng_state(cpu)
    if cuda is not None and t.device.type == "cuda":
        torch.cuda.set_rng_state(cuda, t.device)
    t.history = {k: list(v) for k, v in resume["history"].items()}
    t.policy_summary = {**resume["policy_summary"], stage: t.policy_summary[stage]}
    return first, list(resume["records"])
