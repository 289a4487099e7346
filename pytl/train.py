"""The two-stage trainer: align domains with CE + λ·MMD², then fine-tune on the few target labels.

Stage 1 (``align``) trains on labelled source batches and unlabelled target batches: the source
classification loss keeps the features discriminative, the MMD² term between source and target
embeddings pulls the two domains together (the Ben-David bound's divergence term). Stage 2
(``finetune``) adapts the model to the labelled target samples under a freezing policy. Every MMD
is the fused ``pytl.mmd2`` op.

Under torchrun (torch.distributed initialised) the trainer runs with DistributedDataParallel: each
rank trains on its shard of every global batch, the MMD² is that of the global batch (or, with
``mmd_scope="per_rank"``, of each rank's shard), metrics are reduced over ranks and only rank 0
prints and writes checkpoints (docs/distributed.md). ``checkpoint=`` writes one after every epoch and
``fit(..., resume_from=path)`` continues from it, in a single process or on any number of ranks.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from pytl import _inputs as inp
from pytl import distributed as pd
from pytl._progress import Progress
from pytl.freezing import BatchNormPolicy, FreezingPolicy, param_groups, summary
from pytl.models import Standardize, default_model
from pytl.ops import mmd2

__all__ = ["LAMBDA_SCHEDULES", "TwoStageTrainer", "eval_mode", "lambda_factor", "resolve_device"]

LAMBDA_SCHEDULES = ("constant", "linear", "dann")
OPTIMIZERS = ("adam", "adamw", "sgd")
CHECKPOINT_FORMAT = "pytl.TwoStageTrainer.checkpoint/1"

ScheduleLike = Union[str, Callable[[float], float]]
EvalData = Union[None, tuple[Any, Any], DataLoader, Mapping[str, Any]]
OptimizerLike = Union[str, Callable[[list[dict]], torch.optim.Optimizer]]


def lambda_factor(schedule: ScheduleLike, progress: float) -> float:
    """Multiplier of λ at training progress p ∈ [0, 1].

    "constant": 1. "linear": p. "dann": 2/(1+exp(−10p)) − 1 (Ganin et al.): MMD starts weak while the
    features are still random and reaches full strength after about a third of the training. A
    callable gets p and returns the multiplier."""
    if callable(schedule):
        return float(schedule(progress))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return progress
    if schedule == "dann":
        return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0
    raise ValueError(f"lambda_schedule must be one of {LAMBDA_SCHEDULES} or a callable, got {schedule!r}")


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_float(value: Any, name: str, minimum: float, strict: bool) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (v > minimum if strict else v >= minimum)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def resolve_device(device: Any, model: nn.Module | None = None) -> torch.device:
    """None: where the model lives (CPU for a new model); "auto": CUDA when available."""
    if device is None:
        p = next(model.parameters(), None) if model is not None else None
        return p.device if p is not None else torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N', 'auto' or a torch.device, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch.cuda.is_available() is False")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


class _ArrayBatches:
    """Shuffled index batches over an in-memory array, reshuffled each pass (seeded)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, min_last: int = 2) -> None:
        self.n, self.batch_size, self.gen, self.min_last = n, batch_size, generator, min_last

    def epoch(self) -> list[Tensor]:
        perm = torch.randperm(self.n, generator=self.gen)
        out = list(perm.split(self.batch_size))
        # a batch of one breaks BatchNorm and the unbiased MMD; under W ranks the last batch is split
        # W ways, so it needs 2·W samples (min_last)
        if len(out) > 1 and out[-1].numel() < self.min_last:
            out.pop()
        return out


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
    checkpoint: a file written (rank 0, atomically) after every epoch: model state_dict (no DDP
    ``module.`` prefix), optimizer, RNG and data-order state, history; ``fit``/``align``/``finetune``
    take ``resume_from=`` such a file, from a run on any number of ranks.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        num_classes: int | None = None,
        lambda_mmd: float = 0.5,
        lambda_schedule: ScheduleLike = "constant",
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
    ) -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
        self.model = model
        self.num_classes = None if num_classes is None else _check_int(num_classes, "num_classes", 2)
        self.lambda_mmd = _check_float(lambda_mmd, "lambda_mmd", 0.0, strict=False)
        if not callable(lambda_schedule) and lambda_schedule not in LAMBDA_SCHEDULES:
            raise ValueError(f"lambda_schedule must be one of {LAMBDA_SCHEDULES} or a callable, got {lambda_schedule!r}")
        self.lambda_schedule = lambda_schedule
        self.align_epochs = _check_int(align_epochs, "align_epochs", 0)
        self.finetune_epochs = _check_int(finetune_epochs, "finetune_epochs", 0)
        self.lr = _check_float(lr, "lr", 0.0, strict=True)
        self.finetune_lr = self.lr if finetune_lr is None else _check_float(finetune_lr, "finetune_lr", 0.0, strict=True)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.target_batch_size = self.batch_size if target_batch_size is None else _check_int(
            target_batch_size, "target_batch_size", 1)
        self.finetune_batch_size = self.batch_size if finetune_batch_size is None else _check_int(
            finetune_batch_size, "finetune_batch_size", 1)
        self.weight_decay = _check_float(weight_decay, "weight_decay", 0.0, strict=False)
        if not callable(optimizer) and optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS} or a callable(param_groups) -> Optimizer, got {optimizer!r}")
        self.optimizer = optimizer
        for name, pol in (("align_policy", align_policy), ("finetune_policy", finetune_policy)):
            if pol is not None and not isinstance(pol, FreezingPolicy):
                raise TypeError(f"{name} must be a pytl.freezing policy or None, got {type(pol).__name__}")
        self.align_policy = align_policy
        self.finetune_policy = finetune_policy
        if mmd_estimator not in ("biased", "unbiased"):
            raise ValueError(f"mmd_estimator must be 'biased' or 'unbiased', got {mmd_estimator!r}")
        self.mmd_sigmas = mmd_sigmas
        self.mmd_estimator = mmd_estimator
        self.device = resolve_device(device, model)
        self.seed = _check_int(seed, "seed", 0)
        self.progress = bool(progress)
        self.num_threads = None if num_threads is None else _check_int(num_threads, "num_threads", 1)
        if distributed is not None and not isinstance(distributed, bool):
            raise TypeError(f"distributed must be None, True or False, got {distributed!r}")
        if distributed and not pd.is_initialized():
            raise ValueError("distributed=True needs an initialised torch.distributed process group (run under "
                             "torchrun and call torch.distributed.init_process_group or "
                             "pytl.distributed.init_from_env())")
        self.distributed = distributed
        if mmd_scope not in pd.MMD_SCOPES:
            raise ValueError(f"mmd_scope must be one of {pd.MMD_SCOPES}, got {mmd_scope!r}")
        self.mmd_scope = mmd_scope
        if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a file path or None, got {type(checkpoint).__name__}")
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self._rank, self._world = 0, 1  # set at the start of each fit/align/finetune (_setup_ranks)
        self.history: dict[str, list[dict[str, Any]]] = {"align": [], "finetune": []}
        #: per stage, the freezing summary (trainable/frozen counts and lr per block) at its start
        self.policy_summary: dict[str, str] = {}
        self._sample_shape: tuple[int, ...] | None = None
        self.label = ""  # prefix of the progress bar ("mmd: align"), set by compare_strategies

    # ------------------------------------------------------------------------------------ public API

    def fit(
        self,
        source: Any,
        target_unlabeled: Any = None,
        target_labeled: Any = None,
        *,
        eval_data: EvalData = None,
        resume_from: str | os.PathLike | None = None,
    ) -> TwoStageTrainer:
        """Both stages: ``align(source, target_unlabeled)`` then, if given, ``finetune(target_labeled)``.

        All inputs are checked before the first step. ``resume_from``: a checkpoint file of this
        trainer's settings; training continues after its last epoch (a fine-tuning checkpoint skips
        stage 1) and, for array inputs, ends with the weights of an uninterrupted run."""
        src, tu, tl, ev = self._prepare(source, target_unlabeled, target_labeled, eval_data, stage="fit")
        ckpt = self._read_checkpoint(resume_from)
        if ckpt is not None and ckpt["stage"] == "finetune" and tl is None:
            raise ValueError(f"resume_from={os.fspath(resume_from)!r} is a fine-tuning checkpoint: pass target_labeled")
        if ckpt is None or ckpt["stage"] == "align":
            self._align(src, tu, ev, ckpt)
            ckpt = None
        if tl is not None:
            self._finetune(tl, ev, ckpt)
        return self

    def align(self, source: Any, target_unlabeled: Any = None, *, eval_data: EvalData = None,
              resume_from: str | os.PathLike | None = None) -> list[dict[str, Any]]:
        """Stage 1 only; returns its per-epoch history. ``lambda_mmd=0`` trains on the source alone."""
        src, tu, _, ev = self._prepare(source, target_unlabeled, None, eval_data, stage="align")
        ckpt = self._read_checkpoint(resume_from)
        if ckpt is not None and ckpt["stage"] != "align":
            raise ValueError(f"resume_from={os.fspath(resume_from)!r} is a fine-tuning checkpoint: resume it with "
                             "fit() or finetune()")
        return self._align(src, tu, ev, ckpt)

    def finetune(self, target_labeled: Any, *, eval_data: EvalData = None,
                 resume_from: str | os.PathLike | None = None) -> list[dict[str, Any]]:
        """Stage 2 only (on the current model); returns its per-epoch history. ``resume_from``: a
        fine-tuning checkpoint continues; a stage-1 checkpoint provides the weights to fine-tune."""
        _, _, tl, ev = self._prepare(None, None, target_labeled, eval_data, stage="finetune")
        ckpt = self._read_checkpoint(resume_from)
        if ckpt is not None and ckpt["stage"] == "align":
            self._require_model().load_state_dict(ckpt["model"])
            self.history = {"align": ckpt["history"]["align"] + ckpt["records"],
                            "finetune": ckpt["history"]["finetune"]}
            ckpt = None
        return self._finetune(tl, ev, ckpt)

    def check_inputs(self, source: Any, target_unlabeled: Any = None, target_labeled: Any = None, *,
                     eval_data: EvalData = None) -> None:
        """Every check ``fit`` makes before its first step (data, labels, shapes, the model against the
        data), without training; builds the default model when there is none. For callers such as
        ``compare_strategies`` that train several trainers and want every error before the first."""
        self._prepare(source, target_unlabeled, target_labeled, eval_data, stage="fit")

    @torch.no_grad()
    def predict_proba(self, X: Any, batch_size: int = 4096) -> Tensor:
        """Class probabilities (N, C) on the CPU, computed in eval mode."""
        model = self._require_model()
        x = self._features(X, "X")
        with eval_mode(model):
            out = [F.softmax(model(xb.to(self.device)).float(), dim=1).cpu() for xb in x.split(batch_size)]
        return torch.cat(out)

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
        zs = self._embed_all(self._features(X_source, "X_source")[:max_samples])
        zt = self._embed_all(self._features(X_target, "X_target")[:max_samples])
        return float(mmd2(zs.double(), zt.double()))

    # ------------------------------------------------------------------------------------ checking

    def _features(self, X: Any, name: str) -> Tensor:
        x = inp.as_features(X, name)
        if self._sample_shape is not None and tuple(x.shape[1:]) != self._sample_shape:
            raise ValueError(f"{name} has samples of shape {tuple(x.shape[1:])}; the model was trained on "
                             f"{self._sample_shape}")
        return x.to(self._param_dtype())

    def _param_dtype(self) -> torch.dtype:
        p = next(self.model.parameters(), None) if self.model is not None else None
        return p.dtype if p is not None and p.dtype.is_floating_point else torch.float32

    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("no model yet: call fit/align first or pass a model")
        return self.model

    def _prepare(self, source: Any, target_unlabeled: Any, target_labeled: Any, eval_data: EvalData,
                 stage: str) -> tuple[Any, Any, Any, dict[str, Any]]:
        """Convert and check every input, build the default model if needed, check labels against it."""
        self._setup_ranks()
        needs_target = stage in ("fit", "align") and self.lambda_mmd > 0 and self.align_epochs > 0
        src = inp.as_labeled(source, "source") if source is not None else None
        if stage in ("fit", "align") and src is None:
            raise ValueError("source (X, y) is required for stage 1")
        if needs_target and target_unlabeled is None:
            raise ValueError("target_unlabeled is required for MMD alignment (lambda_mmd > 0); "
                             "pass lambda_mmd=0 to train on the source alone")
        tu = inp.as_unlabeled(target_unlabeled, "target_unlabeled") if target_unlabeled is not None else None
        if stage == "finetune" and target_labeled is None:
            raise ValueError("target_labeled (X, y) is required for fine-tuning")
        tl = inp.as_labeled(target_labeled, "target_labeled") if target_labeled is not None else None
        ev = self._eval_sets(eval_data)

        shapes: dict[str, tuple[int, ...]] = {}
        if src is not None:
            shapes["source"] = inp.sample_shape(src, True, "source")
        if tu is not None:
            shapes["target_unlabeled"] = inp.sample_shape(tu, False, "target_unlabeled")
        if tl is not None:
            shapes["target_labeled"] = inp.sample_shape(tl, True, "target_labeled")
        for name, data in ev.items():
            shapes[f"eval_data[{name!r}]"] = inp.sample_shape(data, True, f"eval_data[{name!r}]")
        ref_name, ref_shape = next(iter(shapes.items()))
        if self._sample_shape is not None and stage == "finetune":
            ref_name, ref_shape = "the data the model was trained on", self._sample_shape
        for name, shape in shapes.items():
            if shape != ref_shape:
                raise ValueError(
                    f"feature size mismatch: {name} has samples of shape {inp.format_shape(shape)} but "
                    f"{ref_name} has {inp.format_shape(ref_shape)}; both domains must share a feature space"
                )

        # The model is only kept once every check has passed (a failed fit leaves the trainer as it was).
        model = self.model
        if model is None:
            classes = self.num_classes or self._infer_num_classes(src, tl, ev)
            stats = Standardize.fit(*[self._some_features(d, lab) for d, lab in ((src, True), (tu, False), (tl, True))
                                      if d is not None])
            with self._rng(offset=0):
                model = default_model(inp.prod(ref_shape), classes, standardize=stats)
        model.to(self.device)
        num_classes = self._model_num_classes(model, ref_shape, src if src is not None else tl)
        if self.num_classes is not None and self.num_classes != num_classes:
            raise ValueError(f"num_classes={self.num_classes} but the model outputs {num_classes} classes")
        if needs_target and not (hasattr(model, "embed") and hasattr(model, "head")):
            raise TypeError(
                f"MMD alignment needs a model with embed(x) and head(z), got {type(model).__name__}; "
                "wrap it with TransferModel(encoder, head) or TransferModel.from_backbone(model, num_classes)"
            )
        for name, data in [("source", src), ("target_labeled", tl)] + [(f"eval_data[{k!r}]", v) for k, v in ev.items()]:
            if isinstance(data, tuple):
                inp.check_label_range(data[1], num_classes, f"{name}[1] (y)")
        if tl is not None:
            self._check_enough_labels(tl, num_classes)
        self.model, self.num_classes, self._sample_shape = model, num_classes, ref_shape
        dtype = self._param_dtype()

        def cast(d: Any) -> Any:
            if isinstance(d, tuple):
                return d[0].to(dtype), d[1]
            return d.to(dtype) if isinstance(d, Tensor) else d

        def shard(d: Any, name: str, batch_size: int) -> Any:
            """Under DDP: a DataLoader gets a DistributedSampler; arrays are split per batch (_batches)."""
            if d is None or self._world == 1:
                return d
            if isinstance(d, DataLoader):
                return pd.distributed_loader(d, self._rank, self._world, self.seed, name)
            n = min(batch_size, d[0].shape[0] if isinstance(d, tuple) else d.shape[0])
            if n < 2 * self._world:
                raise ValueError(f"{name}: batches of {n} samples leave some of the {self._world} ranks fewer than 2 "
                                 f"samples; use a batch size (and data) of at least {2 * self._world}")
            return d

        # eval_data is not sharded: each rank evaluates its part of arrays, a DataLoader as given (_evaluate)
        return (shard(None if src is None else cast(src), "source", self.batch_size),
                shard(None if tu is None else cast(tu), "target_unlabeled", self.target_batch_size),
                shard(None if tl is None else cast(tl), "target_labeled", self.finetune_batch_size),
                {k: cast(v) for k, v in ev.items()})

    def _setup_ranks(self) -> None:
        """This process's rank and the number of ranks that train together (1: no DDP)."""
        use = self.distributed if self.distributed is not None else pd.is_initialized() and pd.world_size() > 1
        if use and not pd.is_initialized():
            raise ValueError("distributed=True but torch.distributed is no longer initialised")
        self._rank, self._world = (pd.rank(), pd.world_size()) if use else (0, 1)

    def _eval_sets(self, eval_data: EvalData) -> dict[str, Any]:
        if eval_data is None:
            return {}
        if isinstance(eval_data, Mapping):
            return {str(k): inp.as_labeled(v, f"eval_data[{k!r}]") for k, v in eval_data.items()}
        return {"target": inp.as_labeled(eval_data, "eval_data")}

    @staticmethod
    def _some_features(data: Any, labeled: bool) -> Tensor:
        """All features of an array input; the first batch of a DataLoader (for input statistics)."""
        if isinstance(data, DataLoader):
            return inp.first_batch(data, labeled, "a DataLoader")[0].float()
        return data[0] if labeled else data

    @staticmethod
    def _infer_num_classes(*datas: Any) -> int:
        top = -1
        for data in datas:
            items = data.values() if isinstance(data, dict) else [data]
            for d in items:
                if isinstance(d, tuple):
                    top = max(top, int(d[1].max()))
                elif isinstance(d, DataLoader):
                    _, y = inp.first_batch(d, True, "a DataLoader")
                    top = max(top, int(inp.as_labels(y, "labels").max()))
        if top < 1:
            raise ValueError(f"the labels hold a single class ({max(top, 0)}); classification needs at least 2 "
                             "(pass num_classes= if the data simply lacks the others)")
        return top + 1

    def _model_num_classes(self, model: nn.Module, shape: tuple[int, ...], data: Any) -> int:
        """Run the model once on two samples (eval mode, no grad) to check it accepts the data."""
        if isinstance(data, tuple):
            probe = data[0][:2]
        else:
            probe, _ = inp.first_batch(data, True, "the labelled data")
            probe = probe[:2]
        p = next(model.parameters(), None)
        probe = probe.to(device=self.device, dtype=p.dtype if p is not None and p.dtype.is_floating_point else None)
        try:
            with torch.no_grad(), eval_mode(model):
                out = model(probe)
        except Exception as e:
            raise ValueError(f"the model cannot take samples of shape {inp.format_shape(shape)}: "
                             f"{type(e).__name__}: {e}") from e
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != probe.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the model must return logits of shape (N, num_classes), got {got}")
        if out.shape[1] < 2:
            raise ValueError(f"the model outputs {out.shape[1]} logit(s); classification needs at least 2 classes")
        return int(out.shape[1])

    @staticmethod
    def _check_enough_labels(tl: Any, num_classes: int) -> None:
        n = inp.num_samples(tl)
        if n is not None and n < num_classes:
            raise ValueError(f"target_labeled has {n} samples, fewer than the {num_classes} classes; "
                             "fine-tuning needs at least one label per class")
        if isinstance(tl, tuple):
            missing = sorted(set(range(num_classes)) - set(tl[1].unique().tolist()))
            if missing:
                warnings.warn(f"target_labeled has no sample of class(es) {missing}; fine-tuning cannot learn them "
                              "from the target", stacklevel=4)

    # ------------------------------------------------------------------------------------ training

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

    def _make_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        if callable(self.optimizer):
            opt = self.optimizer(groups)
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"optimizer callable must return a torch.optim.Optimizer, got {type(opt).__name__}")
            return opt
        if self.optimizer == "adam":
            return torch.optim.Adam(groups)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(groups)
        return torch.optim.SGD(groups, momentum=0.9)

    @staticmethod
    def _with_bn(policy: FreezingPolicy | None) -> FreezingPolicy:
        bn = BatchNormPolicy("frozen")
        if policy is None:
            return bn
        if any(isinstance(p, BatchNormPolicy) for p in policy.policies()):
            return policy
        return policy + bn

    def _batches(self, data: Any, batch_size: int, gen: torch.Generator, labeled: bool, name: str,
                 min_size: int = 2, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor | None, int]]:
        """One pass over the data as (x, y, n) batches on the device (training skips batches of one).

        Under DDP, x and y are this rank's part of a global batch of n samples: arrays are split
        batch by batch (pd.shard), a DataLoader has a DistributedSampler (equal parts)."""
        dtype = self._param_dtype()
        if isinstance(data, DataLoader):
            assert self._sample_shape is not None and self.num_classes is not None
            if isinstance(data.sampler, DistributedSampler):
                data.sampler.set_epoch(epoch)  # a new shuffle per pass, the same on every rank
            for batch in data:
                x, y = inp.split_batch(batch, labeled, name)
                x, y = inp.check_batch(x, y, self.num_classes, self._sample_shape, name)
                if x.shape[0] < min_size:
                    continue
                yield x.to(self.device, dtype), (None if y is None else y.to(self.device)), x.shape[0] * self._world
            return
        x, y = (data if labeled else (data, None))
        for idx in _ArrayBatches(x.shape[0], batch_size, gen, min_last=2 * self._world).epoch():
            n = idx.numel()
            if self._world > 1:
                idx = pd.shard(idx, self._rank, self._world)
            yield x[idx].to(self.device, dtype), (None if y is None else y[idx].to(self.device)), n

    def _align(self, src: Any, tu: Any, ev: dict[str, Any],
               resume: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        model = self._require_model()
        policy = self._with_bn(self.align_policy)
        use_mmd = self.lambda_mmd > 0 and tu is not None
        flags = [(p, p.requires_grad) for p in model.parameters()]
        with self._rng(offset=1, per_rank=True) as gen:
            opt, start_state, first, records = self._start_stage("align", model, policy, self.lr, gen, resume)
            steps_per_epoch = self._steps_per_epoch(src, self.batch_size)
            total = max(1, self.align_epochs * steps_per_epoch)
            target = _TargetBatches(self, tu, gen) if use_mmd else None
            step, lam = 0, 0.0
            if resume is not None:
                step, lam = resume["step"], resume["lambda"]
                if target is not None and resume["target"] is not None:
                    target.load_state(resume["target"])
            bar = Progress(self.align_epochs - first, f"{self.label}align", self.progress and self._rank == 0)
            step_fn: nn.Module | None = None
            epoch = first
            with self._stage_guard("align", model, policy, flags, bar, lambda: epoch):
                for epoch in range(first, self.align_epochs):
                    unfrozen = policy.on_epoch_start(model, epoch, opt)
                    if step_fn is None or unfrozen:
                        step_fn = self._step_module(model)
                    model.train()
                    sums = _Sums()
                    for xs, ys, n in self._batches(src, self.batch_size, gen, labeled=True, name="source", epoch=epoch):
                        assert ys is not None
                        lam = self.lambda_mmd * lambda_factor(self.lambda_schedule, step / total) if use_mmd else 0.0
                        if use_mmd:
                            assert target is not None
                            xt, nt = target.next()
                            logits, z = step_fn(xs, xt)  # one pass: BatchNorm sees both domains
                            zs, zt = z[: xs.shape[0]], z[xs.shape[0]:]
                            ce = F.cross_entropy(logits, ys)
                            m = self._mmd2(zs, zt, n, nt)
                            loss = ce + lam * m
                        else:
                            logits, _ = step_fn(xs)
                            ce = F.cross_entropy(logits, ys)
                            m, loss = None, ce
                        pen = policy.penalty(model)
                        if pen is not None:
                            loss = loss + pen
                        opt.zero_grad(set_to_none=True)
                        self._objective(loss, ce, lam, m, pen, xs.shape[0], n).backward()
                        opt.step()
                        step += 1
                        sums.add(xs.shape[0], loss=loss, ce=ce, mmd2=m, penalty=pen,
                                 correct=(logits.argmax(1) == ys).sum())
                    rec: dict[str, Any] = {"stage": "align", "epoch": epoch, **self._means(sums), "lambda": lam}
                    _check_finite(rec, "lower lr or lambda_mmd")
                    self._end_epoch(rec, unfrozen, ev, records)
                    bar.update(1, **{k: rec[k] for k in ("loss", "mmd2") if rec.get(k) is not None})
                    self._save_checkpoint("align", epoch + 1, model, start_state, opt, gen, records, step=step,
                                          lam=lam, target=None if target is None else target.state())
        model.eval()
        self.history["align"].extend(records)
        return records

    def _finetune(self, tl: Any, ev: dict[str, Any], resume: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        model = self._require_model()
        policy = self._with_bn(self.finetune_policy)
        flags = [(p, p.requires_grad) for p in model.parameters()]
        with self._rng(offset=2, per_rank=True) as gen:
            opt, start_state, first, records = self._start_stage("finetune", model, policy, self.finetune_lr, gen,
                                                                 resume)
            if not any(p.requires_grad for p in model.parameters()):
                raise ValueError(f"finetune_policy {policy!r} freezes every parameter; nothing would train")
            bar = Progress(self.finetune_epochs - first, f"{self.label}finetune", self.progress and self._rank == 0)
            step_fn: nn.Module | None = None
            epoch = first
            with self._stage_guard("finetune", model, policy, flags, bar, lambda: epoch):
                for epoch in range(first, self.finetune_epochs):
                    unfrozen = policy.on_epoch_start(model, epoch, opt)
                    if step_fn is None or unfrozen:
                        step_fn = self._step_module(model)
                    model.train()
                    sums = _Sums()
                    for x, y, n in self._batches(tl, self.finetune_batch_size, gen, labeled=True, name="target_labeled",
                                                 epoch=epoch):
                        assert y is not None
                        logits, _ = step_fn(x)
                        ce = F.cross_entropy(logits, y)
                        pen = policy.penalty(model)
                        loss = ce if pen is None else ce + pen
                        opt.zero_grad(set_to_none=True)
                        self._objective(loss, ce, 0.0, None, pen, x.shape[0], n).backward()
                        opt.step()
                        sums.add(x.shape[0], loss=loss, ce=ce, penalty=pen, correct=(logits.argmax(1) == y).sum())
                    rec: dict[str, Any] = {"stage": "finetune", "epoch": epoch, **self._means(sums)}
                    _check_finite(rec, "lower finetune_lr")
                    self._end_epoch(rec, unfrozen, ev, records)
                    bar.update(1, loss=rec["loss"])
                    self._save_checkpoint("finetune", epoch + 1, model, start_state, opt, gen, records)
        model.eval()
        self.history["finetune"].extend(records)
        return records

    @contextlib.contextmanager
    def _stage_guard(self, stage: str, model: nn.Module, policy: FreezingPolicy, flags: list[tuple[Tensor, bool]],
                     bar: Progress, epoch: Callable[[], int]) -> Iterator[None]:
        """A stage's epoch loop: a failed collective becomes a CollectiveError (at the epoch ``epoch()``
        returns); afterwards, whatever happened, the bar closes and the policy's freezing is undone."""
        try:
            yield
        except Exception as e:
            self._raise_if_collective(e, stage, epoch())
            raise
        finally:
            bar.close()
            policy.release(model)
            for p, flag in flags:  # the policy holds for its stage only
                p.requires_grad_(flag)

    def _end_epoch(self, rec: dict[str, Any], unfrozen: Any, ev: dict[str, Any],
                   records: list[dict[str, Any]]) -> None:
        """Completes an epoch's record (what the policy unfroze, the eval metrics) and keeps it."""
        if unfrozen:
            rec["unfrozen"] = unfrozen
        rec.update(self._evaluate(ev))
        records.append(rec)

    # ------------------------------------------------------------------------------------ ranks and checkpoints

    def _step_module(self, model: nn.Module) -> nn.Module:
        """The forward of a training step: wrapped in DDP under torch.distributed (rebuilt when a
        policy unfreezes parameters, since DDP fixes its parameter set when it is built)."""
        return pd.wrap_ddp(model, self.device) if self._world > 1 else pd.TrainStep(model)

    def _mmd2(self, zs: Tensor, zt: Tensor, ns: int, nt: int) -> Tensor:
        """Stage 1's MMD²: of the global batch (every rank's embeddings, gathered) or of this rank's shard.
        ns, nt: the global batch sizes, whose split over the ranks every rank knows (pd.shard_sizes)."""
        if self._world > 1 and self.mmd_scope == "global":
            sizes = (pd.shard_sizes(ns, self._world), pd.shard_sizes(nt, self._world))
            zs, zt = pd.gather_samples(zs, zt, dist.group.WORLD, sizes=sizes)
        sig = self.mmd_sigmas(zs.detach(), zt.detach()) if callable(self.mmd_sigmas) else self.mmd_sigmas
        return mmd2(zs, zt, sig, estimator=self.mmd_estimator)

    def _objective(self, loss: Tensor, ce: Tensor, lam: float, m: Tensor | None, pen: Tensor | None,
                   n_local: int, n_global: int) -> Tensor:
        """What this rank back-propagates: ``loss`` alone; under DDP, a reweighting of its terms.

        DDP averages parameter gradients over the W ranks. So that the average is the gradient of
        the single-process loss, CE over the global batch + λ·MMD² + penalty: this rank's CE (a mean
        over its n_local samples) is weighted by W·n_local/n_global; the global MMD², the same on
        every rank but with gradients reaching only this rank's rows (pytl.distributed), by W; the
        penalty, a function of the shared weights, is the same on every rank and stays as it is."""
        if self._world == 1:
            return loss
        obj = ce * (n_local * self._world / n_global)
        if m is not None:
            obj = obj + (lam * self._world if self.mmd_scope == "global" else lam) * m
        return obj if pen is None else obj + pen

    def _means(self, sums: _Sums) -> dict[str, float | None]:
        return sums.means(self.device if self._world > 1 else None)

    def _raise_if_collective(self, exc: BaseException, stage: str, epoch: int) -> None:
        """A failed collective becomes a CollectiveError that says what probably happened and how to resume."""
        if self._world == 1 or isinstance(exc, pd.CollectiveError) or not pd.is_collective_failure(exc):
            return
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.checkpoint is not None and os.path.isfile(self.checkpoint):
            how = f"the last checkpoint is {self.checkpoint!r}: rerun with resume_from={self.checkpoint!r} to continue"
        else:
            how = "no checkpoint was written (pass checkpoint=PATH to be able to resume)"
        raise pd.CollectiveError(
            f"rank {self._rank} of {self._world}: {stage} epoch {epoch} stopped because a collective operation failed "
            f"({first_line}). Another rank has probably died (its own error is in its log) or stalled for longer "
            f"than the process-group timeout; {how}.") from exc

    def _start_stage(self, stage: str, model: nn.Module, policy: FreezingPolicy, lr: float, gen: torch.Generator,
                     resume: dict[str, Any] | None) -> tuple[torch.optim.Optimizer, Any, int, list[dict[str, Any]]]:
        """Apply the policy and build the optimizer; when resuming, restore everything the checkpoint
        holds. Returns (optimizer, the stage's starting weights for checkpoints, first epoch, records)."""
        if self._world > 1:  # checkpoints take a collective (the ranks' RNG states): all ranks or none
            have = pd.gather_objects(self.checkpoint is not None)
            if len(set(have)) > 1:
                raise ValueError(f"checkpoint must be given on every rank or on none (rank 0 alone writes it); "
                                 f"given on ranks {[r for r, h in enumerate(have) if h]} of {self._world}")
        if resume is not None:  # policies such as L2SP snapshot the weights the stage started from
            model.load_state_dict(resume["stage_start_model"])
        start_state = None
        if self.checkpoint is not None:
            start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        policy.apply(model)
        opt = self._make_optimizer(param_groups(model, lr, policy, self.weight_decay))
        self.policy_summary[stage] = f"policy: {policy!r}\n{summary(model, opt)}"
        if resume is None:
            return opt, start_state, 0, []
        first = int(resume["epoch"])
        for e in range(first):  # replay the policy's schedule (gradual unfreezing) up to the checkpoint
            policy.on_epoch_start(model, e, opt)
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        gen.set_state(resume["generator"])
        cpu, cuda = resume["rng"][self._rank % len(resume["rng"])]  # dropout streams, per rank
        torch.set_rng_state(cpu)
        if cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda, self.device)
        self.history = {k: list(v) for k, v in resume["history"].items()}
        self.policy_summary = {**resume["policy_summary"], stage: self.policy_summary[stage]}
        return opt, start_state, first, list(resume["records"])

    def _save_checkpoint(self, stage: str, epoch: int, model: nn.Module, start_state: Any,
                         opt: torch.optim.Optimizer, gen: torch.Generator, records: list[dict[str, Any]],
                         step: int = 0, lam: float = 0.0, target: dict[str, Any] | None = None) -> None:
        """After each epoch: rank 0 writes everything a resumed run needs (atomically: a crash while
        writing leaves the previous checkpoint). Plain types and tensors only (torch.load weights_only)."""
        if self.checkpoint is None:
            return
        rng = (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)
        rngs = pd.gather_objects(rng) if self._world > 1 else [rng]
        if self._rank != 0:
            return
        state = {
            "format": CHECKPOINT_FORMAT, "stage": stage, "epoch": epoch,
            "model": model.state_dict(),  # the unwrapped model: no DDP "module." prefix
            "stage_start_model": start_state, "optimizer": opt.state_dict(), "generator": gen.get_state(),
            "rng": rngs, "step": step, "lambda": lam, "target": target,
            "history": self.history, "records": records, "policy_summary": self.policy_summary,
            "num_classes": self.num_classes, "sample_shape": list(self._sample_shape or ()),
            "settings": self._settings(), "world_size": self._world,
        }
        path = os.path.abspath(self.checkpoint)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)

    def _settings(self) -> dict[str, Any]:
        """The settings a resumed run should share with the checkpoint's run (plain values, for comparison)."""
        def plain(v: Any) -> Any:
            if v is None or isinstance(v, (bool, int, float, str)):
                return v
            if isinstance(v, Tensor):
                return v.detach().cpu().tolist()
            if callable(v) and not isinstance(v, FreezingPolicy):
                return getattr(v, "__qualname__", type(v).__name__)
            return repr(v)

        keys = ("lambda_mmd", "lambda_schedule", "align_epochs", "finetune_epochs", "lr", "finetune_lr", "batch_size",
                "target_batch_size", "finetune_batch_size", "weight_decay", "optimizer", "align_policy",
                "finetune_policy", "mmd_sigmas", "mmd_estimator", "mmd_scope", "seed")
        return {k: plain(getattr(self, k)) for k in keys}

    def _read_checkpoint(self, path: Any) -> dict[str, Any] | None:
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
        if tuple(ckpt["sample_shape"]) != self._sample_shape or ckpt["num_classes"] != self.num_classes:
            raise ValueError(f"resume_from={path!r} was written for samples of shape "
                             f"{inp.format_shape(tuple(ckpt['sample_shape']))} and {ckpt['num_classes']} classes; this "
                             f"run has {inp.format_shape(self._sample_shape or ())} and {self.num_classes}")
        mine = self._settings()
        diff = {k: (v, mine.get(k)) for k, v in ckpt["settings"].items() if mine.get(k) != v}
        if diff:
            warnings.warn(f"resuming from {path!r} with settings that differ from its run (checkpoint, now): {diff}; "
                          "the result will differ from an uninterrupted run", stacklevel=3)
        return ckpt

    def _steps_per_epoch(self, data: Any, batch_size: int) -> int:
        if isinstance(data, DataLoader):
            try:
                return len(data)
            except TypeError:
                return 1
        n = data[0].shape[0]
        k = math.ceil(n / batch_size)
        last = n - (k - 1) * batch_size
        return k - 1 if k > 1 and last < 2 * self._world else k  # as _ArrayBatches drops a too small last batch

    @torch.no_grad()
    def _evaluate(self, ev: dict[str, Any]) -> dict[str, float]:
        """Accuracy and loss on each eval set. Under DDP each rank evaluates its part of an array and a
        DataLoader as given; the sums are reduced over ranks (a replicated loader scales both counts alike)."""
        out: dict[str, float] = {}
        if not ev:
            return out
        model = self._require_model()
        gen = torch.Generator().manual_seed(0)
        with eval_mode(model):
            for name, data in ev.items():
                correct, loss, n = 0, 0.0, 0
                if isinstance(data, DataLoader):
                    batches = ((xb, yb) for xb, yb, _ in self._batches(data, 0, gen, labeled=True,
                                                                       name=f"eval_data[{name!r}]", min_size=1))
                else:
                    x, y = data
                    if self._world > 1:
                        x, y = x.tensor_split(self._world)[self._rank], y.tensor_split(self._world)[self._rank]
                    batches = ((xb.to(self.device), yb.to(self.device)) for xb, yb in zip(x.split(4096), y.split(4096)))
                for xb, yb in batches:
                    logits = model(xb)
                    loss += float(F.cross_entropy(logits, yb, reduction="sum"))
                    correct += int((logits.argmax(1) == yb).sum())
                    n += xb.shape[0]
                if self._world > 1:
                    counts = [torch.tensor(float(v), device=self.device) for v in (correct, loss, n)]
                    correct_t, loss_t, n_t = pd.all_reduce_sum(counts)
                    correct, loss, n = int(correct_t), float(loss_t), int(n_t)
                out[f"{name}_acc"] = correct / max(n, 1)
                out[f"{name}_loss"] = loss / max(n, 1)
        return out

    @torch.no_grad()
    def _embed_all(self, x: Tensor) -> Tensor:
        model = self._require_model()
        with eval_mode(model):
            return torch.cat([model.embed(xb.to(self.device)).flatten(1) for xb in x.split(4096)])

    def __repr__(self) -> str:
        return (f"TwoStageTrainer(lambda_mmd={self.lambda_mmd:g}, lambda_schedule={self.lambda_schedule!r}, "
                f"align_epochs={self.align_epochs}, finetune_epochs={self.finetune_epochs}, lr={self.lr:g}, "
                f"finetune_lr={self.finetune_lr:g}, batch_size={self.batch_size}, device={str(self.device)!r}, "
                f"seed={self.seed})")


