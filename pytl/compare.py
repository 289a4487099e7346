"""Strategy comparison: does transfer help on this problem, and which kind?

``compare_strategies`` trains every strategy from the same initial weights with the same budgets
and reports target test accuracy. Always comparing against "scratch" is the only reliable way to
notice negative transfer (borrowed knowledge that makes the target model worse).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pytl import _inputs as inp
from pytl.freezing import FreezingPolicy
from pytl.models import Standardize, default_model
from pytl.ops import mmd2
from pytl.train import TwoStageTrainer, eval_mode, resolve_device

__all__ = [
    "DEFAULT_CONFIG",
    "STRATEGIES",
    "ComparisonReport",
    "EnsembleModel",
    "SeedSummary",
    "compare_strategies",
    "summarize",
]

STRATEGIES = ("source_only", "mmd_only", "scratch", "naive", "mmd", "ensemble")
NEEDS_TARGET_LABELS = frozenset({"scratch", "naive", "mmd", "ensemble"})

DESCRIPTIONS = {
    "source_only": "source labels, {align_epochs} epochs",
    "mmd_only": "+ unlabelled target: CE + {lambda_mmd:g}·MMD², {align_epochs} epochs",
    "scratch": "target labels only, {scratch_epochs} epochs from random weights",
    "naive": "source_only, then {finetune_epochs} epochs on target labels",
    "mmd": "mmd_only, then {finetune_epochs} epochs on target labels",
    "ensemble": "mean probabilities of mmd and scratch",
}


def _describe(strategy: str, config: dict[str, Any]) -> str:
    try:
        return DESCRIPTIONS[strategy].format(**config)
    except (KeyError, ValueError, IndexError):  # a report built by hand, without its config
        return DESCRIPTIONS[strategy].split(",")[0].split("{")[0].strip()

#: compare_strategies' defaults: the tutorial's recipe (λ = 0.5, 100 alignment and 50 fine-tuning epochs).
DEFAULT_CONFIG: dict[str, Any] = {
    # model (used when no model is passed)
    "hidden_sizes": None,          # None: sized from the data (models.default_width)
    "activation": "relu",
    "dropout": 0.0,
    "batch_norm": False,
    "standardize": True,           # the default model standardises inputs with pooled source+target statistics
    "num_classes": None,           # None: largest label + 1
    # trainer
    "lambda_mmd": 0.5,
    "lambda_schedule": "constant",
    "align_epochs": 100,
    "finetune_epochs": 50,
    "scratch_epochs": None,        # None: finetune_epochs, the target-label budget of the transfer strategies
    "lr": 1e-3,
    "finetune_lr": None,           # None: lr
    "batch_size": 64,
    "target_batch_size": None,     # None: batch_size
    "finetune_batch_size": None,   # None: batch_size
    "weight_decay": 0.0,
    "optimizer": "adam",
    "finetune_policy": None,       # None: fine-tune every layer (a pytl.freezing policy otherwise)
    "mmd_sigmas": None,
    "mmd_estimator": "biased",
    "mmd_scope": "global",         # under torchrun: the MMD² of the global batch, or "per_rank" (pytl.distributed)
    "device": "cpu",
    "progress": False,
    "num_threads": None,           # torch CPU threads while training (None: torch's setting)
}


class EnsembleModel(nn.Module):
    """Averages the class probabilities of its members; returns log(mean probability) as logits."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        probs = torch.stack([F.softmax(m(x), dim=1) for m in self.members]).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


