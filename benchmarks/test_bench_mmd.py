"""pytest-benchmark suite: pytl vs the naive torch MMD vs KeOps (when installed).

    pytest benchmarks/                                  # everything that fits in memory
    pytest benchmarks/ -k "4096 and 64"                 # one size
    pytest benchmarks/ --benchmark-group-by=param:n,param:d,param:mode

Grid: n = m in {1024, 4096, 16384}, d in {2, 64, 512}, forward and forward+backward, K = 5
bandwidths (a ratio-2 ladder), float32, all torch threads. Cases whose materialised matrices would
not fit in this machine's memory are skipped with the reason (the naive version needs ~3 n^2 floats
per live intermediate). Ratios belong in the same run: read them off the grouped table.
"""

import pytest
import torch

import pytl
import pytl.testing

LADDER = (-2, -1, 0, 1, 2)


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 << 30


def _keops_mmd2(x, y, sigmas, weights):
    from pykeops.torch import LazyTensor

    def block_mean(a, b):
        d2 = ((LazyTensor(a[:, None, :]) - LazyTensor(b[None, :, :])) ** 2).sum(-1)
        kernel = sum(w * (-d2 / (2 * s * s)).exp() for s, w in zip(sigmas.tolist(), weights.tolist()))
        return kernel.sum(dim=1).sum() / (a.shape[0] * b.shape[0])

    return block_mean(x, x) + block_mean(y, y) - 2 * block_mean(x, y)


IMPLS = {
    "pytl": lambda x, y, s, w: pytl.mmd2(x, y, s, w),
    "naive": lambda x, y, s, w: pytl.testing.mmd2_reference(x, y, s, w),
    "keops": _keops_mmd2,
}


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("d", [2, 64, 512])
@pytest.mark.parametrize("n", [1024, 4096, 16384])
@pytest.mark.parametrize("impl", ["pytl", "naive", "keops"])
def test_mmd2(benchmark, impl, n, d, mode):
    if impl == "keops":
        pytest.importorskip("pykeops", reason="KeOps is an optional extra: pip install pykeops")
    backward = mode == "fwd+bwd"
    if impl == "naive" and 3 * n * n * 4 * (6 if backward else 3) > 0.7 * _available_bytes():
        pytest.skip(f"the naive version needs ~{3 * n * n * 4 * 6 / 2**30:.0f} GB at n={n}")
    if impl != "pytl" and n * n * d > 4096 * 4096 * 512:
        pytest.skip("over a minute per round for the materialising baselines")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, d, generator=g) * 1.1 + 0.2
    sigmas = pytl.bandwidth_ladder(pytl.median_heuristic(x, y), LADDER)
    weights = torch.full((len(LADDER),), 1 / len(LADDER))
    fn = IMPLS[impl]

    def run():
        a, b = x.clone().requires_grad_(backward), y.clone().requires_grad_(backward)
        value = fn(a, b, sigmas, weights)
        if backward:
            value.backward()
        return value

    value = benchmark.pedantic(run, rounds=3 if n <= 4096 else 1, iterations=1, warmup_rounds=1 if n <= 4096 else 0)
    reference = pytl.mmd2(x, y, sigmas, weights)
    assert float(value) == pytest.approx(float(reference), rel=1e-3, abs=1e-6)
