"""Everything checked before a trainer's first step: the inputs (converted to one convention), their
shapes and labels, the model against the data; the default model built when there is none.

``prepare`` is what ``TwoStageTrainer.fit/align/finetune/check_inputs`` run; ``compare_strategies``
calls it through ``check_inputs`` so that every error comes before the first of its trainings. It reads
the settings and writes what it finds out (ranks, classes, sample shape, dtype) into the run's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pytl import _inputs as inp
from pytl._checks import DataWarning, warn_user
from pytl.diagnostics.label_proportions import label_proportion_test
from pytl.inference import eval_mode, param_dtype
from pytl.models import Standardize, default_model
from pytl.train import ddp
from pytl.train.early_stopping import split_target

if TYPE_CHECKING:
    from pytl.train.state import RunState


class Prepared(NamedTuple):
    """The checked inputs of a stage, cast to the model's dtype (None where not given), and the model."""

    model: nn.Module
    source: Any
    target_unlabeled: Any
    target_labeled: Any  # with finetune_validation, the training part only
    eval_sets: dict[str, Any]
    target_validation: Any = None  # with finetune_validation, the held-out part (not sharded)


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


def check_class_weights(spec: Any, src: Any, tu: Any, num_classes: int, stage: str) -> None:
    """class_weights (checked: settings.class_weight_spec) against the data: one weight per class; "estimated"
    needs the source and target as arrays (the estimate predicts on their first rows) and stage 1."""
    if spec is None or stage == "finetune":
        return
    if isinstance(spec, str):
        if tu is None:
            raise ValueError("class_weights='estimated' needs target_unlabeled (the estimate predicts on it)")
        if not isinstance(src, tuple) or not isinstance(tu, Tensor):
            raise ValueError("class_weights='estimated' needs source and target_unlabeled as arrays or tensors (the "
                             "estimate predicts on their first rows); with DataLoaders estimate the weights yourself "
                             "(pytl.diagnostics.estimate_label_shift) and pass them as class_weights")
        return
    if spec.numel() != num_classes:
        raise ValueError(f"class_weights must have one weight per class ({num_classes}), got {spec.numel()}")


def prepare(run: RunState, model: nn.Module | None, source: Any, target_unlabeled: Any, target_labeled: Any,
            eval_data: Any, stage: str) -> Prepared:
    """Convert and check every input, build the default model if ``model`` is None, check labels against it.
    The run's state learns the classes and sample shape only once every check has passed (the caller keeps
    the returned model then: a failed fit leaves the trainer as it was)."""
    settings = run.settings
    ddp.setup_ranks(run)
    alignment = settings.alignment.upper()
    needs_target = stage in ("fit", "align") and settings.lambda_align > 0 and settings.align_epochs > 0
    src = inp.as_labeled(source, "source") if source is not None else None
    if stage in ("fit", "align") and src is None:
        raise ValueError("source (X, y) is required for stage 1")
    if needs_target and target_unlabeled is None:
        raise ValueError(f"target_unlabeled is required for {alignment} alignment (lambda_align > 0); "
                         "pass lambda_align=0 to train on the source alone")
    tu = inp.as_unlabeled(target_unlabeled, "target_unlabeled") if target_unlabeled is not None else None
    if stage == "finetune" and target_labeled is None:
        raise ValueError("target_labeled (X, y) is required for fine-tuning")
    tl = inp.as_labeled(target_labeled, "target_labeled") if target_labeled is not None else None
    # the two label sets against each other (arrays only: a DataLoader's labels are not all at hand)
    inp.check_label_space(src[1] if isinstance(src, tuple) else None, tl[1] if isinstance(tl, tuple) else None,
                          run.num_classes, single_target_class=True)
    ev = eval_sets(eval_data)
    if settings.finetune_validation is not None and tl is not None and "val" in ev:
        raise ValueError("eval_data has a set named 'val', whose record keys (val_loss) would collide with "
                         "finetune_validation's (val_loss, val_accuracy); rename it")
    ref_shape = _common_shape(run.sample_shape, src, tu, tl, ev, stage)

    if model is None:
        classes = run.num_classes or infer_num_classes(src, tl, ev)
        stats = Standardize.fit(*[_some_features(d, lab) for d, lab in ((src, True), (tu, False), (tl, True))
                                  if d is not None])
        with run.rng(offset=0):
            model = default_model(inp.prod(ref_shape), classes, standardize=stats)
    model.to(run.device)
    num_classes = model_num_classes(model, ref_shape, src if src is not None else tl, run.device)
    if run.num_classes is not None and run.num_classes != num_classes:
        raise ValueError(f"num_classes={run.num_classes} but the model outputs {num_classes} classes")
    if needs_target and not (hasattr(model, "embed") and hasattr(model, "head")):
        raise TypeError(
            f"{alignment} alignment needs a model with embed(x) and head(z), got {type(model).__name__}; "
            "wrap it with TransferModel(encoder, head) or TransferModel.from_backbone(model, num_classes)"
        )
    for name, data in [("source", src), ("target_labeled", tl)] + [(f"eval_data[{k!r}]", v) for k, v in ev.items()]:
        if isinstance(data, tuple):
            inp.check_label_range(data[1], num_classes, f"{name}[1] (y)")
    check_class_weights(settings.class_weight_spec(), src, tu, num_classes, stage)
    val = None
    if tl is not None:
        check_enough_labels(tl, num_classes)
        if stage in ("fit", "align") and settings.lambda_align > 0 and settings.align_epochs > 0:
            warn_if_label_shift(settings, src, tl, num_classes)
        if settings.finetune_validation is not None:  # before sharding: every rank holds out, and evaluates, the same
            tl, val = split_target(settings, tl)
    dtype = param_dtype(model)
    run.num_classes, run.sample_shape, run.dtype = num_classes, ref_shape, dtype

    def cast(d: Any) -> Any:
        if isinstance(d, tuple):
            return d[0].to(dtype), d[1]
        return d.to(dtype) if isinstance(d, Tensor) else d

    # eval_data is not sharded: each rank evaluates its part of arrays, a DataLoader as given (evaluate.py)
    return Prepared(model,
                    ddp.shard_input(run, None if src is None else cast(src), "source", settings.batch_size),
                    ddp.shard_input(run, None if tu is None else cast(tu), "target_unlabeled",
                                    settings.target_batch_size_value),
                    ddp.shard_input(run, None if tl is None else cast(tl), "target_labeled",
                                    settings.finetune_batch_size_value),
                    {k: cast(v) for k, v in ev.items()}, None if val is None else cast(val))