@dataclass
class ComparisonReport:
    """Result of ``compare_strategies`` for one seed.

    accuracy: strategy → target test accuracy (strategies in STRATEGIES order).
    embedding_mmd2: strategy → MMD² between source and target embeddings of its final model (the
    tutorial's rule of thumb: < 0.1 looks transferable, > 0.5 does not).
    """

    accuracy: dict[str, float]
    embedding_mmd2: dict[str, float]
    seconds: dict[str, float]
    skipped: dict[str, str]
    models: dict[str, nn.Module] = field(repr=False)
    histories: dict[str, dict[str, list]] = field(repr=False)
    config: dict[str, Any] = field(repr=False)
    seed: int = 0

    @property
    def negative_transfer(self) -> bool | None:
        """True exactly when the best of "naive" and "mmd" is below "scratch"; None when not all ran."""
        acc = self.accuracy
        if "scratch" not in acc or not ({"naive", "mmd"} & acc.keys()):
            return None
        best = max(acc[s] for s in ("naive", "mmd") if s in acc)
        return best < acc["scratch"]

    def predict_proba(self, strategy: str, X: Any) -> Tensor:
        """Class probabilities of one strategy's model on X (CPU tensor)."""
        if strategy not in self.models:
            raise KeyError(f"no model for {strategy!r}; trained: {sorted(self.models)}")
        model = self.models[strategy]
        x = inp.as_features(X, "X")
        p = next(model.parameters())
        with torch.no_grad(), eval_mode(model):
            return F.softmax(model(x.to(p.device, p.dtype)), dim=1).cpu()

    def explain(self) -> str:
        """One paragraph for a report: the from-scratch baseline, the best transfer strategy, the gap,
        and, when transfer does not clearly pay, the remedies in order of cost."""
        acc, mmd = self.accuracy, self.embedding_mmd2
        transfers = [s for s in ("naive", "mmd") if s in acc]
        if "scratch" not in acc or not transfers:
            missing = "target labels (scratch, naive and mmd need them)" if "scratch" not in acc else "naive/mmd"
            return (f"No negative-transfer check was possible: it compares transfer with a from-scratch baseline "
                    f"on the target labels, and this comparison lacks {missing}.")
        best = max(transfers, key=lambda s: acc[s])
        gap = 100 * (acc[best] - acc["scratch"])
        text = (f"Trained from scratch on the target labels alone, the model reaches {100 * acc['scratch']:.1f}% "
                f"target accuracy; the best transfer strategy, {best}, reaches {100 * acc[best]:.1f}% "
                f"({gap:+.1f} points).")
        if best in mmd and math.isfinite(mmd[best]):
            text += (f" Its source-target embedding MMD² is {mmd[best]:.3f} (below 0.1 looks transferable, "
                     f"above 0.5 does not).")
        if "ensemble" in acc:
            text += f" The ensemble of mmd and scratch reaches {100 * acc['ensemble']:.1f}%."
        if self.negative_transfer:
            text += (" This is negative transfer: the borrowed knowledge hurts. Remedies, cheapest first: transfer "
                     "fewer layers (freeze less of the backbone or re-initialise its top blocks, "
                     "pytl.freezing.FreezeFirst with a smaller k); regularise fine-tuning toward the pretrained "
                     "weights (pytl.freezing.L2SP); change the source domain; or ship the ensemble with the "
                     "from-scratch model as a safety net.")
        elif gap < 1.0:
            text += (" Transfer barely pays here (less than a point): before relying on it, try transferring "
                     "fewer layers or L2-SP regularisation, and keep the ensemble as a safety net.")
        else:
            text += " Transfer pays here: no sign of negative transfer on this seed."
        return text

    def table(self) -> str:
        return _format_table({s: (a, None) for s, a in self.accuracy.items()}, self.embedding_mmd2,
                             self.negative_transfer, self.skipped, title=f"seed {self.seed}", config=self.config)


def _format_table(acc: dict[str, tuple[float, float | None]], mmd: dict[str, float], negative: bool | None,
                  skipped: dict[str, str], title: str, config: dict[str, Any]) -> str:
    rows = [("strategy", "target acc", "emb. MMD²", "uses")]
    for s in STRATEGIES:
        if s not in acc:
            continue
        mean, std = acc[s]
        a = f"{100 * mean:.1f}%" + (f" ± {100 * std:.1f}" if std is not None else "")
        m = f"{mmd[s]:.3f}" if s in mmd and math.isfinite(mmd[s]) else "-"
        rows.append((s, a, m, _describe(s, config)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"pytl strategy comparison ({title})"]
    for j, r in enumerate(rows):
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip())
        if j == 0:
            lines.append("-" * len(lines[-1]))
    for s, why in skipped.items():
        lines.append(f"({s}: skipped, {why})")
    if negative is not None:
        best = max((s for s in ("naive", "mmd") if s in acc), key=lambda s: acc[s][0])
        verdict = "YES: transfer is worse than scratch" if negative else "no"
        lines.append(f"negative transfer: {verdict} (best transfer: {best} {100 * acc[best][0]:.1f}% vs scratch "
                     f"{100 * acc['scratch'][0]:.1f}%)")
    return "\n".join(lines)


