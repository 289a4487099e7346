"""The strategies of a comparison, what each one uses, and the options of ``compare_strategies``.

Everything that runs strategies (the comparison, the curve drivers) takes its strategy names and
its option set from here: one list of strategies, one table of defaults, one way to resolve and
check a caller's options.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pytl._progress import interactive
from pytl.experiments.lambda_search import AUTO
from pytl.experiments.weighted_ensemble import WEIGHTED_ENSEMBLE
from pytl.freezing import FreezingPolicy
from pytl.train import ALIGNMENTS, TrainSettings

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_STRATEGIES",
    "ALIGNED",
    "DESCRIPTIONS",
    "MODEL_OPTIONS",
    "NEEDS_TARGET_LABELS",
    "PER_RUN_SETTINGS",
    "POLICIES",
    "SEMI_SUPERVISED",
    "STRATEGIES",
    "TRAINER_OPTIONS",
    "TRANSFER_STRATEGIES",
    "best_transfer",
    "describe",
    "negative_transfer",
    "resolve_config",
    "select_strategies",
]

#: what compare_strategies runs by default: the tutorial's six
DEFAULT_STRATEGIES = ("source_only", "mmd_only", "scratch", "naive", "mmd", "ensemble")
#: the unsupervised alignments (pytl.train.alignments, in registration order): strategy "<name>_only" (stage 1)
#: and "<name>" (then fine-tuned), and their λ option
ALIGNED = {key: cls.lambda_option for key, cls in ALIGNMENTS.items()}
#: every strategy (``strategies="all"``): the six, then "<name>_only" and "<name>" of every other alignment:
#: class-conditional MMD (LMMD, DSAN: Zhu et al. 2020) and the baselines every comparison should include,
#: Deep CORAL (Sun & Saenko 2016) and DANN (Ganin et al. 2016)
#: the semi-supervised strategies, one per alignment: stage 1 learns from the target labels too
#: (TrainSettings.semi_supervised), then fine-tunes; under cross-validation stage 1 is trained per fold
SEMI_SUPERVISED = {f"ssl_{a}": a for a in ALIGNED}
#: and "weighted_ensemble", which trains nothing: the others' calibrated probabilities in the mixture that best
#: predicts the held-out target labels (bagged stacking, weighted_ensemble.py)
STRATEGIES = DEFAULT_STRATEGIES + tuple(s for a in ALIGNED if f"{a}_only" not in DEFAULT_STRATEGIES
                                        for s in (f"{a}_only", a)) + tuple(SEMI_SUPERVISED) + (WEIGHTED_ENSEMBLE,)
NEEDS_TARGET_LABELS = frozenset({"scratch", "naive", "ensemble", *ALIGNED, *SEMI_SUPERVISED, WEIGHTED_ENSEMBLE})
#: the strategies that transfer source knowledge and fine-tune on the target labels: what "scratch" is compared with
TRANSFER_STRATEGIES = ("naive", *ALIGNED, *SEMI_SUPERVISED)

DESCRIPTIONS = {
    "source_only": "source labels, {align_epochs} epochs",
    "scratch": "target labels only, {scratch_epochs} epochs from random weights",
    "naive": "source_only, then {finetune_epochs} epochs on target labels",
    "ensemble": "mean probabilities of mmd and scratch",
    **{f"{a}_only": f"+ unlabelled target: {cls.description}, {{align_epochs}} epochs" for a, cls in ALIGNMENTS.items()},
    **{a: f"{a}_only, then {{finetune_epochs}} epochs on target labels" for a in ALIGNMENTS},
    **{s: f"source and target labels + unlabelled target: {ALIGNMENTS[a].description}, {{align_epochs}} epochs, "
          f"then {{finetune_epochs}} on target labels" for s, a in SEMI_SUPERVISED.items()},
    WEIGHTED_ENSEMBLE: "calibrated probabilities stacked by held-out likelihood: {weighted_ensemble_members}",
}

#: the trainer settings that compare_strategies sets per run itself (λ and alignment per strategy, the seed)
#: or that make no sense across its runs (one checkpoint file, torch.distributed)
PER_RUN_SETTINGS = ("lambda_align", "alignment", "seed", "checkpoint", "distributed", "semi_supervised")
#: the options of the default model (compare_strategies builds it when no model= is given)
MODEL_OPTIONS = ("hidden_sizes", "activation", "dropout", "batch_norm", "standardize")
#: the freezing policies: each run gets its own copy (a policy keeps per-run state, e.g. L2-SP's snapshot)
POLICIES = ("align_policy", "finetune_policy")
#: the trainer settings that compare_strategies hands to every trainer (the policies copied)
TRAINER_OPTIONS = tuple(n for n in TrainSettings.names() if n not in PER_RUN_SETTINGS)

#: compare_strategies' defaults: the trainer's (TrainSettings: the tutorial's recipe, 100 alignment and 50
#: fine-tuning epochs), each alignment's λ, the default model's and the comparison's own options.
DEFAULT_CONFIG: dict[str, Any] = {
    # model (used when no model is passed)
    "hidden_sizes": None,          # None: two layers of models.default_width (256) for any input
    "activation": "relu",
    "dropout": 0.0,
    "batch_norm": False,
    "standardize": True,           # the default model standardises inputs with pooled source+target statistics
    # each alignment's λ: "auto", its grid around the alignment's default (pytl.train.alignments), chosen by the
    # target labels (nested under cross-validation); without labels, and for "ssl_<a>", the default itself
    # (lambda_search.comparison_grids, semi_supervised_defaults)
    **{cls.lambda_option: AUTO for cls in ALIGNMENTS.values()},
    # the trainer's settings
    **{name: TrainSettings.defaults()[name] for name in TRAINER_OPTIONS},
    "device": "cpu",               # the trainer's None means "where the model lives"; a comparison's model is new
    "progress": "auto",            # a bar per training run when someone watches (a terminal, a notebook)
    "scratch_epochs": None,        # None: finetune_epochs, the target-label budget of the transfer strategies
    # "ssl_<a>": None, stage 1 of align_epochs from the initial weights; k, from "source_only" for k epochs (cheaper,
    # in the shipped model and every fold alike; measured in benchmarks/OUTCOMES.md)
    "ssl_epochs": None,
    # without target labels: the label-free criterion that ranks the strategies (pytl.validation), scored on
    # this fraction of the source held out from training (or a labelled (X, y) source set of your own);
    # "im", as select_lambda's default: the criterion that ranked best in benchmarks/label_free_ranking.py
    "criterion": "im",
    "source_validation": 0.2,
    # what a strategy that uses target labels ships: "refit", trained again on every label after the
    # cross-validation; "folds", the mean of its cross-validation fold models, the models whose held-out
    # predictions estimated and weighed it (runs.py; measured in benchmarks/OUTCOMES.md)
    "ship": "refit",
}


def resolve_config(config: Mapping[str, Any], caller: str = "compare_strategies") -> dict[str, Any]:
    """``DEFAULT_CONFIG`` updated with ``config``; an unknown option is a TypeError listing the valid ones.

    The values themselves are checked by the trainer (epochs, lr, batch sizes, ...) when a run is set
    up; only the policies, which the comparison copies per run, are checked here."""
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise TypeError(f"{caller} got unknown option(s) {unknown}; valid options: {sorted(DEFAULT_CONFIG)}")
    cfg = {**DEFAULT_CONFIG, **config}
    if cfg["progress"] == "auto":  # minutes of training: say so where someone watches, not in logs and CI
        cfg["progress"] = interactive()
    for name in ("align_policy", "finetune_policy"):
        if cfg[name] is not None and not isinstance(cfg[name], FreezingPolicy):
            raise TypeError(f"{name} must be a pytl.freezing policy or None, got {type(cfg[name]).__name__}")
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


def describe(strategy: str, config: Mapping[str, Any], history: Mapping[str, Any] | None = None) -> str:
    """What ``strategy`` uses, with the budgets of ``config`` filled in (a report's "uses" column), and what
    else shaped it: the fine-tuning policy, source class weights, and, from its ``history``, an early stop."""
    warm = strategy in SEMI_SUPERVISED and config.get("ssl_epochs") is not None
    if warm:
        config = {**config, "align_epochs": config["ssl_epochs"]}
    ssl = (config.get("ssl_lambdas") or {}).get(strategy)  # a semi-supervised strategy's own λ
    if ssl is not None:
        config = {**config, ALIGNED[SEMI_SUPERVISED[strategy]]: ssl}
    # a λ that is not one number (a SeedSummary's where the seeds chose differently) is named, not formatted
    config = {**config, **{o: _Name("λ") for o in ALIGNED.values() if isinstance(config.get(o), str)}}
    try:
        text = DESCRIPTIONS[strategy].format(**config)
    except (KeyError, ValueError, IndexError):  # a report built by hand, without its config
        return DESCRIPTIONS[strategy].split(",")[0].split("{")[0].strip()
    extras = ["stage 1 started from source_only (ssl_epochs)"] if warm else []
    tuned = (config.get("finetune_lambdas") or {}).get(strategy)  # its own λ, where it is not "<strategy>_only"'s
    if tuned is not None and tuned != config.get(ALIGNED[strategy]):
        extras.append(f"from the stage 1 at λ = {tuned:g} (its own cross-validated choice)")
    if strategy in TRANSFER_STRATEGIES and config.get("finetune_policy") is not None:
        extras.append(f"fine-tuning policy {config['finetune_policy']!r}")
    weights = config.get("class_weights")
    if weights is not None and strategy not in ("scratch", "ensemble"):
        extras.append("source class weights " + ("estimated (BBSE)" if isinstance(weights, str) else "given"))
    runs = (history or {}).get("finetune", [])
    if runs and (strategy == "scratch" or strategy in TRANSFER_STRATEGIES):
        planned = config.get("scratch_epochs" if strategy == "scratch" else "finetune_epochs")
        if isinstance(planned, int) and len(runs) < planned:
            extras.append(f"fine-tuning stopped early after {len(runs)} epochs")
    return text + "".join(f"; {e}" for e in extras)


class _Name(str):
    """Text that any format spec leaves as it is ("{lambda_mmd:g}" of "λ" is "λ")."""

    def __format__(self, spec: str) -> str:
        return str(self)


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
