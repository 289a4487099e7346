"""The strategies of a comparison, what each one uses, and the options of ``compare_strategies``.

Everything that runs strategies (the comparison, the curve drivers) takes its strategy names and
its option set from here: one list of strategies, one table of defaults, one way to resolve and
check a caller's options.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pytl.freezing import FreezingPolicy

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_STRATEGIES",
    "ALIGNED",
    "DESCRIPTIONS",
    "NEEDS_TARGET_LABELS",
    "STRATEGIES",
    "TRANSFER_STRATEGIES",
    "best_transfer",
    "describe",
    "negative_transfer",
    "resolve_config",
    "select_strategies",
]

#: what compare_strategies runs by default: the tutorial's six
DEFAULT_STRATEGIES = ("source_only", "mmd_only", "scratch", "naive", "mmd", "ensemble")
#: every strategy (``strategies="all"``): the six, class-conditional MMD (LMMD, DSAN: Zhu et al. 2020), and
#: the baselines every comparison should include, Deep CORAL (Sun & Saenko 2016) and DANN (Ganin et al. 2016)
STRATEGIES = DEFAULT_STRATEGIES + ("cmmd_only", "cmmd", "coral_only", "coral", "dann_only", "dann")
NEEDS_TARGET_LABELS = frozenset({"scratch", "naive", "mmd", "ensemble", "cmmd", "coral", "dann"})
#: the strategies that transfer source knowledge and fine-tune on the target labels: what "scratch" is compared with
TRANSFER_STRATEGIES = ("naive", "mmd", "cmmd", "coral", "dann")
#: the unsupervised alignments: strategy "<name>_only" (stage 1) and "<name>" (then fine-tuned), their λ option
ALIGNED = {"mmd": "lambda_mmd", "cmmd": "lambda_cmmd", "coral": "lambda_coral", "dann": "lambda_dann"}

DESCRIPTIONS = {
    "source_only": "source labels, {align_epochs} epochs",
    "mmd_only": "+ unlabelled target: CE + {lambda_mmd:g}·MMD², {align_epochs} epochs",
    "scratch": "target labels only, {scratch_epochs} epochs from random weights",
    "naive": "source_only, then {finetune_epochs} epochs on target labels",
    "mmd": "mmd_only, then {finetune_epochs} epochs on target labels",
    "ensemble": "mean probabilities of mmd and scratch",
    "cmmd_only": "+ unlabelled target: CE + {lambda_cmmd:g}·class-conditional MMD², {align_epochs} epochs",
    "cmmd": "cmmd_only, then {finetune_epochs} epochs on target labels",
    "coral_only": "+ unlabelled target: CE + {lambda_coral:g}·CORAL, {align_epochs} epochs",
    "coral": "coral_only, then {finetune_epochs} epochs on target labels",
    "dann_only": "+ unlabelled target: CE + domain discriminator, gradient reversed ×{lambda_dann:g}, {align_epochs} epochs",
    "dann": "dann_only, then {finetune_epochs} epochs on target labels",
}

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
    # λ of "coral_only"/"coral": Deep CORAL's ||C_s - C_t||^2 / 4d^2 is ~1e-4 on the tutorial's 64-wide
    # embedding, where MMD² is 0.1-0.5, so its λ is larger; 1000 makes its term a sizeable fraction of the
    # cross-entropy there (docs/python_layer.md, "Which alignment")
    "lambda_coral": 1000.0,
    # λ of "cmmd_only"/"cmmd": the class-conditional MMD² averaged over classes has the scale of one MMD²
    "lambda_cmmd": 0.5,
    # λ of "dann_only"/"dann": the gradient reversal's scale (DANN's own loss is not weighted)
    "lambda_dann": 1.0,
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
    "finetune_validation": None,   # a fraction of the target labels held out to stop fine-tuning early (None: off)
    "patience": None,              # epochs without a better validation loss before stopping (needs the above)
    "mmd_sigmas": None,
    "mmd_estimator": "biased",
    "mmd_scope": "global",         # under torchrun: the MMD² of the global batch, or "per_rank" (pytl.distributed)
    "warmup": 0.1,                 # fraction of stage-1 steps before "cmmd" (and a class-weight estimate) starts
    "cmmd_confidence": 0.0,        # target rows less confident than this get no weight in "cmmd"
    "class_weights": None,         # source class weights of stage 1: None, a sequence, or "estimated" (label shift)
    # without target labels: the label-free criterion that ranks the strategies (pytl.validation), scored on
    # this fraction of the source held out from training (or a labelled (X, y) source set of your own);
    # "im", as select_lambda's default: the criterion that ranked best in benchmarks/label_free_ranking.py
    "criterion": "im",
    "source_validation": 0.2,
    "device": "cpu",
    "progress": False,
    "num_threads": None,           # torch CPU threads while training (None: torch's setting)
}


def resolve_config(config: Mapping[str, Any], caller: str = "compare_strategies") -> dict[str, Any]:
    """``DEFAULT_CONFIG`` updated with ``config``; an unknown option is a TypeError listing the valid ones.

    The values themselves are checked by the trainer (epochs, lr, batch sizes, ...) when a run is set
    up; only ``finetune_policy``, which the comparison copies per strategy, is checked here."""
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise TypeError(f"{caller} got unknown option(s) {unknown}; valid options: {sorted(DEFAULT_CONFIG)}")
    cfg = {**DEFAULT_CONFIG, **config}
    if cfg["finetune_policy"] is not None and not isinstance(cfg["finetune_policy"], FreezingPolicy):
        raise TypeError(f"finetune_policy must be a pytl.freezing policy or None, got {type(cfg['finetune_policy']).__name__}")
    return cfg


def select_strategies(strategies: Any, allowed: Iterable[str] = STRATEGIES) -> tuple[str, ...]:
    """The requested strategies (a name, a sequence of names from ``allowed``, or "all"), in ``allowed`` order."""
    allowed = tuple(allowed)
    if isinstance(strategies, str) and strategies == "all":
        return allowed
    if isinstance(strategies, str):
        strategies = [strategies]
    if not isinstance(strategies, Iterable):
        raise TypeError(f"strategies must be a sequence of names from {allowed}, got {strategies!r} "
                        f"({type(strategies).__name__})")
    strategies = list(strategies)
    bad = [s for s in strategies if s not in allowed]
    if bad:
        raise ValueError(f"strategies: unknown strategy {bad}; choose from {allowed}")
    if not strategies:
        raise ValueError(f"strategies is empty; choose from {allowed}")
    return tuple(s for s in allowed if s in strategies)


def describe(strategy: str, config: Mapping[str, Any]) -> str:
    """What ``strategy`` uses, with the budgets of ``config`` filled in (a report's "uses" column)."""
    try:
        return DESCRIPTIONS[strategy].format(**config)
    except (KeyError, ValueError, IndexError):  # a report built by hand, without its config
        return DESCRIPTIONS[strategy].split(",")[0].split("{")[0].strip()


def best_transfer(accuracy: Mapping[str, float]) -> str | None:
    """The transfer strategy with the highest accuracy (the first on a tie), None when none ran."""
    ran = [s for s in TRANSFER_STRATEGIES if s in accuracy]
    return max(ran, key=lambda s: accuracy[s]) if ran else None


def negative_transfer(accuracy: Mapping[str, float]) -> bool | None:
    """The negative-transfer rule: True exactly when the best transfer strategy is below "scratch";
    None when "scratch" or every transfer strategy is missing."""
    best = best_transfer(accuracy)
    if "scratch" not in accuracy or best is None:
        return None
    return accuracy[best] < accuracy["scratch"]