def _resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise TypeError(f"compare_strategies got unknown option(s) {unknown}; valid options: {sorted(DEFAULT_CONFIG)}")
    cfg = {**DEFAULT_CONFIG, **config}
    if cfg["finetune_policy"] is not None and not isinstance(cfg["finetune_policy"], FreezingPolicy):
        raise TypeError(f"finetune_policy must be a pytl.freezing policy or None, got {type(cfg['finetune_policy']).__name__}")
    return cfg


def _check_strategies(strategies: Sequence[str] | None) -> list[str]:
    if strategies is None:
        return list(STRATEGIES)
    if isinstance(strategies, str):
        strategies = [strategies]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise ValueError(f"unknown strategy {bad}; choose from {STRATEGIES}")
    if not strategies:
        raise ValueError("strategies is empty")
    return [s for s in STRATEGIES if s in strategies]


def compare_strategies(
    source: Any,
    target_unlabeled: Any,
    target_test: Any,
    target_labeled: Any = None,
    *,
    seed: int = 0,
    strategies: Sequence[str] | None = None,
    model: nn.Module | None = None,
    **config: Any,
) -> ComparisonReport:
    """Train each strategy with identical initial weights and budgets; report target test accuracy.

    - "source_only": ``align_epochs`` on the source (λ = 0).
    - "mmd_only": ``align_epochs`` of CE + λ·MMD² (unsupervised adaptation, no target label).
    - "scratch": ``scratch_epochs`` (default ``finetune_epochs``: the same target-label budget as the
      fine-tuned strategies, which start from source-trained weights instead of random ones).
    - "naive": "source_only", then ``finetune_epochs`` on the target labels.
    - "mmd": "mmd_only", then the same fine-tuning.
    - "ensemble": mean class probabilities of "mmd" and "scratch".

    Strategies that need target labels are skipped (and listed in ``report.skipped``) when
    ``target_labeled`` is None. Inputs are (X, y) pairs of arrays or tensors (X: samples first, any
    feature shape); every input is checked before training starts. ``model``: the initial model for
    all strategies (deep-copied); by default an MLP sized from the data. ``config``: see
    ``DEFAULT_CONFIG``.
    """
    cfg = _resolve_config(config)
    wanted = _check_strategies(strategies)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")

    # ---- check every input before anything trains
    for name, value in (("source", source), ("target_test", target_test), ("target_labeled", target_labeled)):
        if isinstance(value, torch.utils.data.DataLoader):
            raise TypeError(f"compare_strategies takes arrays or tensors; {name} is a DataLoader "
                            "(use TwoStageTrainer for DataLoaders)")
    xs, ys = inp.as_labeled(source, "source")
    xu = inp.as_unlabeled(target_unlabeled, "target_unlabeled")
    if not isinstance(xu, Tensor):
        raise TypeError("compare_strategies takes arrays or tensors; target_unlabeled is a DataLoader")
    xt, yt = inp.as_labeled(target_test, "target_test")
    labeled = None if target_labeled is None else inp.as_labeled(target_labeled, "target_labeled")
    shapes = {"source": xs.shape[1:], "target_unlabeled": xu.shape[1:], "target_test": xt.shape[1:]}
    if labeled is not None:
        shapes["target_labeled"] = labeled[0].shape[1:]
    for name, shape in shapes.items():
        if shape != xs.shape[1:]:
            raise ValueError(f"feature size mismatch: {name} has samples of shape {inp.format_shape(tuple(shape))} "
                             f"but source has {inp.format_shape(tuple(xs.shape[1:]))}; both domains must share a "
                             "feature space")
    label_sets = [("source", ys), ("target_test", yt)] + ([("target_labeled", labeled[1])] if labeled else [])
    num_classes = cfg["num_classes"]
    if num_classes is None:
        num_classes = max(int(y.max()) for _, y in label_sets) + 1
        if num_classes < 2:
            raise ValueError("every label is 0: classification needs at least 2 classes (pass num_classes=)")
    for name, y in label_sets:
        inp.check_label_range(y, num_classes, f"{name}[1] (y)")
    if labeled is not None and labeled[0].shape[0] < num_classes:
        raise ValueError(f"target_labeled has {labeled[0].shape[0]} samples, fewer than the {num_classes} classes; "
                         "fine-tuning needs at least one label per class")
    skipped: dict[str, str] = {}
    if labeled is None:
        for s in wanted:
            if s in NEEDS_TARGET_LABELS:
                skipped[s] = "no target labels"
        wanted = [s for s in wanted if s not in NEEDS_TARGET_LABELS]
    device = resolve_device(cfg["device"], model)

    common = {k: cfg[k] for k in ("lambda_schedule", "lr", "finetune_lr", "batch_size", "target_batch_size",
                                  "finetune_batch_size", "weight_decay", "optimizer", "mmd_sigmas", "mmd_estimator",
                                  "mmd_scope", "progress", "num_threads")}
    common.update(num_classes=num_classes, device=device, seed=seed)
    # The trainer's checks of the settings, once, before anything trains (bad epochs, lr, ...).
    probe = TwoStageTrainer(None, lambda_mmd=cfg["lambda_mmd"], align_epochs=cfg["align_epochs"],
                            finetune_epochs=cfg["finetune_epochs"], finetune_policy=cfg["finetune_policy"], **common)
    scratch_epochs = cfg["scratch_epochs"]
    if scratch_epochs is None:
        scratch_epochs = cfg["finetune_epochs"]
    if isinstance(scratch_epochs, bool) or not isinstance(scratch_epochs, int) or scratch_epochs < 0:
        raise ValueError(f"scratch_epochs must be an int >= 0, got {scratch_epochs!r}")
    cfg["scratch_epochs"] = scratch_epochs

    if model is None:
        stats = Standardize.fit(xs, xu) if cfg["standardize"] else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            base = default_model(inp.prod(tuple(xs.shape[1:])), num_classes, cfg["hidden_sizes"], cfg["activation"],
                                 cfg["dropout"], cfg["batch_norm"], standardize=stats)
    else:
        base = copy.deepcopy(model)
    base = base.to(device)
    # ...and its checks of the model against the data (classes, feature shape, embed/head for MMD).
    probe.model = copy.deepcopy(base)
    probe.check_inputs((xs, ys), xu, labeled, eval_data={"target_test": (xt, yt)})

    models: dict[str, nn.Module] = {}
    histories: dict[str, dict[str, list]] = {}
    seconds: dict[str, float] = {}

    def stage1(name: str, lam: float) -> nn.Module:
        if name in models:
            return models[name]
        t0 = time.perf_counter()
        trainer = TwoStageTrainer(copy.deepcopy(base), lambda_mmd=lam, align_epochs=cfg["align_epochs"], **common)
        trainer.label = f"{name}: "
        trainer.align((xs, ys), xu if lam > 0 else None)
        models[name] = trainer.model
        histories[name] = {"align": trainer.history["align"], "finetune": []}
        seconds[name] = time.perf_counter() - t0
        return trainer.model

    def finetune(name: str, start: nn.Module, start_name: str, epochs: int, policy: FreezingPolicy | None) -> None:
        t0 = time.perf_counter()
        trainer = TwoStageTrainer(copy.deepcopy(start), lambda_mmd=0.0, finetune_epochs=epochs,
                                  finetune_policy=copy.deepcopy(policy), **common)
        trainer.label = f"{name}: "
        trainer.finetune(labeled)
        models[name] = trainer.model
        histories[name] = {"align": histories.get(start_name, {}).get("align", []), "finetune": trainer.history["finetune"]}
        seconds[name] = time.perf_counter() - t0 + seconds.get(start_name, 0.0)

    if "source_only" in wanted or "naive" in wanted:
        stage1("source_only", 0.0)
    if {"mmd_only", "mmd", "ensemble"} & set(wanted):
        stage1("mmd_only", cfg["lambda_mmd"])
    if "naive" in wanted:
        finetune("naive", models["source_only"], "source_only", cfg["finetune_epochs"], cfg["finetune_policy"])
    if "mmd" in wanted or "ensemble" in wanted:
        finetune("mmd", models["mmd_only"], "mmd_only", cfg["finetune_epochs"], cfg["finetune_policy"])
    if "scratch" in wanted or "ensemble" in wanted:
        finetune("scratch", base, "", scratch_epochs, None)
    if "ensemble" in wanted:
        models["ensemble"] = EnsembleModel([models["mmd"], models["scratch"]])
        seconds["ensemble"] = seconds["mmd"] + seconds["scratch"]
    models = {s: models[s] for s in STRATEGIES if s in wanted}

    accuracy, mmd = {}, {}
    dtype = next(base.parameters()).dtype
    n_mmd = min(1024, xs.shape[0], xu.shape[0])
    for s, m in models.items():
        with torch.no_grad(), eval_mode(m):
            logits = torch.cat([m(b.to(device, dtype)).cpu() for b in xt.split(4096)])
            accuracy[s] = float((logits.argmax(1) == yt).double().mean())
            if hasattr(m, "embed"):
                zs = m.embed(xs[:n_mmd].to(device, dtype)).flatten(1).double()
                zu = m.embed(xu[:n_mmd].to(device, dtype)).flatten(1).double()
                mmd[s] = float(mmd2(zs, zu))
    return ComparisonReport(accuracy=accuracy, embedding_mmd2=mmd, seconds={s: seconds[s] for s in models},
                            skipped=skipped, models=models, histories={s: histories[s] for s in models if s in histories},
                            config={**cfg, "num_classes": num_classes, "strategies": list(models)}, seed=seed)