def _check_finite(record: dict[str, Any], advice: str) -> None:
    """Once per epoch (no per-step GPU sync): a diverged loss stops training with a clear error."""
    loss = record.get("loss")
    if loss is not None and not math.isfinite(loss):
        raise FloatingPointError(f"{record['stage']} epoch {record['epoch']}: the loss became {loss}; {advice}")


class _Sums:
    """Sample-weighted running means of the per-batch losses (tensors, synced once per epoch)."""

    def __init__(self) -> None:
        self.n = 0
        self.values: dict[str, list[Tensor]] = {}

    def add(self, n: int, **values: Tensor | None) -> None:
        self.n += n
        for k, v in values.items():
            if v is None:
                continue
            self.values.setdefault(k, []).append(v.detach().float() * (1 if k == "correct" else n))

    def means(self, reduce_on: torch.device | None = None) -> dict[str, float | None]:
        """The epoch's means; with ``reduce_on`` (a device), of the sums over all ranks (one all-reduce)."""
        out: dict[str, float | None] = {k: None for k in ("loss", "ce", "mmd2", "penalty")}
        totals = {k: torch.stack([v.reshape(()) for v in vs]).sum() for k, vs in self.values.items()}
        n: float = self.n
        if reduce_on is not None:
            *summed, n_all = pd.all_reduce_sum([*totals.values(), torch.tensor(float(self.n), device=reduce_on)])
            totals, n = dict(zip(totals, summed)), float(n_all)
        for k, total in totals.items():
            out["train_acc" if k == "correct" else k] = float(total) / max(n, 1)
        return out


