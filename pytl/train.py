"""The two-stage trainer: align domains with CE + λ·MMD², then fine-tune on the few target labels.

Stage 1 (``align``) trains on labelled source batches and unlabelled target batches: the source
classification loss keeps the features discriminative, the MMD² term between source and target
embeddings pulls the two domains together (the Ben-David bound's divergence term). Stage 2
(``finetune``) adapts the model to the labelled target samples under a freezing policy. Every MMD
is the fused ``pytl.mmd2`` op.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pytl import _inputs as inp
from pytl._progress import Progress
from pytl.freezing import BatchNormPolicy, FreezingPolicy, param_groups, summary
from pytl.models import Standardize, default_model
from pytl.ops import mmd2

__all__ = ["LAMBDA_SCHEDULES", "TwoStageTrainer", "lambda_factor"]

LAMBDA_SCHEDULES = ("constant", "linear", "dann")
OPTIMIZERS = ("adam", "adamw", "sgd")

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

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.gen = n, batch_size, generator

    def epoch(self) -> list[Tensor]:
        perm = torch.randperm(self.n, generator=self.gen)
        out = list(perm.split(self.batch_size))
        if len(out) > 1 and out[-1].numel() < 2:  # a batch of one breaks BatchNorm and the unbiased MMD
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
    ) -> TwoStageTrainer:
        """Both stages: ``align(source, target_unlabeled)`` then, if given, ``finetune(target_labeled)``.

        All inputs are checked before the first step."""
        src, tu, tl, ev = self._prepare(source, target_unlabeled, target_labeled, eval_data, stage="fit")
        self._align(src, tu, ev)
        if tl is not None:
            self._finetune(tl, ev)
        return self

    def align(self, source: Any, target_unlabeled: Any = None, *, eval_data: EvalData = None) -> list[dict[str, Any]]:
        """Stage 1 only; returns its per-epoch history. ``lambda_mmd=0`` trains on the source alone."""
        src, tu, _, ev = self._prepare(source, target_unlabeled, None, eval_data, stage="align")
        return self._align(src, tu, ev)

    def finetune(self, target_labeled: Any, *, eval_data: EvalData = None) -> list[dict[str, Any]]:
        """Stage 2 only (on the current model); returns its per-epoch history."""
        _, _, tl, ev = self._prepare(None, None, target_labeled, eval_data, stage="finetune")
        return self._finetune(tl, ev)

    @torch.no_grad()
    def predict_proba(self, X: Any, batch_size: int = 4096) -> Tensor:
        """Class probabilities (N, C) on the CPU, computed in eval mode."""
        model = self._require_model()
        x = self._features(X, "X")
        with _eval_mode(model):
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

        return (None if src is None else cast(src), None if tu is None else cast(tu),
                None if tl is None else cast(tl), {k: cast(v) for k, v in ev.items()})

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
            with torch.no_grad(), _eval_mode(model):
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
    def _rng(self, offset: int) -> Iterator[torch.Generator]:
        """Seed the global RNGs (dropout, init) inside a fork, so the user's RNG state is untouched;
        apply num_threads for the duration."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed * 1009 + offset)
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
                 min_size: int = 2) -> Iterator[tuple[Tensor, Tensor | None]]:
        """One pass over the data as (x, y) batches on the device (training skips batches of one)."""
        dtype = self._param_dtype()
        if isinstance(data, DataLoader):
            assert self._sample_shape is not None and self.num_classes is not None
            for batch in data:
                x, y = inp.split_batch(batch, labeled, name)
                x, y = inp.check_batch(x, y, self.num_classes, self._sample_shape, name)
                if x.shape[0] < min_size:
                    continue
                yield x.to(self.device, dtype), (None if y is None else y.to(self.device))
            return
        x, y = (data if labeled else (data, None))
        for idx in _ArrayBatches(x.shape[0], batch_size, gen).epoch():
            yield x[idx].to(self.device, dtype), (None if y is None else y[idx].to(self.device))

    def _cycle(self, data: Any, batch_size: int, gen: torch.Generator, name: str) -> Iterator[Tensor]:
        while True:
            empty = True
            for x, _ in self._batches(data, batch_size, gen, labeled=False, name=name):
                empty = False
                yield x
            if empty:
                raise ValueError(f"{name} yields no batch of at least 2 samples")

    def _align(self, src: Any, tu: Any, ev: dict[str, Any]) -> list[dict[str, Any]]:
        model = self._require_model()
        policy = self._with_bn(self.align_policy)
        records: list[dict[str, Any]] = []
        use_mmd = self.lambda_mmd > 0 and tu is not None
        flags = [(p, p.requires_grad) for p in model.parameters()]
        with self._rng(offset=1) as gen:
            policy.apply(model)
            opt = self._make_optimizer(param_groups(model, self.lr, policy, self.weight_decay))
            self.policy_summary["align"] = f"policy: {policy!r}\n{summary(model, opt)}"
            steps_per_epoch = self._steps_per_epoch(src, self.batch_size)
            total = max(1, self.align_epochs * steps_per_epoch)
            target_iter = self._cycle(tu, self.target_batch_size, gen, "target_unlabeled") if use_mmd else None
            bar = Progress(self.align_epochs, f"{self.label}align", self.progress)
            step, lam = 0, 0.0
            try:
                for epoch in range(self.align_epochs):
                    unfrozen = policy.on_epoch_start(model, epoch, opt)
                    model.train()
                    sums = _Sums()
                    for xs, ys in self._batches(src, self.batch_size, gen, labeled=True, name="source"):
                        assert ys is not None
                        lam = self.lambda_mmd * lambda_factor(self.lambda_schedule, step / total) if use_mmd else 0.0
                        if use_mmd:
                            assert target_iter is not None
                            xt = next(target_iter)
                            z = model.embed(torch.cat([xs, xt]))  # one pass: BatchNorm sees both domains
                            zs, zt = z[: xs.shape[0]], z[xs.shape[0]:]
                            logits = model.head(zs)
                            ce = F.cross_entropy(logits, ys)
                            sig = self.mmd_sigmas(zs.detach(), zt.detach()) if callable(self.mmd_sigmas) else self.mmd_sigmas
                            m = mmd2(zs, zt, sig, estimator=self.mmd_estimator)
                            loss = ce + lam * m
                        else:
                            logits = model(xs)
                            ce = F.cross_entropy(logits, ys)
                            m, loss = None, ce
                        pen = policy.penalty(model)
                        if pen is not None:
                            loss = loss + pen
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        step += 1
                        sums.add(xs.shape[0], loss=loss, ce=ce, mmd2=m, penalty=pen,
                                 correct=(logits.argmax(1) == ys).sum())
                    rec: dict[str, Any] = {"stage": "align", "epoch": epoch, **sums.means(), "lambda": lam}
                    _check_finite(rec, "lower lr or lambda_mmd")
                    if unfrozen:
                        rec["unfrozen"] = unfrozen
                    rec.update(self._evaluate(ev))
                    records.append(rec)
                    bar.update(1, **{k: rec[k] for k in ("loss", "mmd2") if rec.get(k) is not None})
            finally:
                bar.close()
                policy.release(model)
                for p, flag in flags:  # the policy holds for its stage only
                    p.requires_grad_(flag)
        model.eval()
        self.history["align"].extend(records)
        return records

    def _finetune(self, tl: Any, ev: dict[str, Any]) -> list[dict[str, Any]]:
        model = self._require_model()
        policy = self._with_bn(self.finetune_policy)
        records: list[dict[str, Any]] = []
        flags = [(p, p.requires_grad) for p in model.parameters()]
        with self._rng(offset=2) as gen:
            policy.apply(model)
            opt = self._make_optimizer(param_groups(model, self.finetune_lr, policy, self.weight_decay))
            self.policy_summary["finetune"] = f"policy: {policy!r}\n{summary(model, opt)}"
            if not any(p.requires_grad for p in model.parameters()):
                raise ValueError(f"finetune_policy {policy!r} freezes every parameter; nothing would train")
            bar = Progress(self.finetune_epochs, f"{self.label}finetune", self.progress)
            try:
                for epoch in range(self.finetune_epochs):
                    unfrozen = policy.on_epoch_start(model, epoch, opt)
                    model.train()
                    sums = _Sums()
                    for x, y in self._batches(tl, self.finetune_batch_size, gen, labeled=True, name="target_labeled"):
                        assert y is not None
                        logits = model(x)
                        ce = F.cross_entropy(logits, y)
                        pen = policy.penalty(model)
                        loss = ce if pen is None else ce + pen
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        sums.add(x.shape[0], loss=loss, ce=ce, penalty=pen, correct=(logits.argmax(1) == y).sum())
                    rec: dict[str, Any] = {"stage": "finetune", "epoch": epoch, **sums.means()}
                    _check_finite(rec, "lower finetune_lr")
                    if unfrozen:
                        rec["unfrozen"] = unfrozen
                    rec.update(self._evaluate(ev))
                    records.append(rec)
                    bar.update(1, loss=rec["loss"])
            finally:
                bar.close()
                policy.release(model)
                for p, flag in flags:  # the policy holds for its stage only
                    p.requires_grad_(flag)
        model.eval()
        self.history["finetune"].extend(records)
        return records

    def _steps_per_epoch(self, data: Any, batch_size: int) -> int:
        if isinstance(data, DataLoader):
            try:
                return len(data)
            except TypeError:
                return 1
        n = data[0].shape[0]
        k = math.ceil(n / batch_size)
        return k - 1 if k > 1 and n % batch_size == 1 else k

    @torch.no_grad()
    def _evaluate(self, ev: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        if not ev:
            return out
        model = self._require_model()
        gen = torch.Generator().manual_seed(0)
        with _eval_mode(model):
            for name, data in ev.items():
                correct, loss, n = 0, 0.0, 0
                if isinstance(data, DataLoader):
                    batches = self._batches(data, 0, gen, labeled=True, name=f"eval_data[{name!r}]", min_size=1)
                else:
                    x, y = data
                    batches = ((xb.to(self.device), yb.to(self.device)) for xb, yb in zip(x.split(4096), y.split(4096)))
                for xb, yb in batches:
                    logits = model(xb)
                    loss += float(F.cross_entropy(logits, yb, reduction="sum"))
                    correct += int((logits.argmax(1) == yb).sum())
                    n += xb.shape[0]
                out[f"{name}_acc"] = correct / max(n, 1)
                out[f"{name}_loss"] = loss / max(n, 1)
        return out

    @torch.no_grad()
    def _embed_all(self, x: Tensor) -> Tensor:
        model = self._require_model()
        with _eval_mode(model):
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

    def means(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {k: None for k in ("loss", "ce", "mmd2", "penalty")}
        for k, vs in self.values.items():
            total = float(torch.stack([v.reshape(()) for v in vs]).sum()) / max(self.n, 1)
            out["train_acc" if k == "correct" else k] = total
        return out


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, each submodule's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
