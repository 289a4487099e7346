"""The kernel two-sample permutation test of Gretton et al. (JMLR 2012) on the multi-bandwidth RBF MMD.

Every permutation's statistic comes from one fused sweep over the pairs (pytl.ops.rbf_kernel_matmul,
K(z, z) @ S for a matrix S of split vectors), so 1000 permutations cost about one
kernel-matrix-times-1000-columns product, in O(N x chunk) memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pytl import ops
from pytl._checks import check_bool, check_choice, check_int, check_optional_int
from pytl._html import html_table
from pytl._samples import as_matrix, check_pair
from pytl.bandwidths import SigmasLike, WeightsLike, resolve_bandwidths
from pytl.diagnostics import scalable_tests, sharded_tests, streaming

__all__ = ["MMDTestResult", "mmd_test", "split_chunks"]

# Split vectors per fused sweep: about PERMUTATION_CHUNK_ELEMENTS / N of them (memory O(N * chunk)),
# between 64 and 1024. Every sweep recomputes the kernel values, so larger chunks are faster.
PERMUTATION_CHUNK_ELEMENTS = 1 << 22
PERMUTATION_CHUNK_RANGE = (64, 1024)


@dataclass(frozen=True)
class MMDTestResult:
    """Outcome of :func:`mmd_test`.

    statistic: MMD^2 of the observed split; p_value: (#{null >= statistic} + 1) / (P + 1);
    null_samples: the P permuted statistics (float64, CPU)."""

    statistic: float
    p_value: float
    null_samples: Tensor
    estimator: str = "biased"
    sigmas: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    #: "exact" (every pair, row permutations), "rff" (chunk permutations) or "block" (normal null; null_samples
    #: then holds the block statistics whose spread gives the null's variance)
    method: str = "exact"

    @property
    def num_permutations(self) -> int:
        return 0 if self.method == "block" else int(self.null_samples.numel())

    def rejects(self, alpha: float = 0.05) -> bool:
        """True when the test rejects "same distribution" at level alpha."""
        return self.p_value <= alpha

    def _repr_html_(self) -> str:
        """Jupyter's view: the statistic, its p-value and what the test concludes at 5%."""
        sig = ", ".join(f"{s:.3g}" for s in self.sigmas) or "-"
        null = (f"normal, from {self.null_samples.numel()} blocks" if self.method == "block" else
                f"{self.num_permutations} permutations" + (" of chunks" if self.method == "rff" else ""))
        rows = [("", "value"), (f"MMD² ({self.estimator}, {self.method})", f"{self.statistic:.6g}"),
                ("p-value", f"{self.p_value:.4g}"), ("null", null), ("bandwidths σ", sig),
                ("at 5%", "different distributions" if self.rejects() else "no evidence of a difference")]
        return html_table("pytl MMD permutation test", rows, bold=(4,), align_left=(0, 1))


def _result(statistic: float, p_value: float, null: Tensor, estimator: str, sig: Tensor, w: Tensor,
            method: str) -> MMDTestResult:
    return MMDTestResult(statistic=statistic, p_value=p_value, null_samples=null, estimator=estimator,
                         sigmas=[float(s) for s in sig.detach().cpu().double()],
                         weights=[float(v) for v in w.detach().cpu().double()], method=method)


def _scalable_test(x: Tensor, y: Tensor, sig: Tensor, w: Tensor, method: str, estimator: str, num_permutations: int,
                   num_features: int | None, block_size: int | None, seed: int, chunk_size: int | None) -> MMDTestResult:
    """mmd_test's "block" and "rff" methods (pytl.diagnostics.scalable_tests), options checked by
    ``ops.method_options``."""
    if chunk_size is not None:
        raise ValueError("chunk_size is an option of method='exact' (its split vectors per sweep)")
    if method == "block":
        if estimator != "unbiased":
            raise ValueError("method='block' tests with the unbiased per-block statistic (its null has mean 0): "
                             "pass estimator='unbiased'")
        stat, p, null = scalable_tests.block_test(x, y, sig, w, block_size, seed)
    else:
        if estimator != "biased":
            raise ValueError("method='rff' tests with the biased random-feature statistic "
                             "‖mean φ(x) − mean φ(y)‖²: pass estimator='biased'")
        assert num_features is not None
        stat, p, null = scalable_tests.rff_chunk_test(x, y, sig, w, num_features, num_permutations, seed)
    return _result(stat, p, null, estimator, sig, w, method)


#: pooled rows up to which mmd_test(method="auto") runs the exact permutation test: at 16 384 its 1000
#: permutations take seconds on two CPU cores; beyond, the rff test (one pass) had the power at equal wall time
#: (benchmarks/scalable_mmd.py power)
AUTO_EXACT_ROWS = 1 << 14


def _auto_method(x: Any, y: Any, estimator: str) -> str:
    """method="auto": the exact test up to AUTO_EXACT_ROWS pooled rows in memory, else the rff test (streams
    always); the unbiased estimator has no rff test, so it falls to the block test."""
    if not (streaming.is_stream(x) or streaming.is_stream(y)) and len(x) + len(y) <= AUTO_EXACT_ROWS:
        return "exact"
    return "rff" if estimator == "biased" else "block"


def _streamed_test(x: Any, y: Any, sigmas: SigmasLike, weights: WeightsLike, method: str, estimator: str,
                   num_permutations: int, num_features: int | None, seed: int,
                   chunk_size: int | None, progress: bool) -> MMDTestResult:
    """mmd_test on a memmap or a DataLoader: the random-feature test in one pass (pytl.diagnostics.streaming)."""
    if method != "rff" or estimator != "biased" or chunk_size is not None:
        raise ValueError("x or y is a memmap or a stream of batches (read once, never loaded whole): only "
                         "method='rff' (with estimator='biased') tests it; load the data as an array for the others")
    assert num_features is not None
    stat, p, null, sig, w = streaming.stream_rff_test(x, y, sigmas, weights, num_features=num_features,
                                                      num_permutations=num_permutations, seed=seed, progress=progress)
    return _result(stat, p, null, estimator, sig, w, "rff")


def split_chunks(n: int, m: int, num_permutations: int, seed: int, chunk: int) -> Iterator[Tensor]:
    """Boolean (c, n + m) masks of the "x" members, chunk by chunk: first the observed split (rows
    0..n-1 are x), then num_permutations random splits drawn from a CPU torch.Generator seeded with
    seed. The sequence depends only on (n, m, num_permutations, seed, chunk)."""
    N = n + m
    g = torch.Generator().manual_seed(seed)
    observed = torch.zeros(1, N, dtype=torch.bool)
    observed[0, :n] = True
    done = 0
    first = True
    while done < num_permutations or first:
        c = min(chunk, num_permutations - done)
        perms = torch.stack([torch.randperm(N, generator=g)[:n] for _ in range(c)])  # the "x" rows
        masks = torch.zeros(c, N, dtype=torch.bool)
        masks.scatter_(1, perms, True)
        if first:
            masks = torch.cat([observed, masks])
            first = False
        done += c
        yield masks


def mmd_test(
    x: Any,
    y: Any,
    sigmas: SigmasLike = None,
    num_permutations: int = 1000,
    estimator: str = "biased",
    seed: int = 0,
    *,
    weights: WeightsLike = None,
    chunk_size: int | None = None,
    method: str = "exact",
    num_features: int | None = None,
    block_size: int | None = None,
    group: Any = None,
    progress: bool = False,
) -> MMDTestResult:
    """Permutation two-sample test of H0: x and y come from the same distribution (Gretton et al. 2012).

    x (n, d), y (m, d): numpy arrays, nested lists or tensors of one dtype (integers become float32).
    The samples are pooled (N = n + m) and re-split num_permutations times at random; the p-value is
    (#{permuted MMD^2 >= observed} + 1) / (num_permutations + 1), exact under H0 for any sample size.
    With u_i = 1/n for the "x" members of a split and -1/m for the others, the biased MMD^2 of the
    split is u^T K u; all splits of a chunk come from one fused sweep K @ [u_1 ... u_c]
    (:func:`pytl.ops.rbf_kernel_matmul`), memory O(N x chunk_size), no N x N matrix (chunk_size=None:
    about 4M / N split vectors per sweep, between 64 and 1024). The unbiased estimator
    also needs the kernel row sums (one more column) to remove the diagonal terms.

    sigmas/weights: as in :func:`pytl.mmd2` (None: the median-heuristic ladder, weights 1/K).
    seed: the permutations come from a torch.Generator seeded with it (reproducible). Computed on x's
    device, in float64 for float64 inputs, else float32; the per-split reductions are in float64.

    method: "exact" (above); for data too large for n² work, "block" (the B-test: the mean of per-block
    unbiased MMD² over blocks of ``block_size`` rows, default about sqrt(n), and its asymptotically normal
    null; no permutation, ``num_permutations`` unused) or "rff" (the random-feature statistic with
    ``num_features`` per bandwidth, default 256, and ``num_permutations`` permutations of 64+ equal chunks of
    rows: one pass over the data). Both cost O(n + m) passes; pytl.diagnostics.scalable_tests says how.
    "auto": exact up to 16 384 pooled rows, else rff (block for estimator="unbiased"); a memmap or a DataLoader
    (x or y) is streamed through the rff test.

    group: a torch.distributed process group when x and y are this rank's shards (tensors, memmaps or
    DataLoaders): every rank gets the test of the concatenated samples, "rff" by one all-reduce of chunk sums,
    "block" by one gather of block statistics ("auto": rff, or block for estimator="unbiased"; "exact" is
    refused). pytl.diagnostics.sharded_tests. progress: a progress bar over the blocks of a streamed (or sharded)
    rff test, when their number is known.
    """
    unbiased = ops.is_unbiased(estimator)
    method = check_choice(method, "method", ops.METHODS)
    if method == "auto":
        method = ("rff" if estimator == "biased" else "block") if group is not None else _auto_method(x, y, estimator)
    num_features, block_size = ops.method_options(method, num_features, block_size)
    num_permutations = check_int(num_permutations, "num_permutations", 1)
    seed = check_int(seed, "seed", 0)
    chunk_size = check_optional_int(chunk_size, "chunk_size", 1)
    progress = check_bool(progress, "progress")
    if group is not None:
        if chunk_size is not None:
            raise ValueError("chunk_size is an option of method='exact' (its split vectors per sweep)")
        run, stat, p, null, sig, w = sharded_tests.sharded_test(x, y, sigmas, weights, method, estimator,
                                                                num_permutations, num_features, block_size, seed, group,
                                                                progress)
        return _result(stat, p, null, estimator, sig, w, run)
    if streaming.is_stream(x) or streaming.is_stream(y):
        return _streamed_test(x, y, sigmas, weights, method, estimator, num_permutations, num_features, seed,
                              chunk_size, progress)
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    # the op sees only the pooled sample, so the two samples are checked here
    check_pair(x, y, estimator)
    sig, w = resolve_bandwidths(x, y, sigmas, weights, "pytl.mmd_test")
    if method != "exact":
        return _scalable_test(x, y, sig, w, method, estimator, num_permutations, num_features, block_size, seed,
                              chunk_size)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    device = x.device
    n, m = x.shape[0], y.shape[0]
    if chunk_size is None:
        lo, hi = PERMUTATION_CHUNK_RANGE
        chunk_size = max(lo, min(hi, PERMUTATION_CHUNK_ELEMENTS // (n + m)))
    z = torch.cat([x.detach(), y.detach()]).to(dtype)
    # only floating values are cast to the computation's dtype: integer bandwidths stay as they are, for the op
    # to reject with its own TypeError
    sig_c, w_c = (v.detach().to(dtype) if v.is_floating_point() else v.detach() for v in (sig, w))
    kappa = float(w_c.double().sum())  # K(z_i, z_i)

    with torch.no_grad():
        if unbiased:  # kernel row sums r = K 1 and their total
            ones = torch.ones(n + m, 1, dtype=dtype, device=device)
            r = torch.ops.pytl.rbf_kernel_matmul.default(z, ones, sig_c, w_c)
            r = r[:, 0].double()
            total = float(r.sum())
        pos = torch.tensor(1.0 / n, dtype=dtype, device=device)
        neg = torch.tensor(-1.0 / m, dtype=dtype, device=device)
        stats = []
        for masks in split_chunks(n, m, num_permutations, seed, chunk_size):
            masks = masks.to(device)
            u = torch.where(masks.t(), pos, neg).contiguous()  # (N, c)
            ku = torch.ops.pytl.rbf_kernel_matmul.default(z, u, sig_c, w_c)
            v = (u * ku).sum(0, dtype=torch.float64)  # biased MMD^2 of every split, summed in float64
            if unbiased:
                # K a = (K u + r / m) / (1/n + 1/m) for the 0/1 membership a of x; then
                # A = a^T K a, B = b^T K b = total - 2 a.r + A, and
                # U = V + A / (n^2 (n-1)) + B / (m^2 (m-1)) - kappa / (n-1) - kappa / (m-1)
                a = masks.t().double()
                ka = (ku.double() + r[:, None] / m) / (1.0 / n + 1.0 / m)
                A = (a * ka).sum(0)
                ar = (a * r[:, None]).sum(0)
                B = total - 2.0 * ar + A
                v = v + A / (n * n * (n - 1)) + B / (m * m * (m - 1)) - kappa / (n - 1) - kappa / (m - 1)
            stats.append(v.cpu())
        stats = torch.cat(stats)
    statistic = stats[0]
    null = stats[1:]
    count = int((null >= statistic).sum())
    return _result(float(statistic), (count + 1) / (num_permutations + 1), null, estimator, sig, w, "exact")
