"""Strategy comparison (``compare_strategies``, ``ComparisonReport``, ``summarize``): moved to
:mod:`pytl.experiments`. This module re-exports its names so that ``from pytl.compare import ...``
keeps working."""

from pytl.experiments.comparison import compare_strategies
from pytl.experiments.ensemble import EnsembleModel
from pytl.experiments.report import ComparisonReport, SeedSummary, summarize
from pytl.experiments.strategies import DEFAULT_CONFIG, DEFAULT_STRATEGIES, STRATEGIES

# the module's former constants and imports that callers reached through it, still importable from here
from pytl.experiments.strategies import DESCRIPTIONS, NEEDS_TARGET_LABELS  # noqa: F401
from pytl.train import TwoStageTrainer  # noqa: F401  (tests patch its stages through pytl.compare)

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_STRATEGIES",
    "STRATEGIES",
    "ComparisonReport",
    "EnsembleModel",
    "SeedSummary",
    "compare_strategies",
    "summarize",
]
