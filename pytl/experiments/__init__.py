"""Experiments on top of the trainer: does transfer help on this problem, and when does it pay?

* :func:`compare_strategies` (``comparison.py``) trains every strategy of ``strategies.py`` from the
  same initial weights with the same budgets and returns a :class:`ComparisonReport` (``report.py``;
  :func:`summarize` over seeds).
* Three curves, one module each: :func:`data_efficiency_curve` (``data_efficiency.py``),
  :func:`layer_transferability` (``layers.py``) and :func:`divergence_sweep` (``divergence.py``). They
  return tidy tables (``tables.py``: :class:`CurveTable`, :class:`CurveRow`, :class:`DivergenceSweep`)
  that print with ``.table()`` and draw with :mod:`pytl.plot`; :func:`find_crossover` (``crossover.py``)
  is where transfer stops paying. ``splits.py`` adapts a curve's data, ``curve_args.py`` checks its
  arguments.
* :func:`select_lambda` (``lambda_selection.py``) trains stage 1 once per λ and picks λ with a label-free
  criterion of :mod:`pytl.validation`, returning a :class:`LambdaSelection`.

A new strategy goes into ``strategies.py`` (name, description, what it needs) and the training plan of
``comparison.py``; a new curve is a new module that returns a :class:`CurveTable`.
"""

from pytl.experiments.comparison import compare_strategies
from pytl.experiments.crossover import Crossover, find_crossover
from pytl.experiments.data_efficiency import DATA_EFFICIENCY_STRATEGIES, data_efficiency_curve
from pytl.experiments.divergence import divergence_sweep
from pytl.experiments.ensemble import EnsembleModel
from pytl.experiments.lambda_search import fixed_lambdas
from pytl.experiments.lambda_selection import LambdaSelection, select_lambda
from pytl.experiments.layers import LAYER_SERIES, layer_transferability
from pytl.experiments.report import ComparisonReport, SeedSummary, summarize
from pytl.experiments.strategies import (
    DEFAULT_CONFIG,
    DEFAULT_STRATEGIES,
    NEEDS_TARGET_LABELS,
    STRATEGIES,
    TRANSFER_STRATEGIES,
    resolve_config,
    select_strategies,
)
from pytl.experiments.tables import CurveRow, CurveTable, DivergenceSweep

__all__ = [
    "DATA_EFFICIENCY_STRATEGIES",
    "DEFAULT_STRATEGIES",
    "DEFAULT_CONFIG",
    "LAYER_SERIES",
    "NEEDS_TARGET_LABELS",
    "STRATEGIES",
    "TRANSFER_STRATEGIES",
    "ComparisonReport",
    "Crossover",
    "CurveRow",
    "CurveTable",
    "DivergenceSweep",
    "EnsembleModel",
    "LambdaSelection",
    "SeedSummary",
    "compare_strategies",
    "data_efficiency_curve",
    "divergence_sweep",
    "find_crossover",
    "fixed_lambdas",
    "layer_transferability",
    "resolve_config",
    "select_lambda",
    "select_strategies",
    "summarize",
]
