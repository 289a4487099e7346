"""MMD across ranks (issue 27): parallel efficiency of W gloo ranks against one process.

    python benchmarks/ring_mmd.py                  # the ring-exact statistic, n = m = 65 536, d = 64, 2 ranks
    python benchmarks/ring_mmd.py --n 16384 --world 2 --grad
    python benchmarks/ring_mmd.py --what rff-test --n 2000000   # mmd_test(method="rff", group=...) of shards
    python benchmarks/ring_mmd.py --what block-test --n 2000000

Both sides get the same cores: one process with W threads (pytl.mmd2, the fused exact op), and W processes with
one thread each (pytl.mmd2(group=..., exchange="ring"), each rank holding 1/W of the rows). Parallel efficiency
= (one-process time) / (ring time): 1.0 means the ring costs nothing beyond splitting the pairs. Each time is
the best of --repeats, the ranks' values checked against the one-process value.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))  # run from a checkout without installing
import pytl  # noqa: E402


def data(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    y[:, 0] += 0.5
    return x, y


def best_time(fn, repeats: int) -> tuple[float, float]:
    times, value = [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return value, min(times)


def rank_main() -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    n, d, repeats, grad = (int(os.environ[k]) for k in ("BENCH_N", "BENCH_D", "BENCH_REPEATS", "BENCH_GRAD"))
    what = os.environ["BENCH_WHAT"]
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=os.environ["BENCH_RDZV"], rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    x, y = data(n, d)
    xr, yr = x.tensor_split(world)[rank].clone(), y.tensor_split(world)[rank].clone()

    def run() -> float:
        dist.barrier()
        if what != "ring":
            return one_call(what, xr, yr, dist.group.WORLD)
        if grad:
            xg = xr.clone().requires_grad_()
            v = pytl.mmd2(xg, yr, group=dist.group.WORLD, exchange="ring")
            v.backward()
            return float(v)
        with torch.no_grad():
            return float(pytl.mmd2(xr, yr, group=dist.group.WORLD, exchange="ring"))

    value, seconds = best_time(run, repeats)
    if rank == 0:
        print(f"RESULT {value!r} {seconds!r}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def one_call(what: str, x: torch.Tensor, y: torch.Tensor, group=None) -> float:
    """The scalable test's statistic (rff or block), in one process or over the ranks of ``group``."""
    if what == "rff-test":
        return pytl.mmd_test(x, y, method="rff", num_permutations=200, group=group).statistic
    return pytl.mmd_test(x, y, method="block", estimator="unbiased", group=group).statistic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=65536, help="rows per side (global)")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--grad", action="store_true", help="time value and gradient (x requires grad)")
    p.add_argument("--what", choices=("ring", "rff-test", "block-test"), default="ring")
    a = p.parse_args()
    torch.set_num_threads(a.world)
    x, y = data(a.n, a.d)
    if a.what != "ring":
        def single() -> float:
            return one_call(a.what, x, y)
    elif a.grad:
        def single() -> float:
            xg = x.clone().requires_grad_()
            v = pytl.mmd2(xg, y)
            v.backward()
            return float(v)
    else:
        def single() -> float:
            with torch.no_grad():
                return float(pytl.mmd2(x, y))
    ref, t_single = best_time(single, a.repeats)
    rdzv = Path(tempfile.mkdtemp()) / "rdzv"
    env = {**os.environ, "WORLD_SIZE": str(a.world), "BENCH_N": str(a.n), "BENCH_D": str(a.d),
           "BENCH_REPEATS": str(a.repeats), "BENCH_GRAD": str(int(a.grad)), "BENCH_RDZV": f"file://{rdzv}",
           "BENCH_WHAT": a.what,
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import ring_mmd; ring_mmd.rank_main()"
    procs = [subprocess.Popen([sys.executable, "-c", code], env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                              text=True) for r in range(a.world)]
    outs = [pr.communicate()[0] for pr in procs]
    line = next(ln for ln in outs[0].splitlines() if ln.startswith("RESULT"))
    value, t_ring = (float(v) for v in line.split()[1:])
    print("| n = m | d | W | what | one process (W threads) s | W ranks (1 thread each) s | efficiency | value rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    label = {"ring": "ring, value + gradient" if a.grad else "ring, value"}.get(a.what, a.what)
    print(f"| {a.n} | {a.d} | {a.world} | {label} | {t_single:.2f} | "
          f"{t_ring:.2f} | {t_single / t_ring:.2f} | {abs(value / ref - 1):.1e} |")


if __name__ == "__main__":
    main()