@dataclass
class SeedSummary:
    """Accuracies of several ``ComparisonReport`` runs (one per seed): mean, std, per seed."""

    reports: list[ComparisonReport]

    @property
    def per_seed(self) -> dict[str, list[float]]:
        keys = [s for s in STRATEGIES if all(s in r.accuracy for r in self.reports)]
        return {s: [r.accuracy[s] for r in self.reports] for s in keys}

    @property
    def mean(self) -> dict[str, float]:
        return {s: sum(v) / len(v) for s, v in self.per_seed.items()}

    @property
    def std(self) -> dict[str, float]:
        out = {}
        for s, v in self.per_seed.items():
            mu = sum(v) / len(v)
            out[s] = math.sqrt(sum((a - mu) ** 2 for a in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        return out

    @property
    def negative_transfer(self) -> bool | None:
        """The same rule as ComparisonReport.negative_transfer, on the mean accuracies."""
        m = self.mean
        if "scratch" not in m or not ({"naive", "mmd"} & m.keys()):
            return None
        return max(m[s] for s in ("naive", "mmd") if s in m) < m["scratch"]

    def table(self) -> str:
        mean, std = self.mean, self.std
        mmd = {s: sum(r.embedding_mmd2.get(s, math.nan) for r in self.reports) / len(self.reports) for s in mean}
        seeds = ", ".join(str(r.seed) for r in self.reports)
        return _format_table({s: (mean[s], std[s] if len(self.reports) > 1 else None) for s in mean}, mmd,
                             self.negative_transfer, self.reports[0].skipped,
                             title=f"mean ± std over seeds {seeds}" if len(self.reports) > 1 else f"seed {seeds}",
                             config=self.reports[0].config)


def summarize(reports: Sequence[ComparisonReport]) -> SeedSummary:
    """Mean and standard deviation of several reports (e.g. one per seed)."""
    reports = list(reports)
    if not reports or not all(isinstance(r, ComparisonReport) for r in reports):
        raise TypeError("summarize takes a non-empty sequence of ComparisonReport")
    return SeedSummary(reports)
