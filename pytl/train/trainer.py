"""TwoStageTrainer: a model, its settings (settings.py) and its runs' state (state.py), and the public API.

The parts it is made of: prepare.py (every check before training), loop.py (the one stage loop, the
engine), steps.py (each stage's batches and loss, the DDP objective), alignments/ (stage 1's terms),
batches.py, evaluate.py, metrics.py, checkpoint.py, ddp.py, early_stopping.py. They are handed the run's
state and the model, never the trainer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pytl import _inputs as inp
from pytl.inference import embed_all, param_dtype, predict_proba
from pytl.ops import mmd2
from pytl.train.checkpoint import read_checkpoint
from pytl.train.loop import run_stage
from pytl.train.prepare import Prepared, prepare, resolve_device
from pytl.train.settings import ALIASES, TrainSettings, canonical
from pytl.train.state import RunState
from pytl.train.steps import AlignStage, FinetuneStage
from pytl.train.threads import using_threads

__all__ = ["EvalData", "TwoStageTrainer"]

EvalData = Union[None, tuple[Any, Any], DataLoader, Mapping[str, Any]]
_PathLike = Union[str, os.PathLike, None]


class TwoStageTrainer:
    """Stage 1: CE(source) + λ·alignment(source embeddings, target embeddings); stage 2: fine-tune on target labels.

    ``TwoStageTrainer(model=None, settings=None, **overrides)``: ``settings`` a ``TrainSettings`` (its
    docstring documents every option), ``overrides`` any of its fields by name (``lambda_mmd`` is the former
    name of ``lambda_align``). The settings stay as given: ``get_params()`` returns them and
    ``TwoStageTrainer(**trainer.get_params())`` is the same trainer; ``set_params(**changes)`` changes them
    (checked). Each setting is also readable as an attribute (``trainer.lr``).

    Data may be numpy arrays, tensors (samples first, any feature shape) or DataLoaders yielding
    ``(x, y)`` (labelled) or ``x`` / ``(x, ...)`` (unlabelled). Everything is seeded: the same seed gives
    bit-identical weights on CPU. ``history`` holds one dict per epoch (losses, the alignment term, λ,
    accuracies on ``eval_data``).

    model: a ``TransferModel`` (or anything with ``embed`` and ``head``; a plain module works for
    λ = 0 and fine-tuning); None builds ``default_model`` sized from the data at the first fit, with
    inputs standardised by the pooled statistics of the training inputs (both domains).

    What the runs find out and produce is ``trainer.state`` (a ``RunState``), also readable as attributes:
    ``history``, ``policy_summary``, ``label_shift``, ``best_epoch``, ``stopped_early``, ``num_classes``,
    ``device`` (resolved), ``label`` (the progress bar's prefix).
    """

    def __init__(self, model: nn.Module | None = None, settings: TrainSettings | None = None,
                 **overrides: Any) -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
        if settings is not None and not isinstance(settings, TrainSettings):
            raise TypeError(f"settings must be a pytl.train.TrainSettings or None, got {type(settings).__name__}")
        settings = settings or TrainSettings()
        if overrides:
            settings = settings.replace(**overrides)
        self.model = model
        self.state = RunState(settings, resolve_device(settings.device, model), num_classes=settings.num_classes)

    # ------------------------------------------------------------------------------------ settings

    @property
    def settings(self) -> TrainSettings:
        return self.state.settings

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        """The constructor's arguments: the model and every setting, as given."""
        return {"model": self.model, **self.settings.as_dict()}

    def set_params(self, **changes: Any) -> TwoStageTrainer:
        """Change the model and/or settings (checked; former names accepted); returns the trainer."""
        if "model" in changes:
            model = changes.pop("model")
            if model is not None and not isinstance(model, nn.Module):
                raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
            self.model = model
        settings = self.settings.replace(**changes) if changes else self.settings
        self.state.settings = settings
        self.state.device = resolve_device(settings.device, self.model)
        if "num_classes" in canonical(changes, "set_params"):
            self.state.num_classes = settings.num_classes
        return self

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: the settings, and the run's state, by name
        if name in ("state", "model") or name.startswith("__"):
            raise AttributeError(name)
        state = self.__dict__.get("state")
        if state is not None:
            if name in TrainSettings.names() or name in ALIASES:
                return getattr(state.settings, name)
            if name in _STATE_ATTRIBUTES:
                return getattr(state, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _STATE_ATTRIBUTES:
            setattr(self.state, name, value)
        elif name in TrainSettings.names() or name in ALIASES:
            raise AttributeError(f"{name} is a setting: use trainer.set_params({name}=...) (checked)")
        else:
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------------------------ training

    def fit(self, source: Any, target_unlabeled: Any = None, target_labeled: Any = None, *,
            eval_data: EvalData = None, resume_from: _PathLike = None) -> TwoStageTrainer:
        """Both stages: ``align(source, target_unlabeled)`` then, if given, ``finetune(target_labeled)``.

        All inputs are checked before the first step. ``resume_from``: a checkpoint file of this
        trainer's settings; training continues after its last epoch (a fine-tuning checkpoint skips
        stage 1) and, for array inputs, ends with the weights of an uninterrupted run."""
        p = self._prepare(source, target_unlabeled, target_labeled, eval_data, stage="fit")
        ckpt = read_checkpoint(self.state, resume_from, p.model)
        if ckpt is not None and ckpt["stage"] == "finetune" and p.target_labeled is None:
            raise ValueError(f"resume_from={os.fspath(resume_from)!r} is a fine-tuning checkpoint: pass target_labeled")
        if ckpt is None or ckpt["stage"] == "align":
            stage1 = AlignStage(self.state, p.source, p.target_unlabeled,
                                p.target_labeled if self.settings.semi_supervised else None)
            run_stage(self.state, p.model, stage1, p.eval_sets, ckpt)
            ckpt = None
        if p.target_labeled is not None:
            stage = FinetuneStage(self.state, p.target_labeled, p.target_validation)
            run_stage(self.state, p.model, stage, p.eval_sets, ckpt)
        return self

    def align(self, source: Any, target_unlabeled: Any = None, *, target_labeled: Any = None,
              eval_data: EvalData = None, resume_from: _PathLike = None) -> list[dict[str, Any]]:
        """Stage 1 only; returns its per-epoch history. ``lambda_align=0`` trains on the source alone.
        ``target_labeled``: with ``semi_supervised=True``, the target labels stage 1 also learns from."""
        if target_labeled is not None and not self.settings.semi_supervised:
            raise ValueError("align(target_labeled=...) needs semi_supervised=True (stage 1 learning from the target "
                             "labels); fine-tune on them with finetune() or fit()")
        p = self._prepare(source, target_unlabeled, target_labeled, eval_data, stage="align")
        ckpt = read_checkpoint(self.state, resume_from, p.model)
        if ckpt is not None and ckpt["stage"] != "align":
            raise ValueError(f"resume_from={os.fspath(resume_from)!r} is a fine-tuning checkpoint: resume it with "
                             "fit() or finetune()")
        stage1 = AlignStage(self.state, p.source, p.target_unlabeled, p.target_labeled)
        return run_stage(self.state, p.model, stage1, p.eval_sets, ckpt)

    def finetune(self, target_labeled: Any, *, eval_data: EvalData = None,
                 resume_from: _PathLike = None) -> list[dict[str, Any]]:
        """Stage 2 only (on the current model); returns its per-epoch history. ``resume_from``: a
        fine-tuning checkpoint continues; a stage-1 checkpoint provides the weights to fine-tune."""
        p = self._prepare(None, None, target_labeled, eval_data, stage="finetune")
        ckpt = read_checkpoint(self.state, resume_from, p.model)
        if ckpt is not None and ckpt["stage"] == "align":
            p.model.load_state_dict(ckpt["model"])
            self.state.history = {"align": ckpt["history"]["align"] + ckpt["records"],
                                  "finetune": ckpt["history"]["finetune"]}
            ckpt = None
        stage = FinetuneStage(self.state, p.target_labeled, p.target_validation)
        return run_stage(self.state, p.model, stage, p.eval_sets, ckpt)

    def check_inputs(self, source: Any, target_unlabeled: Any = None, target_labeled: Any = None, *,
                     eval_data: EvalData = None) -> None:
        """Every check ``fit`` makes before its first step (data, labels, shapes, the model against the
        data), without training; builds the default model when there is none. For callers such as
        ``compare_strategies`` that train several trainers and want every error before the first."""
        self._prepare(source, target_unlabeled, target_labeled, eval_data, stage="fit")

    def _prepare(self, source: Any, target_unlabeled: Any, target_labeled: Any, eval_data: Any,
                 stage: str) -> Prepared:
        threads = self.settings.num_threads
        with using_threads(1 if threads == "auto" else threads):  # "auto": checks and statistics are small work
            p = prepare(self.state, self.model, source, target_unlabeled, target_labeled, eval_data, stage)
        self.model = p.model  # kept only once every check has passed
        return p

    # ------------------------------------------------------------------------------------ using the model

    def predict_proba(self, X: Any, batch_size: int = 4096) -> Tensor:
        """Class probabilities (N, C) on the CPU, computed in eval mode."""
        return predict_proba(self._require_model(), self._features(X, "X"), self.state.device, batch_size)

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
        zs = embed_all(model, self._features(X_source, "X_source")[:max_samples], self.state.device)
        zt = embed_all(model, self._features(X_target, "X_target")[:max_samples], self.state.device)
        return float(mmd2(zs.double(), zt.double()))

    def __repr__(self) -> str:
        s = self.settings
        alignment = "" if s.alignment == "mmd" else f", alignment={s.alignment!r}"
        early = "" if s.finetune_validation is None else \
            f", finetune_validation={s.finetune_validation:g}, patience={s.patience}"
        return (f"TwoStageTrainer(lambda_align={s.lambda_align:g}{alignment}, lambda_schedule={s.lambda_schedule!r}, "
                f"align_epochs={s.align_epochs}, finetune_epochs={s.finetune_epochs}, lr={s.lr:g}, "
                f"finetune_lr={s.finetune_lr_value:g}, batch_size={s.batch_size}, device={str(self.state.device)!r}, "
                f"seed={s.seed}{early})")

    def _features(self, X: Any, name: str) -> Tensor:
        x = inp.as_features(X, name)
        shape = self.state.sample_shape
        if shape is not None and tuple(x.shape[1:]) != shape:
            raise ValueError(f"{name} has samples of shape {tuple(x.shape[1:])}; the model was trained on {shape}")
        return x.to(param_dtype(self.model))

    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("no model yet: call fit/align first or pass a model")
        return self.model


#: the run's state, readable (and, for compatibility, writable) as attributes of the trainer
_STATE_ATTRIBUTES = frozenset({"history", "policy_summary", "label_shift", "best_epoch", "stopped_early",
                               "num_classes", "device", "label"})
