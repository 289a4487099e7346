"""pytl: transfer learning and domain adaptation for PyTorch, with fused C++/CUDA MMD kernels.

The hot path, the multi-bandwidth RBF MMD and its gradient, runs in fused kernels registered as
torch ops (torch.ops.pytl.*) that never build a pairwise matrix.
"""

from pytl import ops
from pytl.ops import MMDLoss, bandwidth_ladder, median_heuristic, mmd2

__version__ = "0.1.0"

__all__ = ["MMDLoss", "bandwidth_ladder", "median_heuristic", "mmd2", "ops", "__version__"]