def _common_shape(trained: tuple[int, ...] | None, src: Any, tu: Any, tl: Any, ev: dict[str, Any], stage: str) -> tuple[int, ...]:
    """The sample shape every input shares (and, when fine-tuning a trained model, the one it was trained on)."""
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
    if trained is not None and stage == "finetune":
        ref_name, ref_shape = "the data the model was trained on", trained
    for name, shape in shapes.items():
        if shape != ref_shape:
            raise ValueError(
                f"feature size mismatch: {name} has samples of shape {inp.format_shape(shape)} but "
                f"{ref_name} has {inp.format_shape(ref_shape)}; both domains must share a feature space"
            )
    return ref_shape


def eval_sets(eval_data: Any) -> dict[str, Any]:
    """``eval_data`` as {name: (X, y) or DataLoader}; a single set is named "target"."""
    if eval_data is None:
        return {}
    if isinstance(eval_data, Mapping):
        return {str(k): inp.as_labeled(v, f"eval_data[{k!r}]") for k, v in eval_data.items()}
    return {"target": inp.as_labeled(eval_data, "eval_data")}


def _some_features(data: Any, labeled: bool) -> Tensor:
    """All features of an array input; the first batch of a DataLoader (for input statistics)."""
    if isinstance(data, DataLoader):
        return inp.first_batch(data, labeled, "a DataLoader")[0].float()
    return data[0] if labeled else data


def infer_num_classes(*datas: Any) -> int:
    """1 + the largest label in the labelled inputs (a DataLoader's first batch)."""
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


def model_num_classes(model: nn.Module, shape: tuple[int, ...], data: Any, device: torch.device) -> int:
    """Run the model once on two samples (eval mode, no grad) to check it accepts the data."""
    if isinstance(data, tuple):
        probe = data[0][:2]
    else:
        probe, _ = inp.first_batch(data, True, "the labelled data")
        probe = probe[:2]
    p = next(model.parameters(), None)
    probe = probe.to(device=device, dtype=p.dtype if p is not None and p.dtype.is_floating_point else None)
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


#: the alignments that match marginal distributions, which a label shift misleads
MARGINAL_ALIGNMENTS = ("mmd", "coral", "dann")


def warn_if_label_shift(settings: Any, src: Any, tl: Any, num_classes: int) -> None:
    """A DataWarning when the target labels' class proportions differ from the source's (a simulated
    goodness-of-fit test, pytl.diagnostics.label_proportions) and stage 1 aligns marginals without class
    weights: that is how a marginal alignment silently hurts (mmd_only −35 points on the breast-cancer pair)."""
    if settings.alignment not in MARGINAL_ALIGNMENTS or settings.class_weights is not None:
        return
    if not (isinstance(src, tuple) and isinstance(tl, tuple)):
        return  # a DataLoader's labels are not all at hand
    counts = torch.bincount(tl[1].cpu(), minlength=num_classes)
    if bool((counts == counts[0]).all()) or bool((counts == 0).any()):
        # k labels of every class were sampled per class: their proportions say nothing of the target's; a class
        # without labels is warned about already (check_enough_labels), one warning per problem
        return
    test = label_proportion_test(src[1], tl[1], num_classes)
    if test.shifted:
        fmt = lambda v: "[" + ", ".join(f"{float(a):.2f}" for a in v) + "]"  # noqa: E731
        warn_user(f"target_labeled's class proportions {fmt(test.target_proportions)} differ from the source's "
                  f"{fmt(test.source_proportions)} (total variation {test.total_variation:.2f}, p = {test.p_value:.2g}"
                  f"): aligning the marginal distributions ({settings.alignment}) under a label shift pulls target "
                  "samples onto the wrong classes. Consider alignment='cmmd', class_weights="
                  f"{test.class_weights()} (target / source proportions, from these labels), and compare with "
                  "source_only (compare_strategies)", DataWarning)


def check_enough_labels(tl: Any, num_classes: int) -> None:
    """At least one target label per class; a warning names the classes the labels lack."""
    n = inp.num_samples(tl)
    if n is not None and n < num_classes:
        raise ValueError(f"target_labeled has {n} samples, fewer than the {num_classes} classes; "
                         "fine-tuning needs at least one label per class")
    if isinstance(tl, tuple):
        missing = sorted(set(range(num_classes)) - set(tl[1].unique().tolist()))
        if missing:
            warn_user(f"target_labeled has no sample of class(es) {missing}; fine-tuning cannot learn them "
                      "from the target", DataWarning)
