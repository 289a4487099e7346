"""Checkpoints: everything a resumed run needs, written atomically by rank 0 after every epoch, and read
back with checks (format, data shape, classes, settings) before anything trains."""

from __future__ import annotations

import numbers
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from pytl import _inputs as inp
from pytl import distributed as pd
from pytl._checks import warn_user
from pytl.freezing import FreezingPolicy
from pytl.train.settings import ALIASES, TrainSettings, resume_fields

if TYPE_CHECKING:
    from pytl.train.state import RunState

CHECKPOINT_FORMAT = "pytl.TwoStageTrainer.checkpoint/1"
#: the settings a resumed run should share with the checkpoint's run (compared, a difference warns)
RESUME_SETTINGS = resume_fields()
# the settings whose None means another's value: compared by the value used
_DEFERRING = {"finetune_lr": "finetune_lr_value", "target_batch_size": "target_batch_size_value",
              "finetune_batch_size": "finetune_batch_size_value"}


def settings_of(settings: TrainSettings) -> dict[str, Any]:
    """The RESUME_SETTINGS as plain values (the values used), for comparison."""
    def plain(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, numbers.Real):  # numpy scalars, as given
            return int(v) if isinstance(v, numbers.Integral) else float(v)
        if isinstance(v, Tensor):
            return v.detach().cpu().tolist()
        if callable(v) and not isinstance(v, FreezingPolicy):
            return getattr(v, "__qualname__", type(v).__name__)
        return repr(v)

    return {k: plain(getattr(settings, _DEFERRING.get(k, k))) for k in RESUME_SETTINGS}


def save_checkpoint(run: RunState, stage: str, epoch: int, model: nn.Module, start_state: Any,
                    opt: torch.optim.Optimizer, gen: torch.Generator, records: list[dict[str, Any]],
                    step: int = 0, lam: float = 0.0, target: dict[str, Any] | None = None,
                    validation: dict[str, Any] | None = None, scaler: dict[str, Any] | None = None,
                    alignment: dict[str, Any] | None = None, class_weights: Any = None,
                    labeled: dict[str, Any] | None = None) -> None:
    """After each epoch: rank 0 writes everything a resumed run needs (atomically: a crash while
    writing leaves the previous checkpoint). Plain types and tensors only (torch.load weights_only)."""
    path = run.settings.checkpoint_path
    if path is None:
        return
    rng = (torch.get_rng_state(), torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None)
    rngs = pd.gather_objects(rng) if run.world > 1 else [rng]
    if run.rank != 0:
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
        "labeled": labeled,  # semi_supervised: the labelled target stream's position and generator
        "history": run.history, "records": records, "policy_summary": run.policy_summary,
        "num_classes": run.num_classes, "sample_shape": list(run.sample_shape or ()),
        "settings": settings_of(run.settings), "world_size": run.world,
    }
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(run: RunState, path: Any, model: nn.Module | None = None) -> dict[str, Any] | None:
    """The checked contents of ``resume_from`` (None: no resume); ``model``: the model it will be loaded into,
    whose parameters and buffers must match the checkpoint's (names and shapes)."""
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
    if tuple(ckpt["sample_shape"]) != run.sample_shape or ckpt["num_classes"] != run.num_classes:
        raise ValueError(f"resume_from={path!r} was written for samples of shape "
                         f"{inp.format_shape(tuple(ckpt['sample_shape']))} and {ckpt['num_classes']} classes; this "
                         f"run has {inp.format_shape(run.sample_shape or ())} and {run.num_classes}")
    if model is not None:
        check_model(path, ckpt, model)
    mine = settings_of(run.settings)
    theirs = {ALIASES.get(k, k): v for k, v in ckpt["settings"].items()}  # a checkpoint of before the renames
    diff = {k: (v, mine.get(k)) for k, v in theirs.items() if mine.get(k) != v}
    if diff:
        warn_user(f"resuming from {path!r} with settings that differ from its run (checkpoint, now): {diff}; "
                  "the result will differ from an uninterrupted run")
    return ckpt


def check_model(path: str, ckpt: dict[str, Any], model: nn.Module, shown: int = 3) -> None:
    """ValueError naming ``resume_from`` unless the checkpoint's model has the tensors of ``model``, by name
    and shape: another architecture (a different width, depth or head) fails here, before any step, rather
    than in ``load_state_dict``. The first ``shown`` differences are listed."""
    theirs, mine = _shapes(ckpt.get("model")), _shapes(model.state_dict())
    if theirs is None:
        raise ValueError(f"resume_from={path!r} holds no model weights: not a TwoStageTrainer checkpoint")
    diffs = [f"{k}: checkpoint {_shape(theirs[k])}, model {_shape(mine[k])}"
             for k in theirs if k in mine and theirs[k] != mine[k]]
    diffs += [f"{k} only in the checkpoint" for k in theirs if k not in mine]
    diffs += [f"{k} only in the model" for k in mine if k not in theirs]
    if diffs:
        more = f"; and {len(diffs) - shown} more" if len(diffs) > shown else ""
        raise ValueError(f"resume_from={path!r}: the checkpoint's model does not match this trainer's model "
                         f"(another architecture?): {'; '.join(diffs[:shown])}{more}")


def _shapes(state: Any) -> dict[str, tuple[int, ...] | None] | None:
    """A state dict's entries and their shapes (None: not a tensor, e.g. a module's extra state)."""
    if not isinstance(state, dict):
        return None
    return {k: tuple(v.shape) if isinstance(v, Tensor) else None for k, v in state.items()}


def _shape(shape: tuple[int, ...] | None) -> str:
    return "(not a tensor)" if shape is None else str(shape)


def restore(run: RunState, stage: str, resume: dict[str, Any], model: nn.Module, policy: FreezingPolicy,
            opt: torch.optim.Optimizer, gen: torch.Generator) -> tuple[int, list[dict[str, Any]]]:
    """Puts the run back where the checkpoint left it: the policy's schedule replayed, weights, optimizer,
    data order, this rank's RNG streams, history. Returns (first epoch to run, the stage's records so far)."""
    first = int(resume["epoch"])
    for e in range(first):  # replay the policy's schedule (gradual unfreezing) up to the checkpoint
        policy.on_epoch_start(model, e, opt)
    model.load_state_dict(resume["model"])
    opt.load_state_dict(resume["optimizer"])
    gen.set_state(resume["generator"])
    cpu, cuda = resume["rng"][run.rank % len(resume["rng"])]  # dropout streams, per rank
    torch.set_rng_state(cpu)
    if cuda is not None and run.device.type == "cuda":
        torch.cuda.set_rng_state(cuda, run.device)
    run.history = {k: list(v) for k, v in resume["history"].items()}
    run.policy_summary = {**resume["policy_summary"], stage: run.policy_summary[stage]}
    return first, list(resume["records"])