class _TargetBatches:
    """Stage 1's unlabelled target batches, one per source batch, cycled pass after pass.

    Its position (the global batches left in the current pass, the number of passes) is saved in
    checkpoints, so that a resumed run draws the same batches; a DataLoader restarts at a new pass."""

    def __init__(self, trainer: TwoStageTrainer, data: Any, gen: torch.Generator) -> None:
        self.trainer, self.data, self.gen = trainer, data, gen
        self.passes = 0
        self.pending: list[Tensor] = []  # arrays: global index batches left in this pass
        self._loader_pass: Iterator[tuple[Tensor, Tensor | None, int]] | None = None
        self._fresh = False

    def next(self) -> tuple[Tensor, int]:
        """This rank's part of the next target batch, and the global batch size."""
        t = self.trainer
        if isinstance(self.data, DataLoader):
            x = self._next_from_loader()
            return x, x.shape[0] * t._world
        if not self.pending:  # drawn when first needed, so the generator's draws keep their order
            self.pending = _ArrayBatches(self.data.shape[0], t.target_batch_size, self.gen, 2 * t._world).epoch()
            self.passes += 1
        idx = self.pending.pop(0)
        n = idx.numel()
        if t._world > 1:
            idx = pd.shard(idx, t._rank, t._world)
        return self.data[idx].to(t.device, t._param_dtype()), n

    def _next_from_loader(self) -> Tensor:
        while True:
            if self._loader_pass is None:
                self._loader_pass = self.trainer._batches(self.data, 0, self.gen, labeled=False,
                                                          name="target_unlabeled", epoch=self.passes)
                self.passes += 1
                self._fresh = True
            batch = next(self._loader_pass, None)
            if batch is not None:
                self._fresh = False
                return batch[0]
            if self._fresh:
                raise ValueError("target_unlabeled yields no batch of at least 2 samples")
            self._loader_pass = None

    def state(self) -> dict[str, Any]:
        return {"pending": [p.clone() for p in self.pending], "passes": self.passes}

    def load_state(self, state: dict[str, Any]) -> None:
        self.pending, self.passes = list(state["pending"]), int(state["passes"])


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
