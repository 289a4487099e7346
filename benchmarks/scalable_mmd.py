"""The scalable MMD estimators and tests against the exact ones (issue 27's targets), in one run:

    python benchmarks/scalable_mmd.py accuracy      # n = m = 65 536, d = 64: RFF value and time vs exact
    python benchmarks/scalable_mmd.py calibration   # H0 rejection rate at α = 0.05 over --draws null draws
    python benchmarks/scalable_mmd.py scale --n 10000000   # statistic and test time, peak memory beyond the data
    python benchmarks/scalable_mmd.py power         # power at equal wall time: exact at n0 vs scalable at larger n
    python benchmarks/scalable_mmd.py training      # one batch's value + gradient: exact vs rff (mmd_method)

Every timing is wall time on this machine with torch's threads (--threads); ratios are taken in the same run.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import pytl  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def shifted(n: int, d: int, shift: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I), y ~ N(shift·e_1, I) in d dimensions, float32."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    y[:, 0] += shift
    return x, y


def accuracy(args) -> None:
    n, d = args.n or 65536, 64
    data = pytl.make_domain_shift(0, n_source=n, n_target_unlabeled=n, n_target_labeled=2, n_target_test=2)
    pairs = {"tutorial's rotation (d = 2)": (torch.as_tensor(data.source[0]), torch.as_tensor(data.target_unlabeled)),
             "mean shift 0.5 (d = 64)": shifted(n, d, 0.5, 0)}
    print(f"| data | exact MMD² | exact s | method | value | rel. error | s | speed-up |\n|---|---|---|---|---|---|---|---|")
    for name, (x, y) in pairs.items():
        exact, te = timed(lambda: float(pytl.mmd2(x, y)))
        for feats in (256, 1024):
            v, t = timed(lambda: float(pytl.mmd2(x, y, method="rff", num_features=feats)))
            print(f"| {name} | {exact:.5f} | {te:.1f} | rff D = {feats}/bandwidth | {v:.5f} | {abs(v / exact - 1):.2%} | "
                  f"{t:.2f} | {te / t:.0f}x |", flush=True)
        v, t = timed(lambda: float(pytl.mmd2(x, y, method="block", estimator="unbiased")))
        print(f"| {name} | {exact:.5f} | {te:.1f} | block (B = √n) | {v:.5f} | {abs(v / exact - 1):.2%} | {t:.2f} | "
              f"{te / t:.0f}x |", flush=True)


def calibration(args) -> None:
    print("| method | n = m | d | draws | rejected at 5% | mean p | s per test |\n|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for method, est in (("block", "unbiased"), ("rff", "biased")):
            ps, t0 = [], time.perf_counter()
            for s in range(args.draws):
                x, y = shifted(n, 8, 0.0, 1000 + s)
                ps.append(pytl.mmd_test(x, y, method=method, estimator=est, num_permutations=199, seed=s,
                                        num_features=256 if method == "rff" else None).p_value)
            p = torch.tensor(ps)
            print(f"| {method} | {n} | 8 | {args.draws} | {float((p <= 0.05).double().mean()):.3f} | "
                  f"{float(p.mean()):.3f} | {(time.perf_counter() - t0) / args.draws:.2f} |", flush=True)


def scale(args) -> None:
    n, d = args.n or 10_000_000, 64
    x, y = shifted(n, d, 0.02, 0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"n = m = {n}, d = {d}, float32: the data take {2 * n * d * 4 / 2**30:.1f} GiB; peak RSS before: "
          f"{base:.1f} GiB")
    for label, fn in (
            ("rff statistic, D = 512/bandwidth", lambda: float(pytl.mmd2(x, y, method="rff", num_features=512))),
            ("rff test, D = 512/bandwidth, 200 chunk permutations",
             lambda: pytl.mmd_test(x, y, method="rff", num_features=512, num_permutations=200).p_value),
            ("block statistic, B = √n", lambda: float(pytl.mmd2(x, y, method="block", estimator="unbiased"))),
            ("block test, B = √n", lambda: pytl.mmd_test(x, y, method="block", estimator="unbiased").p_value)):
        v, t = timed(fn)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"- {label}: {v:.4g} in {t:.0f} s; peak RSS {peak:.1f} GiB ({peak - base:+.2f} over the data)",
              flush=True)


def power(args) -> None:
    """Mean shift δ in d = 8: the exact permutation test at n0 against each scalable test at the n whose test
    takes about the exact test's time (found by doubling), power over --draws draws each."""
    delta, n0 = args.shift, args.n or 2000
    budget = timed(lambda: pytl.mmd_test(*shifted(n0, 8, delta, 0), num_permutations=200))[1]
    rows = [("exact", n0, {})]
    for method, est in (("block", "unbiased"), ("rff", "biased")):
        n = n0
        while timed(lambda: pytl.mmd_test(*shifted(2 * n, 8, delta, 0), method=method, estimator=est,
                                          num_permutations=200, num_features=256 if method == "rff" else None))[1] \
                <= budget and n < 2**22:
            n *= 2
        rows.append((method, n, dict(method=method, estimator=est, num_features=256 if method == "rff" else None)))
    print(f"mean shift {delta} in d = 8; exact test at n0 = {n0}: {budget:.2f} s per test\n")
    print("| method | n = m in the same time | power at 5% |\n|---|---|---|")
    for method, n, kw in rows:
        hits = sum(pytl.mmd_test(*shifted(n, 8, delta, 500 + s), num_permutations=200, seed=s, **kw).p_value <= 0.05
                   for s in range(args.draws))
        print(f"| {method} | {n} | {hits / args.draws:.2f} |", flush=True)


def training(args) -> None:
    """The training regime (TrainSettings.mmd_method): value and gradient of one batch's MMD², exact against rff
    (256 features per bandwidth), best of 3, and rff's mean relative error over 20 feature draws."""
    def best(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    print("| batch per side | d | exact value+grad | rff value+grad | speed-up | rff rel. error (20 draws) |")
    print("|---|---|---|---|---|---|")
    for n, d in ((1024, 128), (4096, 128), (4096, 512), (16384, 512)):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, d, generator=g).requires_grad_()
        y = (torch.randn(n, d, generator=g) + 0.05).requires_grad_()
        sig = pytl.bandwidth_ladder(pytl.median_heuristic(x, y))
        t_exact = best(lambda: pytl.mmd2(x, y, sig).backward())
        t_rff = best(lambda: pytl.mmd2(x, y, sig, method="rff", seed=1).backward())
        with torch.no_grad():
            exact = float(pytl.mmd2(x, y, sig))
            err = sum(abs(float(pytl.mmd2(x, y, sig, method="rff", seed=s)) / exact - 1) for s in range(20)) / 20
        print(f"| {n} | {d} | {t_exact * 1e3:.0f} ms | {t_rff * 1e3:.0f} ms | {t_exact / t_rff:.1f}x | {err:.1%} |",
              flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("accuracy", "calibration", "scale", "power", "training"))
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--shift", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {args.what}: torch {torch.__version__}, {args.threads} thread(s)\n")
    {"accuracy": accuracy, "calibration": calibration, "scale": scale, "power": power,
     "training": training}[args.what](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
