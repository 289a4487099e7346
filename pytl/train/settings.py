"""TrainSettings: every option of ``TwoStageTrainer``, declared once, with its default and its check.

The settings are what the user asked for, kept exactly as given (``finetune_lr=None`` stays None; the
value used is ``lr``), so that they round-trip: ``TwoStageTrainer(**trainer.get_params())`` is the same
trainer. Everything else derives from this class: ``compare_strategies``' defaults
(pytl.experiments.strategies), the settings a checkpoint compares on resume (checkpoint.py) and the
command line's defaults. What a run finds out (rank, device, sample shape, history) is the run's state
(state.py), not a setting.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import Tensor

from pytl import distributed as pd
from pytl._checks import check_bool, check_choice, check_float, check_int, check_optional_int
from pytl.freezing import FreezingPolicy
from pytl.ops import ESTIMATORS

#: how the "mmd" alignment computes its term (TrainSettings.mmd_method)
MMD_METHODS = ("exact", "rff")
from pytl.train.alignments import ALIGNMENTS
from pytl.train.schedules import LAMBDA_SCHEDULES, ScheduleLike

__all__ = ["ALIASES", "OPTIMIZERS", "OptimizerLike", "TrainSettings", "check_class_weights", "resume_fields"]

OPTIMIZERS = ("adam", "adamw", "sgd")
OptimizerLike = Union[str, Callable[[list[dict]], torch.optim.Optimizer]]
#: former names of settings, still accepted as keywords: ``lambda_mmd`` weighs whichever alignment runs
ALIASES = {"lambda_mmd": "lambda_align"}


def _setting(default: Any, resume: bool = True) -> Any:
    """A field; ``resume=False``: a setting a resumed run may change freely (where or how it runs, not what)."""
    return field(default=default, metadata={"resume": resume})


@dataclass(frozen=True)
class TrainSettings:
    """The options of ``TwoStageTrainer`` (stage 1: CE(source) + λ·alignment; stage 2: fine-tuning).

    num_classes: None infers it from the model or the labels.
    lambda_align (alias ``lambda_mmd``): λ, the weight of stage 1's alignment term, whichever runs.
    lambda_schedule: "constant", "linear", "dann" or callable(progress) → factor of λ.
    alignment: stage 1's alignment term, one of pytl.train.alignments.ALIGNMENTS (each a class there, with
    its own documentation): "mmd" (default; MMD² of the embeddings), "cmmd" (class-conditional MMD, LMMD
    of DSAN), "coral" (Deep CORAL), "dann" (a domain discriminator through a gradient reversal layer that
    scales the encoder's gradient by λ; single process only). Its term is recorded under its own key.
    warmup: fraction of stage-1 steps in [0, 1) before the class-aware parts start (the "cmmd" term, the
    class-weight estimate). cmmd_confidence: "cmmd" gives no weight to target rows whose top probability
    is below it. dann_hidden: units per hidden layer of DANN's discriminator.
    class_weights: None, a sequence of one non-negative weight per class, or "estimated" (BBSE at the end
    of the warm-up, kept as ``trainer.label_shift``): the source cross-entropy weighs each class by it
    (the "mmd" term weighs the source rows, the DANN domain loss too), to correct a label shift.
    align_epochs, finetune_epochs: the stages' lengths (an epoch is one pass over the source in stage 1,
    target batches cycling; over the labelled target samples in stage 2).
    lr, finetune_lr (None: lr), batch_size, target_batch_size and finetune_batch_size (None: batch_size),
    weight_decay, optimizer ("adam", "adamw", "sgd" with momentum 0.9, or callable(param_groups)).
    align_policy / finetune_policy: a ``pytl.freezing`` policy, in force for its stage only (a
    ``BatchNormPolicy("frozen")`` is added when the policy has none).
    mmd_sigmas: bandwidths of the MMD terms (None: median heuristic ladder; a callable(zs, zt) → sigmas);
    mmd_estimator: "biased" or "unbiased". mmd_method: "exact" (every pair of the batch, the fused op) or "rff"
    (the "mmd" alignment by random Fourier features, 256 per bandwidth drawn afresh each step from the seed and the
    step: cost linear in the batch, for large batches of wide embeddings; no class_weights).
    device: None (where the model lives; CPU for a new model), "auto", "cpu", "cuda[:N]" or a torch.device.
    seed: everything is seeded; the same seed gives bit-identical weights on the CPU.
    progress: a progress bar per stage. num_threads: torch CPU threads while training: "auto" (default: one
    thread for a small model's steps, torch's setting for large ones; threads.py), an int, or None (torch's).
    distributed: None trains with DDP when torch.distributed is initialised with more than one rank,
    True requires it, False trains alone in each process. Batch sizes stay global batch sizes.
    mmd_scope: under DDP, "global" (the MMD² of the global batch) or "per_rank".
    checkpoint: a file written after every epoch (rank 0, atomically); ``fit(resume_from=...)`` continues.
    finetune_validation: None or a fraction in (0, 1) of the target labels held out from fine-tuning (per
    class) whose loss picks the epoch whose weights are kept; patience: None or epochs without a better
    validation loss before fine-tuning stops (needs finetune_validation).
    amp: mixed precision for the training steps (precision.py).
    semi_supervised: stage 1 also learns from the target labels ``fit`` (or ``align``) is given: CE on batches of
    them beside the source CE, and they join the target side of the alignment (the class-conditional term
    takes their true labels, the unlabelled rows keep their pseudo-labels). Arrays only, single process.
    """

    num_classes: int | None = _setting(None, resume=False)  # compared on resume on its own, with the data's
    lambda_align: float = _setting(0.5)
    lambda_schedule: ScheduleLike = _setting("constant")
    alignment: str = _setting("mmd")
    warmup: float = _setting(0.1)
    cmmd_confidence: float = _setting(0.0)
    class_weights: Any = _setting(None)
    dann_hidden: int = _setting(256)
    align_epochs: int = _setting(100)
    finetune_epochs: int = _setting(50)
    lr: float = _setting(1e-3)
    finetune_lr: float | None = _setting(None)
    batch_size: int = _setting(64)
    target_batch_size: int | None = _setting(None)
    finetune_batch_size: int | None = _setting(None)
    weight_decay: float = _setting(0.0)
    optimizer: OptimizerLike = _setting("adam")
    align_policy: FreezingPolicy | None = _setting(None)
    finetune_policy: FreezingPolicy | None = _setting(None)
    mmd_sigmas: Any = _setting(None)
    mmd_estimator: str = _setting("biased")
    mmd_method: str = _setting("exact")
    device: Any = _setting(None, resume=False)
    seed: int = _setting(0)
    progress: bool = _setting(True, resume=False)
    num_threads: int | str | None = _setting("auto", resume=False)
    distributed: bool | None = _setting(None, resume=False)
    mmd_scope: str = _setting("global")
    checkpoint: str | os.PathLike | None = _setting(None, resume=False)
    finetune_validation: float | None = _setting(None)
    patience: int | None = _setting(None)
    amp: bool = _setting(False)
    semi_supervised: bool = _setting(False)

    def __post_init__(self) -> None:
        check_settings(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting's default, by name."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    def replace(self, **changes: Any) -> TrainSettings:
        """A copy with ``changes`` (former names accepted), checked; an unknown name is a TypeError."""
        options = canonical(changes, "TwoStageTrainer")
        try:
            return dataclasses.replace(self, **options)
        except (TypeError, ValueError) as e:
            for old, new in ALIASES.items():  # name the argument as the caller wrote it
                if old in changes and str(e).startswith(new):
                    raise type(e)(old + str(e)[len(new):]) from None
            raise

    def as_dict(self) -> dict[str, Any]:
        """The settings as given, by name (shallow: policies and tensors are the objects given)."""
        return {name: getattr(self, name) for name in self.names()}

    @property
    def lambda_mmd(self) -> float:
        """The former name of ``lambda_align``."""
        return self.lambda_align

    # The values a run uses where a setting defers to another (None: "as lr", "as batch_size").
    @property
    def finetune_lr_value(self) -> float:
        return float(self.lr if self.finetune_lr is None else self.finetune_lr)

    @property
    def target_batch_size_value(self) -> int:
        return int(self.batch_size if self.target_batch_size is None else self.target_batch_size)

    @property
    def finetune_batch_size_value(self) -> int:
        return int(self.batch_size if self.finetune_batch_size is None else self.finetune_batch_size)

    @property
    def checkpoint_path(self) -> str | None:
        return None if self.checkpoint is None else os.fspath(self.checkpoint)

    def class_weight_spec(self) -> Tensor | str | None:
        """``class_weights`` checked: None, "estimated", or (C,) float64 weights on the CPU."""
        return check_class_weights(self.class_weights, self.warmup)


def canonical(options: dict[str, Any], caller: str) -> dict[str, Any]:
    """``options`` with former names replaced by current ones; an unknown name is a TypeError listing the valid."""
    out: dict[str, Any] = {}
    valid = TrainSettings.names()
    for name, value in options.items():
        new = ALIASES.get(name, name)
        if new not in valid:
            raise TypeError(f"{caller} got an unexpected setting {name!r}; valid settings: {sorted(valid)} "
                            f"(and the former names {sorted(ALIASES)})")
        if new in out:
            raise TypeError(f"{caller} got {new!r} twice (as {name!r} and as {new!r})")
        out[new] = value
    return out


def resume_fields() -> tuple[str, ...]:
    """The settings that a resumed run should share with its checkpoint's run (a difference warns)."""
    return tuple(f.name for f in dataclasses.fields(TrainSettings) if f.metadata["resume"])


def check_settings(s: TrainSettings) -> None:
    """Each setting's check (TypeError for a wrong type, ValueError for a bad value), naming the argument."""
    check_optional_int(s.num_classes, "num_classes", 2)
    check_float(s.lambda_align, "lambda_align", 0.0)
    if not callable(s.lambda_schedule):
        check_choice(s.lambda_schedule, "lambda_schedule", LAMBDA_SCHEDULES, "or a callable")
    check_choice(s.alignment, "alignment", tuple(ALIGNMENTS))
    check_float(s.warmup, "warmup", 0.0, 1.0, strict_max=True)
    check_float(s.cmmd_confidence, "cmmd_confidence", 0.0, 1.0, strict_max=True)
    check_int(s.dann_hidden, "dann_hidden", 1)
    check_class_weights(s.class_weights, s.warmup)
    check_int(s.align_epochs, "align_epochs", 0)
    check_int(s.finetune_epochs, "finetune_epochs", 0)
    check_float(s.lr, "lr", 0.0, strict_min=True)
    if s.finetune_lr is not None:
        check_float(s.finetune_lr, "finetune_lr", 0.0, strict_min=True)
    check_int(s.batch_size, "batch_size", 1)
    check_optional_int(s.target_batch_size, "target_batch_size", 1)
    check_optional_int(s.finetune_batch_size, "finetune_batch_size", 1)
    check_float(s.weight_decay, "weight_decay", 0.0)
    if not callable(s.optimizer):
        check_choice(s.optimizer, "optimizer", OPTIMIZERS, "or a callable(param_groups) -> Optimizer")
    for name in ("align_policy", "finetune_policy"):
        pol = getattr(s, name)
        if pol is not None and not isinstance(pol, FreezingPolicy):
            raise TypeError(f"{name} must be a pytl.freezing policy or None, got {type(pol).__name__}")
    check_choice(s.mmd_estimator, "mmd_estimator", ESTIMATORS)
    check_choice(s.mmd_method, "mmd_method", MMD_METHODS)
    if s.mmd_method == "rff" and s.class_weights is not None and s.alignment == "mmd":
        raise ValueError("mmd_method='rff' does not weigh the source rows: class_weights needs mmd_method='exact'")
    check_int(s.seed, "seed", 0)
    check_bool(s.progress, "progress")
    if isinstance(s.num_threads, str) and s.num_threads != "auto":
        raise ValueError(f"num_threads must be 'auto', None or an int >= 1, got {s.num_threads!r}")
    if s.num_threads != "auto":
        check_optional_int(s.num_threads, "num_threads", 1)
    if s.distributed is not None and not isinstance(s.distributed, bool):
        raise TypeError(f"distributed must be None, True or False, got {s.distributed!r}")
    if s.distributed and not pd.is_initialized():
        raise ValueError("distributed=True needs an initialised torch.distributed process group (run under "
                         "torchrun and call torch.distributed.init_process_group or "
                         "pytl.distributed.init_from_env())")
    check_choice(s.mmd_scope, "mmd_scope", pd.MMD_SCOPES)
    if s.checkpoint is not None and not isinstance(s.checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path or None, got {type(s.checkpoint).__name__}")
    check_bool(s.amp, "amp")
    check_bool(s.semi_supervised, "semi_supervised")
    if s.finetune_validation is not None:
        check_float(s.finetune_validation, "finetune_validation", 0.0, 1.0, strict_min=True, strict_max=True)
    check_optional_int(s.patience, "patience", 1)
    if s.patience is not None and s.finetune_validation is None:
        raise ValueError(f"patience={s.patience} needs finetune_validation (the held-out fraction of the "
                         "target labels whose loss it watches); pass finetune_validation=0.2, say")


def check_class_weights(spec: Any, warmup: float) -> Tensor | str | None:
    """class_weights as given: None, "estimated" (needs a warm-up to estimate after), or (C,) weights, non-negative
    and finite and not all zero (float64 on the CPU; the count is checked against the model's classes)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        check_choice(spec, "class_weights", ("estimated",), "or a sequence of one weight per class")
        if warmup <= 0:
            raise ValueError("class_weights='estimated' needs warmup > 0: the estimate is taken with the model "
                             "trained for the warm-up (a fraction of the stage-1 steps)")
        return spec
    try:
        w = torch.as_tensor(spec.detach().cpu() if isinstance(spec, Tensor) else spec, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"class_weights must be None, 'estimated' or a sequence of numbers, got "
                        f"{type(spec).__name__}") from exc
    if w.dim() != 1 or w.numel() < 2:
        raise ValueError(f"class_weights must be 1-D with one weight per class, got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool((w > 0).any()):
        raise ValueError(f"class_weights must be non-negative and finite, not all zero, got {w.tolist()}")
    return w
