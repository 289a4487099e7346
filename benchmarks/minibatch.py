"""The training regime: one MMD² forward + backward per step, on mini-batches of wide embeddings.

    python benchmarks/compare.py --minibatch          # the grid below (a few minutes on 2 cores)
    python benchmarks/compare.py --minibatch --quick  # three points (seconds)
    python benchmarks/compare.py --minibatch --device cuda   # the same grid on a GPU (gpu_check.sh runs it)

Grid n = m ∈ {32, 64, 128, 256, 512, 1024} × d ∈ {64, 256, 512, 1024, 2048}, float32, all torch
threads, forward + backward to both inputs, with the default bandwidths (the median-heuristic ladder
of the pooled batch, recomputed every call as a training step does) and with fixed ones. "usual" is
the code the popular transfer-learning libraries run: torch.cdist of the pooled batch, the median of
its squared distances, one exp per bandwidth, autograd through the n×m matrices. Both are timed in
one process, alternating, best of --repeats: on a shared machine other tenants only ever add time.
On CUDA each call is timed to a torch.cuda.synchronize() after it (the step's real cost, launches
included).
Also timed alone: pytl.median_heuristic, as a share of pytl's default-bandwidth call.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytl  # noqa: E402
from pytl.bandwidths import LADDER_EXPONENTS, bandwidth_ladder, median_heuristic  # noqa: E402

SIZES = (32, 64, 128, 256, 512, 1024)
DIMS = (64, 256, 512, 1024, 2048)
QUICK_POINTS = ((64, 256), (256, 256), (64, 2048))


def usual_mmd2(x: torch.Tensor, y: torch.Tensor, sigmas: torch.Tensor | None) -> torch.Tensor:
    """Biased MMD² the way the popular libraries write it: pooled cdist, median bandwidth, one exp per σ."""
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z) ** 2
    if sigmas is None:
        n = z.shape[0]
        off = d2.detach()[~torch.eye(n, dtype=torch.bool, device=z.device)]
        sigma0 = torch.sqrt(off.median() / 2.0)
        sigmas = sigma0 * torch.tensor([2.0 ** (j / 2.0) for j in LADDER_EXPONENTS], dtype=z.dtype, device=z.device)
    k = sum(torch.exp(-d2 / (2.0 * s * s)) for s in sigmas) / len(sigmas)
    nx = x.shape[0]
    return k[:nx, :nx].mean() + k[nx:, nx:].mean() - 2.0 * k[:nx, nx:].mean()


def best_time(fn: Callable[[], None], repeats: int, device: str = "cpu") -> float:
    """The shortest of ``repeats`` runs of ``fn``, in seconds (on CUDA, each to a synchronize)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_point(n: int, d: int, repeats: int, device: str = "cpu") -> dict[str, float]:
    """Seconds (best of ``repeats``) of each implementation at one grid point, and the values' agreement."""
    g = torch.Generator().manual_seed(n * 7919 + d)
    x0 = torch.randn(n, d, generator=g).to(device)
    y0 = (torch.randn(n, d, generator=g) * 1.1 + 0.1).to(device)
    fixed = bandwidth_ladder(median_heuristic(x0, y0))
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()

    def step(f: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            x.grad = y.grad = None
            f().backward()
        return run

    runs = {
        "usual_median": step(lambda: usual_mmd2(x, y, None)),
        "pytl_median": step(lambda: pytl.mmd2(x, y)),
        "usual_fixed": step(lambda: usual_mmd2(x, y, fixed)),
        "pytl_fixed": step(lambda: pytl.mmd2(x, y, fixed)),
        "median_heuristic": lambda: median_heuristic(x0, y0),
    }
    for run in runs.values():  # warm up: allocator, OpenMP pool, first-call dispatch
        run()
    out = {k: float("inf") for k in runs}
    for _ in range(repeats):  # alternate, so that a noisy stretch hits every implementation alike
        for k, run in runs.items():
            out[k] = min(out[k], best_time(run, 1, device))
    with torch.no_grad():
        a, b = float(usual_mmd2(x0.double(), y0.double(), fixed.double())), float(pytl.mmd2(x0, y0, fixed))
    if device != "cpu":
        torch.cuda.synchronize()
    out["agree"] = float(abs(a - b) <= 1e-4 * max(1.0, abs(a)))
    return out


def run_grid(quick: bool, repeats: int, device: str = "cpu") -> int:
    points = list(QUICK_POINTS) if quick else [(n, d) for d in DIMS for n in SIZES]
    where = torch.cuda.get_device_name() if device != "cpu" else f"{torch.get_num_threads()} torch threads"
    print(f"mini-batch grid on {device}: float32, forward + backward, {where}, best of "
          f"{repeats}, K = {len(LADDER_EXPONENTS)} bandwidths; ratio = usual / pytl")
    head = (f"{'n = m':>6} {'d':>5} | {'usual, median':>13} {'pytl, median':>12} {'ratio':>6} | {'usual, fixed':>12} "
            f"{'pytl, fixed':>11} {'ratio':>6} | {'median heur.':>12} {'share':>6}")
    print(head)
    print("-" * len(head))
    bad = 0
    for n, d in points:
        r = measure_point(n, d, repeats, device)
        ms = {k: 1e3 * v for k, v in r.items() if k != "agree"}
        share = r["median_heuristic"] / r["pytl_median"]
        print(f"{n:>6} {d:>5} | {ms['usual_median']:>10.2f} ms {ms['pytl_median']:>9.2f} ms "
              f"{r['usual_median'] / r['pytl_median']:>5.1f}x | {ms['usual_fixed']:>9.2f} ms {ms['pytl_fixed']:>8.2f} ms "
              f"{r['usual_fixed'] / r['pytl_fixed']:>5.1f}x | {ms['median_heuristic']:>9.2f} ms {share:>6.0%}"
              + ("" if r["agree"] else "  VALUES DIFFER"), flush=True)
        bad += 0 if r["agree"] else 1
    return 1 if bad else 0
