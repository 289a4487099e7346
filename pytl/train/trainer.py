"""TwoStageTrainer: its settings and its public API.

The parts it is made of: prepare.py (every check before training), loop.py (the one stage loop, the
engine), steps.py (each stage's batches and loss, λ schedules, the DDP objective), batches.py,
evaluate.py, metrics.py, checkpoint.py, ddp.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pytl import _inputs as inp
from pytl import distributed as pd
from pytl._checks import check_bool, check_choice, check_float, check_int, check_optional_int
from pytl.freezing import FreezingPolicy
from pytl.ops import ESTIMATORS, mmd2
from pytl.train.checkpoint import read_checkpoint
from pytl.train.evaluate import embed_all, predict_proba
from pytl.train.loop import run_stage
from pytl.train.prepare import param_dtype, prepare, resolve_device
from pytl.train.steps import ALIGNMENTS, LAMBDA_SCHEDULES, AlignStage, FinetuneStage, ScheduleLike

__all__ = ["OPTIMIZERS", "TwoStageTrainer"]

OPTIMIZERS = ("adam", "adamw", "sgd")
EvalData = Union[None, tuple[Any, Any], DataLoader, Mapping[str, Any]]
OptimizerLike = Union[str, Callable[[list[dict]], torch.optim.Optimizer]]


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


class TwoStageTrainer:
    """Stage 1: CE(source) + λ·MMD²(source embeddings, target embeddings); stage 2: fine-tune on target labels.

    Data may be numpy arrays, tensors (samples first, any feature shape) or DataLoaders yielding
    ``(x, y)`` (labelled) or ``x`` / ``(x, ...)`` (unlabelled). An epoch is one pass over the source
    (stage 1; target batches cycle) or over the labelled target samples (stage 2). Everything is
    seeded: the same seed gives bit-identical weights on CPU. ``history`` holds one dict per epoch
    (losses, MMD², λ, accuracies on ``eval_data``).

    model: a ``TransferModel`` (or anything with ``embed`` and ``head``; a plain module works for
    λ = 0 and fine-tuning); None builds ``default_model`` sized from the data at the first fit, with
    inputs standardised by the pooled statistics of the training inputs (both domains).
    lambda_schedule: "constant", "linear", "dann" or callable(progress) → factor of ``lambda_mmd``.
    alignment: stage 1's alignment term, weighted by ``lambda_mmd`` (λ keeps its meaning; pytl/train/
    alignments.py), recorded under its own key: "mmd" (default; MMD² of the embeddings, ``mmd2``);
    "cmmd" (class-conditional MMD, LMMD of DSAN, Zhu et al. 2020: per class, source rows of that label
    against target rows weighted by the current classifier's detached probability of it, averaged over
    the classes present on both sides, ``cmmd``; off for the first ``warmup`` fraction of stage-1 steps,
    and target rows whose top probability is below ``cmmd_confidence`` get no weight); "coral" (Deep
    CORAL, Sun & Saenko 2016: ||C_s − C_t||²_F / 4d² of the embeddings' covariances, ``coral``); "dann"
    (DANN, Ganin et al. 2016: a domain discriminator of ``dann_hidden`` units per hidden layer, Adam at
    ``lr``, trained through a gradient reversal layer that scales the encoder's gradient by λ; ``dann``
    records its domain BCE, ln 2 ≈ 0.693 when the domains look alike; single process only). Under DDP
    "mmd", "cmmd" and "coral" are of the global batch with ``mmd_scope="global"``.
    class_weights: None (default), a sequence of one non-negative weight per class, or "estimated": the
    source cross-entropy weighs each class by it (and the "mmd" term weighs the source rows, the DANN
    domain loss too), to correct a label shift (class proportions that differ between the domains).
    "estimated" runs BBSE (pytl.diagnostics, Lipton et al. 2018) once, at the end of the warm-up, with the
    model's predictions on the first 4096 source and target rows; the estimate is kept as
    ``trainer.label_shift`` (``.reliable``, ``.explain()``) and the weights go through checkpoints.
    warmup: fraction of stage-1 steps in [0, 1) before the class-aware parts start (the "cmmd" term, the
    class-weight estimate); default 0.1.
    finetune_policy / align_policy: a ``pytl.freezing`` policy, in force for its stage only (the
    requires_grad flags are restored afterwards); a ``BatchNormPolicy("frozen")`` is added when the
    policy has none, so frozen BatchNorm layers keep their running statistics. ``policy_summary``
    keeps each stage's per-block trainable/frozen counts and learning rates.
    num_threads: torch CPU threads while training (restored after); None keeps torch's setting.
    Small models train fastest on one thread: their ops are too short to amortise OpenMP
    synchronisation, which on a busy machine can cost more than the work itself.
    distributed: None (default) trains with DDP when torch.distributed is initialised with more
    than one rank, True requires it, False trains alone in each process. ``batch_size`` and the
    other batch sizes stay global batch sizes: each rank takes its contiguous part of every batch
    of a single-process run (a DataLoader gets a DistributedSampler and keeps its per-rank batch size).
    mmd_scope: "global" (default) gathers the embeddings of all ranks and computes the MMD² of the
    global batch (pytl.distributed); "per_rank" computes it on each rank's shard (cheaper, noisier).
    amp: mixed precision for the training steps (precision.py): the forward under ``torch.autocast``,
    bfloat16 on the CPU, float16 with a GradScaler on CUDA; the weights, the optimizer and the MMD
    statistic (the pytl ops run in float32 under autocast) stay float32.
    checkpoint: a file written (rank 0, atomically) after every epoch: model state_dict (no DDP
    ``module.`` prefix), optimizer, RNG and data-order state, history; ``fit``/``align``/``finetune``
    take ``resume_from=`` such a file, from a run on any number of ranks.
    finetune_validation: None (default) or a fraction in (0, 1) of the target labels held out from
    fine-tuning, per class (``stratified_split``: round half up, at least one per class of ≥ 2
    samples, one always left to train on; seeded by ``seed``). After each fine-tuning epoch the record
    gets ``val_loss`` (mean cross-entropy), ``val_accuracy`` (eval mode; under DDP every rank evaluates
    all of the held-out part, split off before sharding) and ``best``; at the end the weights (and
    buffers) of the epoch with the lowest ``val_loss`` (the first on ties) are restored, that record
    has ``best: True`` and ``best_epoch`` is its ``epoch``. A DataLoader over a map-style dataset is
    split by index (its labels read once, ``dataset[i][1]``) into two loaders with its batch size; an
    iterable dataset or a custom sampler is a ValueError. So is a split that holds out nothing (no
    class with 2 samples), and an ``eval_data`` set named "val" (its keys would collide).
    patience: None (default) or an int ≥ 1, with finetune_validation only: fine-tuning stops once
    ``val_loss`` has not improved for that many epochs (the history then has best epoch + patience + 1
    records; ``stopped_early`` is True). Both settings, and the early-stopping state, go through
    checkpoints: a resumed run ends as an uninterrupted one. ``pytl.train.validation_loss_climbs``
    reads such a history for the warning sign "validation loss climbs during fine-tuning".
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        num_classes: int | None = None,
        lambda_mmd: float = 0.5,
        lambda_schedule: ScheduleLike = "constant",
        alignment: str = "mmd",
        warmup: float = 0.1,
        cmmd_confidence: float = 0.0,
        class_weights: Any = None,
        dann_hidden: int = 256,
        align_epochs: int = 100,
        finetune_epochs: int = 50,
        lr: float = 1e-3,
        finetune_lr: float | None = None,
        batch_size: int = 64,
        target_batch_size: int | None = None,
        finetune_batch_size: int | None = None,
        weight_decay: float = 0.0,
        optimizer: OptimizerLike = "adam",
        align_policy: FreezingPolicy | None = None,
        finetune_policy: FreezingPolicy | None = None,
        mmd_sigmas: Any = None,
        mmd_estimator: str = "biased",
        device: Any = None,
        seed: int = 0,
        progress: bool = True,
        num_threads: int | None = None,
        distributed: bool | None = None,
        mmd_scope: str = "global",
        checkpoint: str | os.PathLike | None = None,
        finetune_validation: float | None = None,
        patience: int | None = None,
        amp: bool = False,
    ) -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
        self.model = model
        self.num_classes = check_optional_int(num_classes, "num_classes", 2)
        self.lambda_mmd = check_float(lambda_mmd, "lambda_mmd", 0.0)
        self.alignment = check_choice(alignment, "alignment", ALIGNMENTS)
        self.warmup = check_float(warmup, "warmup", 0.0, 1.0, strict_max=True)
        self.cmmd_confidence = check_float(cmmd_confidence, "cmmd_confidence", 0.0, 1.0, strict_max=True)
        self.dann_hidden = check_int(dann_hidden, "dann_hidden", 1)
        self.class_weights = check_class_weights(class_weights, self.warmup)
        #: with class_weights="estimated": the label-shift estimate (a pytl.diagnostics.LabelShiftEstimate)
        self.label_shift: Any = None
        if not callable(lambda_schedule):
            check_choice(lambda_schedule, "lambda_schedule", LAMBDA_SCHEDULES, "or a callable")
        self.lambda_schedule = lambda_schedule
        self.align_epochs = check_int(align_epochs, "align_epochs", 0)
        self.finetune_epochs = check_int(finetune_epochs, "finetune_epochs", 0)
        self.lr = check_float(lr, "lr", 0.0, strict_min=True)
        self.finetune_lr = self.lr if finetune_lr is None else check_float(finetune_lr, "finetune_lr", 0.0,
                                                                           strict_min=True)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.target_batch_size = check_optional_int(target_batch_size, "target_batch_size", 1) or self.batch_size
        self.finetune_batch_size = check_optional_int(finetune_batch_size, "finetune_batch_size", 1) or self.batch_size
        self.weight_decay = check_float(weight_decay, "weight_decay", 0.0)
        if not callable(optimizer):
            check_choice(optimizer, "optimizer", OPTIMIZERS, "or a callable(param_groups) -> Optimizer")
        self.optimizer = optimizer
        for name, pol in (("align_policy", align_policy), ("finetune_policy", finetune_policy)):
            if pol is not None and not isinstance(pol, FreezingPolicy):
                raise TypeError(f"{name} must be a pytl.freezing policy or None, got {type(pol).__name__}")
        self.align_policy, self.finetune_policy = align_policy, finetune_policy
        self.mmd_sigmas = mmd_sigmas
        self.mmd_estimator = check_choice(mmd_estimator, "mmd_estimator", ESTIMATORS)
        self.device = resolve_device(device, model)
        self.seed = check_int(seed, "seed", 0)
        self.progress = bool(progress)
        self.num_threads = check_optional_int(num_threads, "num_threads", 1)
        if distributed is not None and not isinstance(distributed, bool):
            raise TypeError(f"distributed must be None, True or False, got {distributed!r}")
        if distributed and not pd.is_initialized():
            raise ValueError("distributed=True needs an initialised torch.distributed process group (run under "
                             "torchrun and call torch.distributed.init_process_group or "
                             "pytl.distributed.init_from_env())")
        self.distributed = distributed
        self.mmd_scope = check_choice(mmd_scope, "mmd_scope", pd.MMD_SCOPES)
        if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a file path or None, got {type(checkpoint).__name__}")
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.amp = check_bool(amp, "amp")
        self.finetune_validation = None if finetune_validation is None else check_float(
            finetune_validation, "finetune_validation", 0.0, 1.0, strict_min=True, strict_max=True)
        self.patience = check_optional_int(patience, "patience", 1)
        if self.patience is not None and self.finetune_validation is None:
            raise ValueError(f"patience={self.patience} needs finetune_validation (the held-out fraction of the "
                             "target labels whose loss it watches); pass finetune_validation=0.2, say")
        #: after fine-tuning with finetune_validation: the epoch (record "epoch") whose weights were restored
        self.best_epoch: int | None = None
        #: after fine-tuning: whether patience stopped it before finetune_epochs
        self.stopped_early = False
        self._rank, self._world = 0, 1  # set at the start of each fit/align/finetune (ddp.setup_ranks)
        self.history: dict[str, list[dict[str, Any]]] = {"align": [], "finetune": []}
        #: per stage, the freezing summary (trainable/frozen counts and lr per block) at its start
        self.policy_summary: dict[str, str] = {}
        self._sample_shape: tuple[int, ...] | None = None
        self.label = ""  # prefix of the progress bar ("mmd: align"), set by compare_strategies

    # ------------------------------------------------------------------------------------ public API

    def fit(self, source: Any, target_unlabeled: Any = None, target_labeled: Any = None, *,
            eval_data: EvalData = None, resume_from: str | os.PathLike | None = None) -> TwoStageTrainer:
        """Both stages: ``align(source, target_unlabeled)`` then, if given, ``finetune(target_labeled)``.

        All inputs are checked before the first step. ``resume_from``: a checkpoint file of this
        trainer's settings; training continues after its last epoch (a fine-tuning checkpoint skips
        stage 1) and, for array inputs, ends with the weights of an uninterrupted run."""
        src, tu, tl, ev, val = prepare(self, source, target_unlabeled, target_labeled, eval_data, stage="fit")
        ckpt = read_checkpoint(self, resume_from)
        if ckpt is not None and ckpt["stage"] == "finetune" and tl is None:
            raise ValueError(f"resume_from={os.fspath(resume_from)!r} is a fine-tuning checkpoint: pass target_labeled")
        if ckpt is None or ckpt["stage"] == "align":
            run_stage(self, AlignStage(self, src, tu), ev, ckpt)
            ckpt = None
        if tl is not None:
            run_stage(self, FinetuneStage(self, tl, val), ev, ckpt)
        return self

    def align(self, source: Any, target_unlabeled: Any = None, *, eval_data: EvalData = None,
              resume_from: str | os.PathLike | None = None) -> list[dict[str, Any]]:
        """Stage 1 only; returns its per-epoch history. ``lambda_mmd=0`` trains on the source alone."""
        src, tu, _, ev, _ = prepare(self, source, target_unlabeled, None, eval_data, stage="align")
        ckpt = read_checkpoint(self, resume_from)
        if ckpt is not None and ckpt["stage"] != "align":
            raise ValueError(f"resume_from={os.fspath(resume_from)!r} is a fine-tuning checkpoint: resume it with "
                             "fit() or finetune()")
        return run_stage(self, AlignStage(self, src, tu), ev, ckpt)

    def finetune(self, target_labeled: Any, *, eval_data: EvalData = None,
                 resume_from: str | os.PathLike | None = None) -> list[dict[str, Any]]:
        """Stage 2 only (on the current model); returns its per-epoch history. ``resume_from``: a
        fine-tuning checkpoint continues; a stage-1 checkpoint provides the weights to fine-tune."""
        _, _, tl, ev, val = prepare(self, None, None, target_labeled, eval_data, stage="finetune")
        ckpt = read_checkpoint(self, resume_from)
        if ckpt is not None and ckpt["stage"] == "align":
            self._require_model().load_state_dict(ckpt["model"])
            self.history = {"align": ckpt["history"]["align"] + ckpt["records"],
                            "finetune": ckpt["history"]["finetune"]}
            ckpt = None
        return run_stage(self, FinetuneStage(self, tl, val), ev, ckpt)

    def check_inputs(self, source: Any, target_unlabeled: Any = None, target_labeled: Any = None, *,
                     eval_data: EvalData = None) -> None:
        """Every check ``fit`` makes before its first step (data, labels, shapes, the model against the
        data), without training; builds the default model when there is none. For callers such as
        ``compare_strategies`` that train several trainers and want every error before the first."""
        prepare(self, source, target_unlabeled, target_labeled, eval_data, stage="fit")

    def predict_proba(self, X: Any, batch_size: int = 4096) -> Tensor:
        """Class probabilities (N, C) on the CPU, computed in eval mode."""
        return predict_proba(self._require_model(), self._features(X, "X"), self.device, batch_size)

    def predict(self, X: Any, batch_size: int = 4096) -> Tensor:
        """Predicted class indices (N,)."""
        return self.predict_proba(X, batch_size).argmax(1)

    def score(self, X: Any, y: Any) -> float:
        """Accuracy on (X, y)."""
        x = self._features(X, "X")
        labels = inp.as_labels(y, "y", num_samples=x.shape[0])
        return float((self.predict(x) == labels).double().mean())

    @torch.no_grad()
    def embedding_mmd2(self, X_source: Any, X_target: Any, max_samples: int = 2048) -> float:
        """MMD² between the source and target embeddings (median-heuristic ladder), on a fixed subsample.

        A quick transfer diagnostic: small after alignment means the domains look alike to the head."""
        model = self._require_model()
        if not hasattr(model, "embed"):
            raise TypeError("embedding_mmd2 needs a model with embed(x) (a TransferModel)")
        zs = embed_all(model, self._features(X_source, "X_source")[:max_samples], self.device)
        zt = embed_all(model, self._features(X_target, "X_target")[:max_samples], self.device)
        return float(mmd2(zs.double(), zt.double()))

    def __repr__(self) -> str:
        alignment = "" if self.alignment == "mmd" else f", alignment={self.alignment!r}"
        return (f"TwoStageTrainer(lambda_mmd={self.lambda_mmd:g}{alignment}, lambda_schedule={self.lambda_schedule!r}, "
                f"align_epochs={self.align_epochs}, finetune_epochs={self.finetune_epochs}, lr={self.lr:g}, "
                f"finetune_lr={self.finetune_lr:g}, batch_size={self.batch_size}, device={str(self.device)!r}, "
                f"seed={self.seed}{self._early_stopping_repr()})")

    def _early_stopping_repr(self) -> str:
        if self.finetune_validation is None:
            return ""
        return f", finetune_validation={self.finetune_validation:g}, patience={self.patience}"

    # ------------------------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _rng(self, offset: int, per_rank: bool = False) -> Iterator[torch.Generator]:
        """Seed the global RNGs (dropout, init) inside a fork, so the user's RNG state is untouched;
        apply num_threads for the duration. The returned generator (data order) is the same on every
        rank; with per_rank, the global RNG (dropout) differs between ranks, whose samples differ."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed * 1009 + offset + (7919 * self._rank if per_rank else 0))
                yield torch.Generator().manual_seed(self.seed * 1009 + offset)
        finally:
            torch.set_num_threads(threads)

    def _features(self, X: Any, name: str) -> Tensor:
        x = inp.as_features(X, name)
        if self._sample_shape is not None and tuple(x.shape[1:]) != self._sample_shape:
            raise ValueError(f"{name} has samples of shape {tuple(x.shape[1:])}; the model was trained on "
                             f"{self._sample_shape}")
        return x.to(self._param_dtype())

    def _param_dtype(self) -> torch.dtype:
        return param_dtype(self.model)

    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("no model yet: call fit/align first or pass a model")
        return self.model
