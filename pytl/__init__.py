"""pytl: transfer learning and domain adaptation for PyTorch, with fused C++/CUDA MMD kernels.

The hot path, the multi-bandwidth RBF MMD and its gradient, runs in fused kernels registered as
torch ops (torch.ops.pytl.*) that never build a pairwise matrix. On top: models with head swap
(pytl.models), freezing policies (pytl.freezing), diagnostics (pytl.diagnostics), the two-stage
trainer (pytl.train), strategy comparison and curves (pytl.experiments), figures (pytl.plot), the
tutorial's synthetic data (pytl.data) and ``python -m pytl demo`` (pytl.cli). The layers and where a
new thing goes: docs/architecture.md.
"""

from pytl import distributed, ops
from pytl.bandwidths import bandwidth_ladder, median_heuristic
from pytl.losses import ClassConditionalMMDLoss, CORALLoss, MMDLoss, coral_loss
from pytl.ops import class_conditional_mmd2, mmd2, rbf_kernel_matmul

from pytl import data, freezing, models  # noqa: E402  (after ops: they use the loaded op)
from pytl import diagnostics  # noqa: E402
from pytl import validation  # noqa: E402  (label-free model selection; experiments uses it)
from pytl import experiments  # noqa: E402
from pytl.experiments import (
    ComparisonReport,
    CurveTable,
    DivergenceSweep,
    compare_strategies,
    data_efficiency_curve,
    divergence_sweep,
    layer_transferability,
    select_lambda,
    summarize,
)
from pytl import plot  # noqa: E402  (imports matplotlib only when it draws)
from pytl.diagnostics import (
    DivergenceReport,
    FeasibilityReport,
    MMDTestResult,
    domain_divergence,
    mmd_test,
    proxy_a_distance,
    rank_sources,
    transfer_feasibility,
)
from pytl.data import make_domain_shift
from pytl.models import ClassifierHead, ConvEncoder, MLPEncoder, TransferModel
from pytl.train import TwoStageTrainer

__version__ = "0.1.0"

__all__ = [
    "ClassifierHead",
    "ComparisonReport",
    "ConvEncoder",
    "CurveTable",
    "DivergenceReport",
    "DivergenceSweep",
    "FeasibilityReport",
    "MMDTestResult",
    "MLPEncoder",
    "CORALLoss",
    "ClassConditionalMMDLoss",
    "MMDLoss",
    "TransferModel",
    "TwoStageTrainer",
    "bandwidth_ladder",
    "class_conditional_mmd2",
    "compare_strategies",
    "coral_loss",
    "data",
    "data_efficiency_curve",
    "diagnostics",
    "distributed",
    "experiments",
    "divergence_sweep",
    "domain_divergence",
    "freezing",
    "layer_transferability",
    "make_domain_shift",
    "median_heuristic",
    "mmd2",
    "mmd_test",
    "models",
    "ops",
    "plot",
    "proxy_a_distance",
    "rank_sources",
    "rbf_kernel_matmul",
    "select_lambda",
    "summarize",
    "transfer_feasibility",
    "validation",
    "__version__",
]
