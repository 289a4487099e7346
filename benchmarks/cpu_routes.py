"""The two CPU routes of the fused MMD against each other and against the machine's sgemm.

    python benchmarks/cpu_routes.py            # roofline at n = m = 4096, d = 512, then the small-batch grid
    python benchmarks/cpu_routes.py --quick    # n = m = 2048 for the roofline, fewer grid points

The sweep (csrc/cpu/mmd_cpu.cpp: register-blocked micro-GEMM, fused exps and gradient) and the GEMM on
tiles (csrc/cpu/mmd_gemm_tiles_cpu.cpp: torch's sgemm on tile pairs, a vectorised epilogue), forced with
PYTL_CPU_MMD_ROUTE, forward + backward to both inputs, float32, fixed bandwidths, alternating in one
process, best of --repeats. Roofline: the op's three products over the N^2/2 pairs (dots, and the two
gradient products; 3 N^2 d FLOP, N = n + m) at the sgemm rate torch reaches in the same run
(1024 x d times d x 1024). The default route is the faster one of each grid cell; this script is how
the switch (n + m <= 128 and d >= 512 take the GEMM route) was chosen.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytl  # noqa: E402
from minibatch import best_time  # noqa: E402  (benchmarks/minibatch.py, the script's folder)

ROUTES = ("sweep", "gemm")


def time_routes(n: int, d: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=g).requires_grad_()
    y = (torch.randn(n, d, generator=g) * 1.1).requires_grad_()
    sig = pytl.bandwidth_ladder(torch.tensor(1.0)) * d**0.5

    def step() -> None:
        x.grad = y.grad = None
        pytl.mmd2(x, y, sig).backward()

    best = dict.fromkeys(ROUTES, float("inf"))
    saved = os.environ.get("PYTL_CPU_MMD_ROUTE")
    try:
        for _ in range(repeats):
            for route in ROUTES:
                os.environ["PYTL_CPU_MMD_ROUTE"] = route
                if best[route] == float("inf"):
                    step()  # warm up
                best[route] = min(best[route], best_time(step, 1))
    finally:
        if saved is None:
            os.environ.pop("PYTL_CPU_MMD_ROUTE", None)
        else:
            os.environ["PYTL_CPU_MMD_ROUTE"] = saved
    return best


def sgemm_rate(d: int, repeats: int) -> float:
    a, b = torch.randn(1024, d), torch.randn(d, 1024)
    a @ b
    return 2 * 1024 * 1024 * d / best_time(lambda: a @ b, repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    n, d = (2048, 512) if args.quick else (4096, 512)
    t = time_routes(n, d, max(2, args.repeats // 3))
    rate = sgemm_rate(d, args.repeats)
    flops = 3 * (2 * n) ** 2 * d
    print(f"roofline at n = m = {n}, d = {d}, float32, {threads} threads: sgemm {rate / 1e9:.0f} GFLOP/s in this run, "
          f"{flops / 1e9:.0f} GFLOP -> {flops / rate * 1e3:.0f} ms")
    for route in ROUTES:
        print(f"  {route:<5} {t[route] * 1e3:8.1f} ms  {flops / t[route] / 1e9:5.0f} GFLOP/s  "
              f"{flops / rate / t[route]:5.0%} of the sgemm roofline")
    sizes = (16, 32, 64, 128) if args.quick else (16, 32, 48, 64, 96, 128, 256)
    dims = (128, 512, 2048) if args.quick else (64, 128, 256, 512, 1024, 2048)
    print(f"\nsweep / gemm time (> 1: the GEMM route is faster), n = m, best of {args.repeats}")
    print(f"{'d':>6} | " + " ".join(f"{s:>7}" for s in sizes))
    for dim in dims:
        cells = []
        for size in sizes:
            r = time_routes(size, dim, args.repeats)
            cells.append(f"{r['sweep'] / r['gemm']:>7.2f}")
        print(f"{dim:>6} | " + " ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
