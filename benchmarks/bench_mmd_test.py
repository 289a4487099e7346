"""pytl.mmd_test (the MMD permutation test) vs the usual approach, time and peak memory, in one run.

    python benchmarks/bench_mmd_test.py              # n = m = 2048, d = 32, K = 5, 1000 permutations, float32
    python benchmarks/bench_mmd_test.py --memory     # n = m = 32 768: peak memory growth of mmd_test
    python benchmarks/bench_mmd_test.py --quick      # n = m = 512, 200 permutations (a smoke test)

Implementations, each measured in a fresh subprocess so that its peak resident-memory growth (Linux
VmHWM after a reset through /proc/self/clear_refs) is its own:

* "pytl": ``pytl.mmd_test``: every permutation is a column of one fused kernel-matrix product
  (``rbf_kernel_matmul``), chunked over the permutations; no (n+m)^2 matrix.
* "loop": the usual approach: materialise the (n+m) x (n+m) kernel matrix once, then for each
  permutation index it (x-x, y-y and x-y blocks) and compute the biased MMD² in a Python loop.
* "matmul": a stronger baseline: materialise K once, then K @ U for all permutations' split vectors
  with BLAS (chunked like pytl). Still (n+m)^2 memory.

All three use the same bandwidths (the median-heuristic ladder of pytl.mmd2, K = 5, weights 1/K) and
the same splits (pytl.diagnostics' permutation generator, same seed), so their statistics and null
distributions must agree; the script fails if they do not (relative 1e-3 in float32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from peak_memory import reset_peak_rss, status_bytes  # benchmarks/peak_memory.py (the script's folder)

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------------------- workers


def _data(n: int, d: int):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, d, generator=g) * 1.1 + 0.1
    return x, y


def _kernel_matrix(z, sigmas, weights):
    """K(z, z) materialised: |a|^2 + |b|^2 - 2ab on centred data, one exp pass per bandwidth."""
    import torch

    z = z - z.mean(0, keepdim=True)
    sq = (z * z).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (z @ z.t())).clamp_min_(0)
    k = torch.zeros_like(d2)
    for s, w in zip(sigmas.tolist(), weights.tolist()):
        k.add_(torch.exp(d2 * (-1.0 / (2.0 * s * s))), alpha=w)
    return k


def _run_loop(x, y, sigmas, weights, permutations: int, seed: int):
    import torch

    from pytl.diagnostics.permutation_test import split_chunks

    n, m = x.shape[0], y.shape[0]
    K = _kernel_matrix(torch.cat([x, y]), sigmas, weights)
    stats = []
    for masks in split_chunks(n, m, permutations, seed, 1024):
        for mask in masks:  # the usual loop: index K with each permutation's split
            ix, iy = mask.nonzero()[:, 0], (~mask).nonzero()[:, 0]
            kxx = K[ix][:, ix]
            kyy = K[iy][:, iy]
            kxy = K[ix][:, iy]
            stats.append(float(kxx.sum(dtype=torch.float64) / n**2 + kyy.sum(dtype=torch.float64) / m**2
                               - 2 * kxy.sum(dtype=torch.float64) / (n * m)))
    return stats[0], stats[1:]


def _run_matmul(x, y, sigmas, weights, permutations: int, seed: int):
    import torch

    from pytl.diagnostics.permutation_test import split_chunks

    n, m = x.shape[0], y.shape[0]
    K = _kernel_matrix(torch.cat([x, y]), sigmas, weights)
    stats = []
    for masks in split_chunks(n, m, permutations, seed, 1024):
        u = torch.where(masks.t(), torch.tensor(1.0 / n), torch.tensor(-1.0 / m))
        stats.append((u * (K @ u)).sum(0, dtype=torch.float64))
    stats = torch.cat(stats).tolist()
    return stats[0], stats[1:]


def worker(impl: str, n: int, d: int, permutations: int, repeats: int) -> dict:
    import torch

    import pytl
    from pytl.diagnostics import mmd_test

    x, y = _data(n, d)
    sigmas = pytl.bandwidth_ladder(pytl.median_heuristic(x, y))
    weights = torch.full((sigmas.numel(),), 1.0 / sigmas.numel())

    def run():
        if impl == "pytl":
            res = mmd_test(x, y, sigmas, permutations, "biased", seed=0, weights=weights)
            return res.statistic, res.null_samples.tolist()
        if impl == "loop":
            return _run_loop(x, y, sigmas, weights, permutations, 0)
        return _run_matmul(x, y, sigmas, weights, permutations, 0)

    mmd_test(x[:64], y[:64], sigmas, 5, seed=0, weights=weights)  # load the op, warm the allocator
    reset_peak_rss()
    rss0 = status_bytes("VmRSS")
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    peak = status_bytes("VmHWM")
    times.sort()
    statistic, null = out
    return {"impl": impl, "seconds": times[len(times) // 2], "all_seconds": times,
            "peak_growth_mb": max(0, peak - rss0) / 2**20, "statistic": statistic, "null": null,
            "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------- driver


def measure(impl: str, n: int, d: int, permutations: int, repeats: int, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, str(n), str(d), str(permutations), str(repeats)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "error": f"timed out after {timeout:.0f}s"}
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or "").strip().splitlines()[-1:] or ["failed"]
        return {"impl": impl, "error": tail[0][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _agree(a: dict, b: dict, rtol: float = 1e-3) -> bool:
    import math

    scale = max(abs(a["statistic"]), max(abs(v) for v in a["null"]), 1e-12)
    diffs = [abs(p - q) for p, q in zip([a["statistic"]] + a["null"], [b["statistic"]] + b["null"])]
    return len(a["null"]) == len(b["null"]) and all(math.isfinite(v) for v in diffs) and max(diffs) <= rtol * scale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None, help="samples per domain (default 2048; --memory: 32768)")
    parser.add_argument("--d", type=int, default=32, help="features (default 32)")
    parser.add_argument("--permutations", type=int, default=1000, help="permutations (default 1000)")
    parser.add_argument("--impls", default="pytl,matmul,loop", help="comma-separated: pytl, matmul, loop")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of pytl and matmul (median; loop: 1)")
    parser.add_argument("--memory", action="store_true",
                        help="pytl only at n = m = 32 768 (the others would need (2n)^2 x 4 bytes = 17 GB)")
    parser.add_argument("--quick", action="store_true", help="n = m = 512, 200 permutations")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        impl, n, d, perms, reps = args.worker
        print(json.dumps(worker(impl, int(n), int(d), int(perms), int(reps))))
        return 0

    n = args.n or (32768 if args.memory else 512 if args.quick else 2048)
    perms = 200 if args.quick and args.permutations == 1000 else args.permutations
    impls = ["pytl"] if args.memory else [i for i in args.impls.split(",") if i]
    bad = sorted(set(impls) - {"pytl", "matmul", "loop"})
    if bad:
        parser.error(f"unknown implementation(s) {bad}")
    import torch

    print(f"mmd_test benchmark: n = m = {n}, d = {args.d}, K = 5 (median-heuristic ladder), {perms} permutations, "
          f"float32; torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}")
    results = {}
    for impl in impls:
        reps = 1 if impl == "loop" or args.memory else args.repeats
        r = measure(impl, n, args.d, perms, reps, args.timeout)
        results[impl] = r
        if "error" in r:
            print(f"{impl:>7}: {r['error']}", flush=True)
            continue
        times = ", ".join(f"{t:.3f}" for t in r["all_seconds"])
        print(f"{impl:>7}: {r['seconds']:9.3f} s (runs: {times})   peak memory growth {r['peak_growth_mb']:8.1f} MiB   "
              f"MMD² {r['statistic']:.6f}", flush=True)
    failures = 0
    base = results.get("pytl", {})
    for impl, r in results.items():
        if impl == "pytl" or "seconds" not in r or "seconds" not in base:
            continue
        ok = _agree(base, r)
        failures += 0 if ok else 1
        memory = (f"{r['peak_growth_mb'] / base['peak_growth_mb']:.1f}x the memory" if base["peak_growth_mb"] >= 1
                  else "pytl's memory growth is below 1 MiB")
        print(f"{impl} / pytl: {r['seconds'] / base['seconds']:.1f}x the time, {memory}; statistics and null "
              f"{'agree' if ok else 'DIFFER'}")
    kernel_gb = (2 * n) ** 2 * 4 / 1e9
    print(f"the usual approach materialises the (2n)^2 kernel matrix: {kernel_gb:.2f} GB in float32 at n = m = {n}"
          + (" (not run)" if args.memory else ""))
    if "error" in base:
        failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
