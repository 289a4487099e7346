"""Small CUDA cases for compute-sanitizer (memcheck, racecheck), run by benchmarks/gpu_check.sh.

Sizes are chosen to hit every edge of the tiling: partial row and column tiles (n, m not multiples of
64), two feature chunks with a partial second one (d = 40), triangle tiles of the self blocks, and the
backward's column splits. Each result is also compared with the CPU kernels in float64, so a run that
the sanitizer passes is a run that computed the right numbers.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import pytl  # noqa: E402
from pytl import ops  # noqa: E402

torch.manual_seed(0)
worst = 0.0
for dtype in (torch.float32, torch.float64, torch.float16):
    x = torch.randn(70, 40, dtype=torch.float64)
    y = torch.randn(45, 40, dtype=torch.float64) + 0.3
    sig = torch.tensor([3.0, 6.0, 12.0], dtype=torch.float64)
    for unbiased in (False, True):
        t_cpu = torch.ops.pytl.mmd2_terms(x, y, sig, unbiased)
        g_cpu = torch.ops.pytl.mmd2_terms_backward(torch.ones(3, dtype=torch.float64), x, y, sig, unbiased)
        xc, yc = x.to("cuda", dtype), y.to("cuda", dtype)
        sc = sig.to("cuda", torch.float32 if dtype == torch.float16 else dtype)
        t = torch.ops.pytl.mmd2_terms(xc, yc, sc, unbiased)
        g = torch.ops.pytl.mmd2_terms_backward(torch.ones(3, device="cuda", dtype=sc.dtype), xc, yc, sc, unbiased)
        torch.cuda.synchronize()
        errs = [(t.double().cpu() - t_cpu).abs().max() / t_cpu.abs().max()]
        errs += [(a.double().cpu() - b).abs().max() / b.abs().max() for a, b in zip(g, g_cpu)]
        worst = max(worst, max(float(e) for e in errs)) if dtype != torch.float16 else worst
        print(f"mmd2 {dtype} unbiased={unbiased}: rel err terms/gx/gy/gsig = {[f'{float(e):.1e}' for e in errs]}")

z = torch.randn(130, 40, dtype=torch.float64)
s = torch.randn(130, 70, dtype=torch.float64)
sig = torch.tensor([2.0, 4.0], dtype=torch.float64)
w = torch.tensor([0.5, 0.5], dtype=torch.float64)
ref = torch.ops.pytl.rbf_kernel_matmul(z, s, sig, w)
for dtype in (torch.float32, torch.float64):
    got = torch.ops.pytl.rbf_kernel_matmul(z.to("cuda", dtype), s.to("cuda", dtype), sig.to("cuda", dtype),
                                           w.to("cuda", dtype))
    err = float((got.double().cpu() - ref).abs().max() / ref.abs().max())
    worst = max(worst, err)
    print(f"rbf_kernel_matmul {dtype}: rel err {err:.1e}")

x = torch.randn(300, 16, device="cuda", requires_grad=True)
y = torch.randn(200, 16, device="cuda", requires_grad=True)
pytl.mmd2(x, y).backward()  # the Python path: median ladder, autograd, backward kernel
torch.cuda.synchronize()
print(f"worst float32/float64 relative error vs CPU: {worst:.1e}")
sys.exit(0 if worst < 1e-4 else 1)
