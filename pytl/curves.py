"""Curves (``data_efficiency_curve``, ``layer_transferability``, ``divergence_sweep``), their tables
and the crossover: moved to :mod:`pytl.experiments`. This module re-exports their names so that
``from pytl.curves import ...`` keeps working."""

from pytl.experiments.crossover import Crossover, find_crossover
from pytl.experiments.data_efficiency import data_efficiency_curve
from pytl.experiments.divergence import divergence_sweep
from pytl.experiments.layers import layer_transferability
from pytl.experiments.tables import CurveRow, CurveTable, DivergenceSweep

# the module's former constants and the helper its tests use, still importable from here
from pytl.experiments.curve_args import RESERVED  # noqa: F401
from pytl.experiments.data_efficiency import DATA_EFFICIENCY_STRATEGIES  # noqa: F401
from pytl.experiments.divergence import MMD_SAMPLES  # noqa: F401
from pytl.experiments.layers import LAYER_SERIES  # noqa: F401
from pytl.experiments.splits import stratified_order as _stratified_order  # noqa: F401
from pytl.experiments.strategies import TRANSFER_STRATEGIES  # noqa: F401
from pytl.experiments.tables import TITLES  # noqa: F401

__all__ = [
    "Crossover",
    "CurveRow",
    "CurveTable",
    "DivergenceSweep",
    "data_efficiency_curve",
    "divergence_sweep",
    "find_crossover",
    "layer_transferability",
]
