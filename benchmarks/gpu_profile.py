"""One forward and one gradient sweep at n = m = 8192, d = 64, K = 5, for Nsight Compute (gpu_check.sh):
where the kernels' time goes (issue slots, shared-memory wavefronts, stall reasons)."""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pytl  # noqa: E402

g = torch.Generator(device="cuda").manual_seed(0)
x = torch.randn(8192, 64, device="cuda", generator=g)
y = torch.randn(8192, 64, device="cuda", generator=g) + 0.1
sig = pytl.bandwidth_ladder(pytl.median_heuristic(x, y))
w = torch.full_like(sig, 1.0 / sig.numel())
torch.ops.pytl.mmd2_terms(x, y, sig, False)
torch.ops.pytl.mmd2_terms_and_grad(w, x, y, sig, False)
torch.cuda.synchronize()
