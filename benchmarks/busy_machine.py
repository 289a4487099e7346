"""Speed on a busy machine: pytl with its default threads against one thread, beside busy processes.

    python benchmarks/busy_machine.py                 # 2 busy processes (the cores of this machine), every part
    python benchmarks/busy_machine.py --busy 0        # the same on a quiet machine
    python benchmarks/busy_machine.py --parts mmd

Users rarely have idle cores: DataLoader workers, a browser, another job. A parallel region must wait for
every one of its threads to be scheduled, so on a busy machine a small parallel op can take a time slice
instead of microseconds. This runs, with ``--busy`` processes spinning beside it:

- ``mmd``: the training-regime grid of ``pytl.mmd2`` forward + backward (the default bandwidths), with
  torch's default thread count and with one thread;
- ``trainer``: a short ``compare_strategies`` (stage 1 and fine-tuning of the default MLP on 784-wide
  inputs, the shape of flattened MNIST) with ``num_threads`` left at its default and with 1;
- ``loader``: ``TwoStageTrainer.align`` fed by DataLoaders with 2 worker processes, against arrays.

Each line gives the median time of both and their ratio (default / one thread): the target is <= 1.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(1, os.path.dirname(HERE))     # run from a checkout without installing

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import pytl  # noqa: E402

GRID = [(64, 64, 64), (64, 64, 256), (128, 128, 64), (256, 256, 64), (256, 256, 256), (1024, 1024, 64)]


def _spin() -> None:
    while True:
        pass


def timed(fn, threads: int | None, repeats: int) -> float:
    """Median seconds of ``fn()`` with torch at ``threads`` (None: as it is), after one warm-up call."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        torch.set_num_threads(before)


def part_mmd(default_threads: int, repeats: int) -> list[str]:
    lines = [f"| mmd2 fwd+bwd n+m={n}+{m}, d={d} | " for n, m, d in GRID]
    out = []
    for (n, m, d), head in zip(GRID, lines):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, d, generator=g, requires_grad=True)
        y = (torch.randn(m, d, generator=g) + 0.3).requires_grad_(True)

        def step():
            x.grad = y.grad = None
            pytl.mmd2(x, y).backward()

        a, b = timed(step, default_threads, repeats), timed(step, 1, repeats)
        out.append(f"{head}{1e3 * a:.2f} ms | {1e3 * b:.2f} ms | {a / b:.2f} |")
    return out


def _pixels_problem() -> dict:
    """A 784-feature two-domain problem (flattened 28x28): real digits when the [bench] extra is there."""
    try:
        sys.path.insert(0, HERE)
        from real_pairs import load_pair

        p = load_pair("digits→mnist", 0, n_unlabeled=1000, n_test=200)
        flat = {k: (v[0].reshape(len(v[0]), -1), v[1]) if isinstance(v, tuple) else v.reshape(len(v), -1)
                for k, v in p.items()}
        return flat
    except Exception:  # noqa: BLE001  (no [bench] extra: a synthetic stand-in of the same shape)
        g = torch.Generator().manual_seed(0)
        ys, yt = torch.randint(0, 10, (1797,), generator=g), torch.randint(0, 10, (1050,), generator=g)
        proto = torch.randn(10, 784, generator=g)
        xs = proto[ys] + torch.randn(1797, 784, generator=g)
        xt = proto[yt] * 0.7 + 0.5 + torch.randn(1050, 784, generator=g)
        return {"source": (xs, ys), "target_unlabeled": xt[:1000], "target_labeled": (xt[1000:], yt[1000:])}


def part_trainer(repeats: int) -> list[str]:
    data = _pixels_problem()
    data.pop("target_test", None)

    def run(threads):
        def go():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pytl.compare_strategies(**data, folds=None, seed=0, strategies=["source_only", "mmd_only", "mmd"],
                                        align_epochs=3, finetune_epochs=10, **threads,
                                        **pytl.experiments.fixed_lambdas())  # the workload measured before "auto"
        return go

    rows = []
    for name, kw in (("default ('auto')", {}), ("None (torch's threads)", {"num_threads": None})):
        a, b = timed(run(kw), None, repeats), timed(run({"num_threads": 1}), None, repeats)
        rows.append(f"| compare_strategies, 784 features, num_threads {name} vs 1 | {a:.2f} s | {b:.2f} s | {a / b:.2f} |")
    return rows


def part_loader(repeats: int) -> list[str]:
    data = _pixels_problem()
    xs, ys = (torch.as_tensor(v) for v in data["source"])
    xt = torch.as_tensor(data["target_unlabeled"])
    src = DataLoader(TensorDataset(xs.float(), ys), batch_size=64, shuffle=True, num_workers=2,
                     persistent_workers=True)
    tgt = DataLoader(TensorDataset(xt.float()), batch_size=64, shuffle=True, num_workers=2, persistent_workers=True)

    def run(loaders, threads):
        def go():
            t = pytl.TwoStageTrainer(None, align_epochs=2, progress=False, num_classes=10, **threads)
            t.align(src, tgt) if loaders else t.align((xs, ys), xt)
        return go

    out = []
    for name, loaders in (("DataLoaders with 2 workers", True), ("arrays", False)):
        a, b = timed(run(loaders, {}), None, repeats), timed(run(loaders, {"num_threads": 1}), None, repeats)
        out.append(f"| TwoStageTrainer.align, {name}, num_threads default ('auto') vs 1 | {a:.2f} s | {b:.2f} s | "
                   f"{a / b:.2f} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy processes beside (default: cores)")
    ap.add_argument("--parts", nargs="*", default=["mmd", "trainer", "loader"], choices=("mmd", "trainer", "loader"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    default_threads = torch.get_num_threads()
    procs = [mp.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in procs:
        p.start()
    try:
        print(f"busy_machine: {args.busy} busy process(es), {os.cpu_count()} cores, torch {torch.__version__}, "
              f"default threads {default_threads}\n")
        print("| case | default threads | 1 thread | ratio |")
        print("|---|---|---|---|")
        if "mmd" in args.parts:
            print("\n".join(part_mmd(default_threads, args.repeats * 10)), flush=True)
        if "trainer" in args.parts:
            print("\n".join(part_trainer(max(1, args.repeats // 2))), flush=True)
        if "loader" in args.parts:
            print("\n".join(part_loader(max(1, args.repeats // 2))), flush=True)
    finally:
        for p in procs:
            p.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
