"""CUDA timing table for benchmarks/gpu_check.sh: pytl vs the plain-torch MMD on the same GPU.

Forward and forward + backward, K = 5 bandwidths (the median-heuristic ladder, ratio 2 in gamma),
float32, CUDA events, medians of a few repeats, fresh inputs per case. Baselines, measured in the same
run: "naive" = pytl.testing.mmd2_reference (matrices from |a|^2 + |b|^2 - 2ab, one exp pass per bandwidth,
autograd through them) and "cdist" = the torch.cdist formulation of the popular libraries.

Limits printed beside each pytl time (rates from the card's SM count and max SM clock):
  exp limit = pairs x K / (16 exps/clock/SM x SMs x clock), pairs = those the kernels visit
              (forward: the two self triangles + the cross block; forward+backward: the gradient sweep,
              every ordered pair of the pooled sample once); K exps per pair, as if there were no ladder
  FMA limit = pairs x FMAs per pair / (128 FP32 lanes/clock/SM x SMs x clock): d per pair for the dot
              product, d more in the sweep for the gradient product W.b
Also times pytl.diagnostics.mmd_test (n = m = 2048, d = 32, 1000 permutations) against the usual
approach (materialise the kernel matrix, index it with each permutation in a loop) on the GPU.

Writes $OUT/gpu_timing.json (when OUT is set) and prints the tables last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo's pytl
import pytl  # noqa: E402
import pytl.testing  # noqa: E402  (the naive reference)
from pytl import diagnostics  # noqa: E402

LADDER = (-2, -1, 0, 1, 2)
CASES = [(8192, 64), (8192, 2), (8192, 512), (16384, 64), (65536, 64)]


def sm_clock_hz() -> float:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        )
        return float(out.stdout.split()[0]) * 1e6
    except Exception:  # no nvidia-smi: the H100 SXM boost clock
        return 1.98e9


def time_cuda(fn, repeats: int) -> float:
    fn()  # warm-up (and the OOM probe for the baselines)
    if not torch.cuda.is_available():  # the CPU dry run (PYTL_TIMING_DRY_RUN=1): wall clock
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def cdist_mmd2(x, y, sigmas):
    def block_mean(a, b):
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * s * s)) for s in sigmas).mean() / len(sigmas)

    return block_mean(x, x) + block_mean(y, y) - 2 * block_mean(x, y)


def timed(impl, x, y, sig, backward: bool, repeats: int):
    def step():
        if backward:
            a, b = x.detach().requires_grad_(), y.detach().requires_grad_()
            impl(a, b, sig).backward()
        else:
            with torch.no_grad():
                impl(x, y, sig)

    if not torch.cuda.is_available():
        return time_cuda(step, repeats), 0.0
    try:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = time_cuda(step, repeats)
        return t, (torch.cuda.max_memory_allocated() - base) / 2**20
    except torch.OutOfMemoryError:
        return None, None
    finally:
        torch.cuda.empty_cache()


def mmd_case(n: int, d: int, backward: bool, rates: dict, dev) -> dict:
    g = torch.Generator(device=dev).manual_seed(n + d)
    x = torch.randn(n, d, device=dev, generator=g)
    y = torch.randn(n, d, device=dev, generator=g) * 1.1 + 0.2
    s0 = float(pytl.median_heuristic(x, y))
    sig = torch.tensor([s0 * 2 ** (j / 2) for j in LADDER], device=dev)
    pytl_impl = lambda a, b, s: pytl.mmd2(a, b, s)  # noqa: E731  (mean over the K bandwidths)
    naive_impl = lambda a, b, s: pytl.testing.mmd2_reference(a, b, s)  # noqa: E731
    t_pytl, mb_pytl = timed(pytl_impl, x, y, sig, backward, repeats=7)
    big = n > 20000  # the matrices need > 50 GB: one probe each, no repeats
    t_naive, mb_naive = timed(naive_impl, x, y, sig, backward, repeats=1 if big else 3)
    t_cdist, mb_cdist = timed(cdist_mmd2, x, y, sig, backward, repeats=1 if big else 3)
    with torch.no_grad():
        v_pytl = float(pytl.mmd2(x, y, sig))
        v_ref = float(pytl.testing.mmd2_reference(x.double(), y.double(), sig.double())) if n <= 16384 else None
    # forward: each unordered self pair once + the cross block, d FMAs per pair (the dot product);
    # forward+backward: one gradient sweep over all (2n)^2 ordered pairs, 2d FMAs per pair (dot + W.b)
    pairs = 4 * n * n if backward else n * (n - 1) + n * n
    exps = pairs * len(LADDER)
    fma_ops = pairs * (2 * d if backward else d)
    return {
        "n": n, "d": d, "backward": backward, "pytl_s": t_pytl, "pytl_MiB": mb_pytl,
        "naive_s": t_naive, "naive_MiB": mb_naive, "cdist_s": t_cdist, "cdist_MiB": mb_cdist,
        "exp_limit_s": exps / rates["exp"], "fma_limit_s": fma_ops / rates["fma"],
        "value_pytl": v_pytl, "value_float64": v_ref,
    }


def permutation_case(dev) -> dict:
    n, d, P = (2048, 32, 1000) if dev.type == "cuda" else (100, 4, 20)
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(n, d, device=dev, generator=g)
    y = torch.randn(n, d, device=dev, generator=g) + 0.05
    sig = pytl.bandwidth_ladder(pytl.median_heuristic(x, y), LADDER)

    def fused():
        return diagnostics.mmd_test(x, y, sigmas=sig, num_permutations=P, seed=0)

    def usual():  # materialise K once, index it with each permutation
        z = torch.cat([x, y])
        d2 = torch.cdist(z, z).pow(2)
        k = sum(torch.exp(-d2 / (2 * s * s)) for s in sig) / len(sig)
        gen = torch.Generator(device=dev).manual_seed(0)
        null = []
        for _ in range(P):
            p = torch.randperm(2 * n, device=dev, generator=gen)
            a, b = p[:n], p[n:]
            null.append(k[a][:, a].mean() + k[b][:, b].mean() - 2 * k[a][:, b].mean())
        return torch.stack(null)

    t_fused = time_cuda(fused, 3)
    t_usual = time_cuda(usual, 1)
    return {"n": n, "d": d, "permutations": P, "fused_s": t_fused, "usual_s": t_usual}


def fmt(t):
    return f"{t:9.5f}" if t is not None else f"{'OOM':>9}"


def ratio(t, base):
    return f"{base / t:7.1f}x" if (t and base) else f"{'-':>8}"


def main() -> int:
    global CASES
    if os.environ.get("PYTL_TIMING_DRY_RUN") == "1":  # check this script's logic on a CPU, tiny sizes
        dev, sms, name, CASES = torch.device("cpu"), 1, "CPU dry run", [(300, 8), (200, 3)]
    else:
        dev = torch.device("cuda")
        props = torch.cuda.get_device_properties(dev)
        sms, name = props.multi_processor_count, props.name
    clock = sm_clock_hz()
    rates = {"exp": 16 * sms * clock, "fma": 128 * sms * clock}
    header = (f"GPU: {name}, {sms} SMs, max SM clock {clock / 1e9:.2f} GHz, "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(header, flush=True)
    rows = []
    t0 = time.time()
    for n, d in CASES:
        for backward in (False, True):
            r = mmd_case(n, d, backward, rates, dev)
            rows.append(r)
            print(json.dumps(r), flush=True)
    perm = permutation_case(dev)
    print(json.dumps(perm), flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_timing.json"), "w") as f:
            json.dump({"header": header, "mmd": rows, "mmd_test": perm}, f, indent=1)

    print(f"\n{header}  ({time.time() - t0:.0f} s)")
    print(f"{'n=m':>6} {'d':>4} {'pass':>7} {'pytl s':>9} {'MiB':>6} {'naive s':>9} {'cdist s':>9} "
          f"{'vs naive':>8} {'vs cdist':>8} {'exp lim':>8} {'FMA lim':>8} {'rel err':>8}")
    for r in rows:
        err = (abs(r["value_pytl"] - r["value_float64"]) / abs(r["value_float64"])
               if r["value_float64"] else float("nan"))
        mib = f"{r['pytl_MiB']:6.0f}" if r["pytl_MiB"] is not None else f"{'-':>6}"
        print(f"{r['n']:>6} {r['d']:>4} {'fwd+bwd' if r['backward'] else 'fwd':>7} {fmt(r['pytl_s'])} {mib} "
              f"{fmt(r['naive_s'])} {fmt(r['cdist_s'])} {ratio(r['pytl_s'], r['naive_s'])} "
              f"{ratio(r['pytl_s'], r['cdist_s'])} {r['exp_limit_s'] / r['pytl_s']:8.0%} "
              f"{r['fma_limit_s'] / r['pytl_s']:8.0%} {err:8.1e}")
    print(f"mmd_test n=m={perm['n']} d={perm['d']} P={perm['permutations']}: fused {perm['fused_s']:.4f} s, "
          f"usual {perm['usual_s']:.3f} s ({perm['usual_s'] / perm['fused_s']:.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
