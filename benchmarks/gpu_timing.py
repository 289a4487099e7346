"""CUDA timing table for benchmarks/gpu_check.sh: pytl vs the naive torch MMD on the same GPU.

Forward + backward, K = 5 bandwidths (a ratio-2 ladder in gamma), float32, CUDA events, medians
of a few repeats. The exp-unit limit is pairs x exps / (16 exps/clock/SM x SMs x clock), with the
pairs the fused kernels visit (forward: the two self triangles + the cross block; backward: every
ordered pair once per side) and one exp per pair and bandwidth.
"""

from __future__ import annotations

import subprocess
import sys

import torch

import pytl

LADDER = (-2, -1, 0, 1, 2)
CASES = [(8192, 64), (8192, 2), (8192, 512), (65536, 64)]


def sm_clock_hz() -> float:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        )
        return float(out.stdout.split()[0]) * 1e6
    except Exception:  # no nvidia-smi: the H100 SXM boost clock
        return 1.98e9


def time_cuda(fn, repeats: int = 3) -> float:
    fn()
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


def main() -> int:
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    clock = sm_clock_hz()
    exp_rate = 16 * props.multi_processor_count * clock
    print(f"GPU: {props.name}, {props.multi_processor_count} SMs, SM clock {clock / 1e9:.2f} GHz, torch {torch.__version__}")
    print(f"{'n=m':>7} {'d':>4} {'pytl s':>9} {'naive s':>9} {'speed-up':>9} {'exp-limit s':>12} {'of limit':>9}")
    for n, d in CASES:
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(n, d, device=dev, generator=g)
        y = torch.randn(n, d, device=dev, generator=g) * 1.1 + 0.2
        s0 = float(pytl.median_heuristic(x, y))
        sig = torch.tensor([s0 * 2 ** (j / 2) for j in LADDER], device=dev)

        def run(impl):
            def step():
                a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
                impl(a, b, sig).backward()
            return step

        t_pytl = time_cuda(run(pytl.mmd2))
        try:
            t_naive = time_cuda(run(pytl.ops.mmd2_reference), repeats=2)
            naive = f"{t_naive:9.4f} {t_naive / t_pytl:8.1f}x"
        except torch.OutOfMemoryError:
            naive = f"{'OOM':>9} {'-':>9}"
        torch.cuda.empty_cache()
        forward_pairs = n * (n - 1) + n * n  # two triangles + cross block
        backward_pairs = 4 * n * n  # each side's rows against all columns
        limit = (forward_pairs + backward_pairs) * len(LADDER) / exp_rate
        print(f"{n:>7} {d:>4} {t_pytl:9.4f} {naive} {limit:12.4f} {limit / t_pytl:8.0%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
