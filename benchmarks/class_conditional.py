"""Class-conditional MMD (LMMD), forward + backward: pytl.class_conditional_mmd2 against the usual torch
formulation (DSAN's: the pooled kernel matrix and the class-summed weight matrices, n x m each;
pytl.testing.class_conditional_mmd2_naive), in the same run, at the issue's sizes.

    python benchmarks/class_conditional.py                       # n = m = 4096, d = 256, C = 10 and 65 (CPU)
    python benchmarks/class_conditional.py --device cuda
    python benchmarks/class_conditional.py --n 1024 --classes 10  # smaller

Each measurement runs in its own process (so that the peak resident memory, Linux VmHWM, is its own):
the best of ``--repeats`` timed runs after one warm-up, the loss value, and the peak memory growth (CPU)
or torch.cuda.max_memory_allocated (CUDA). Prints a markdown table of times, the speed-up (naive / pytl)
and the memory; ratios are the result, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))


def _inputs(n: int, d: int, classes: int, device: str):
    import torch

    g = torch.Generator().manual_seed(n * 31 + d + classes)
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, d, generator=g) * 1.1 + 0.1
    labels = torch.randint(classes, (n,), generator=g)
    xp = torch.nn.functional.one_hot(labels, classes).float()
    yp = torch.softmax(2 * torch.randn(n, classes, generator=g), 1)
    return x.to(device), y.to(device), xp.to(device), yp.to(device)


def worker(impl: str, n: int, d: int, classes: int, device: str, repeats: int) -> dict:
    """One implementation at one size, in this process."""
    import torch

    import pytl
    from peak_memory import reset_peak_rss, status_bytes
    from pytl.testing import class_conditional_mmd2_naive

    torch.manual_seed(0)
    x0, y0, xp, yp = _inputs(n, d, classes, device)
    sig = pytl.bandwidth_ladder(pytl.median_heuristic(x0, y0))
    fn = pytl.class_conditional_mmd2 if impl == "pytl" else class_conditional_mmd2_naive

    def step() -> float:
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        out = fn(x, y, xp, yp, sig)
        out.backward()
        if device != "cpu":
            torch.cuda.synchronize()
        return float(out)

    value = step()  # warm-up
    if device == "cpu":
        reset_peak_rss()
        base = status_bytes("VmRSS")
    else:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    peak = (status_bytes("VmHWM") if device == "cpu" else torch.cuda.max_memory_allocated()) - base
    return {"seconds": best, "value": value, "peak_bytes": max(peak, 0)}


def measure(impl: str, n: int, d: int, classes: int, device: str, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--n", str(n), "--d", str(d), "--classes", str(classes),
           "--device", device, "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096, help="rows of x and of y")
    p.add_argument("--d", type=int, default=256, help="features")
    p.add_argument("--classes", type=int, nargs="+", default=[10, 65])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", choices=["pytl", "naive"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.d, args.classes[0], args.device, args.repeats)))
        return 0
    print(f"class-conditional MMD, fwd+bwd, n = m = {args.n}, d = {args.d}, device {args.device}, best of "
          f"{args.repeats}, 5 bandwidths (median ladder)\n")
    print("| C | pytl (s) | naive (s) | speed-up | pytl peak memory | naive peak memory | relative difference |")
    print("|---|---|---|---|---|---|---|")
    for c in args.classes:
        ours = measure("pytl", args.n, args.d, c, args.device, args.repeats)
        base = measure("naive", args.n, args.d, c, args.device, args.repeats)
        if "error" in ours or "error" in base:
            print(f"| {c} | {ours.get('seconds', ours.get('error'))} | {base.get('seconds', base.get('error'))} | | | | |")
            continue
        rel = abs(ours["value"] - base["value"]) / max(abs(base["value"]), 1e-30)
        print(f"| {c} | {ours['seconds']:.3f} | {base['seconds']:.3f} | {base['seconds'] / ours['seconds']:.1f}× | "
              f"{ours['peak_bytes'] / 2**20:.0f} MiB | {base['peak_bytes'] / 2**20:.0f} MiB | {rel:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
