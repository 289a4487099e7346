"""Domain-shift diagnostics: is the target data different from the source data, and how much?

* :func:`mmd_test` - the kernel two-sample permutation test of Gretton et al. (JMLR 2012) on the
  multi-bandwidth RBF MMD. Every permutation's statistic comes from one fused sweep over the pairs
  (:func:`rbf_kernel_matmul`, K(z, z) @ S for a matrix S of split vectors), so 1000 permutations
  cost about one kernel-matrix-times-1000-columns product, in O(N x chunk) memory.
* :func:`proxy_a_distance` - Ben-David et al.'s proxy A-distance 2 (1 - 2 eps) from a domain classifier.
* :func:`domain_divergence` - both, with a verdict ("low" / "moderate" / "high") and a plain-English
  explanation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pytl import ops
from pytl.ops import SigmasLike, WeightsLike

__all__ = [
    "DivergenceReport",
    "MMDTestResult",
    "domain_divergence",
    "mmd_test",
    "proxy_a_distance",
    "rbf_kernel_matmul",
]

# Split vectors per fused sweep: about PERMUTATION_CHUNK_ELEMENTS / N of them (memory O(N * chunk)),
# between 64 and 1024. Every sweep recomputes the kernel values, so larger chunks are faster.
PERMUTATION_CHUNK_ELEMENTS = 1 << 22
PERMUTATION_CHUNK_RANGE = (64, 1024)
CLASSIFIERS = ("linear", "mlp")
MIN_PAD_SAMPLES = 4  # per domain: 2 to train on and 2 held out


def rbf_kernel_matmul(z: Tensor, s: Tensor, sigmas: SigmasLike, weights: WeightsLike = None) -> Tensor:
    """K(z, z) @ s without the N x N kernel matrix, K(a, b) = sum_k w_k exp(-||a - b||^2 / (2 sigma_k^2)).

    z: (N, d) float tensor; s: (N, P) with z's dtype and device; sigmas: a float, sequence or 1-D tensor
    of K <= 16 positive bandwidths; weights: K non-negative weights (default 1/K). The diagonal is
    included (K(z_i, z_i) = sum_k w_k). Returns (N, P) in z's dtype (half/bfloat16 computed in float32).
    Deterministic (bitwise, for any thread count). Not differentiable.
    """
    ops._check_matrix("z", z, "(N, d)")
    ops._check_matrix("s", s, "(N, P)")
    if s.dtype != z.dtype:
        raise TypeError(f"s must have the dtype of z ({z.dtype}), got {s.dtype}")
    if s.device != z.device:
        raise ValueError(f"z and s must be on the same device, got {z.device} and {s.device}")
    if s.shape[0] != z.shape[0]:
        raise ValueError(f"s must have one row per row of z ({z.shape[0]}), got shape {tuple(s.shape)}")
    if z.shape[1] == 0:
        raise ValueError("z must have at least one feature column")
    if sigmas is None:
        raise ValueError("sigmas is required (for example pytl.bandwidth_ladder(pytl.median_heuristic(x, y)))")
    sig = ops._as_vector(sigmas, "sigmas", z)
    ops._check_sigmas(sig)
    if sig.numel() > 16:
        raise ValueError(f"at most 16 bandwidths are supported, got {sig.numel()}")
    if weights is None:
        w = torch.full((sig.numel(),), 1.0 / sig.numel(), dtype=sig.dtype, device=z.device)
    else:
        w = ops._as_vector(weights, "weights", z)
        ops._check_weights(w, sig.numel())
    return torch.ops.pytl.rbf_kernel_matmul.default(z, s, sig, w)


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

    @property
    def num_permutations(self) -> int:
        return int(self.null_samples.numel())

    def rejects(self, alpha: float = 0.05) -> bool:
        """True when the test rejects "same distribution" at level alpha."""
        return self.p_value <= alpha


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _split_chunks(n: int, m: int, num_permutations: int, seed: int, chunk: int) -> Iterator[Tensor]:
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
    x: Tensor,
    y: Tensor,
    sigmas: SigmasLike = None,
    num_permutations: int = 1000,
    estimator: str = "biased",
    seed: int = 0,
    *,
    weights: WeightsLike = None,
    chunk_size: int | None = None,
) -> MMDTestResult:
    """Permutation two-sample test of H0: x and y come from the same distribution (Gretton et al. 2012).

    The samples are pooled (N = n + m) and re-split num_permutations times at random; the p-value is
    (#{permuted MMD^2 >= observed} + 1) / (num_permutations + 1), exact under H0 for any sample size.
    With u_i = 1/n for the "x" members of a split and -1/m for the others, the biased MMD^2 of the
    split is u^T K u; all splits of a chunk come from one fused sweep K @ [u_1 ... u_c]
    (:func:`rbf_kernel_matmul`), memory O(N x chunk_size), no N x N matrix (chunk_size=None: about
    4M / N split vectors per sweep, between 64 and 1024). The unbiased estimator
    also needs the kernel row sums (one more column) to remove the diagonal terms.

    sigmas/weights: as in :func:`pytl.mmd2` (None: the median-heuristic ladder, weights 1/K).
    seed: the permutations come from a torch.Generator seeded with it (reproducible). Computed on x's
    device, in float64 for float64 inputs, else float32; the per-split reductions are in float64.
    """
    ops._check_samples(x, y, estimator)
    _check_int(num_permutations, "num_permutations", 1)
    _check_int(seed, "seed", 0)
    if chunk_size is not None:
        _check_int(chunk_size, "chunk_size", 1)
    sig, w = ops.resolve_bandwidths(x, y, sigmas, weights)
    if sig.numel() > 16:
        raise ValueError(f"at most 16 bandwidths are supported, got {sig.numel()}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    device = x.device
    n, m = x.shape[0], y.shape[0]
    if chunk_size is None:
        lo, hi = PERMUTATION_CHUNK_RANGE
        chunk_size = max(lo, min(hi, PERMUTATION_CHUNK_ELEMENTS // (n + m)))
    z = torch.cat([x.detach(), y.detach()]).to(dtype)
    sig_c, w_c = sig.detach().to(dtype), w.detach().to(dtype)
    unbiased = estimator == "unbiased"
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
        for masks in _split_chunks(n, m, num_permutations, seed, chunk_size):
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
    return MMDTestResult(
        statistic=float(statistic),
        p_value=(count + 1) / (num_permutations + 1),
        null_samples=null,
        estimator=estimator,
        sigmas=[float(s) for s in sig.detach().cpu().double()],
        weights=[float(v) for v in w.detach().cpu().double()],
    )


def _check_domains(xs: Tensor, xt: Tensor) -> None:
    ops._check_matrix("xs", xs)
    ops._check_matrix("xt", xt)
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(
            f"xs and xt must have the same number of features, got {tuple(xs.shape)} and {tuple(xt.shape)}"
        )
    if xs.shape[1] == 0:
        raise ValueError("xs and xt must have at least one feature column")


def _train_domain_classifier(X: Tensor, labels: Tensor, classifier: str, seed: int) -> nn.Module:
    """Full-batch training of a linear (logistic regression, L-BFGS) or one-hidden-layer MLP (Adam)
    domain classifier on standardised float64 features; returns a module producing logits."""
    d = X.shape[1]
    # Small problems train on one thread: faster than two (OpenMP barriers dominate tiny ops, badly so
    # on a busy machine). The global setting is restored afterwards.
    threads = torch.get_num_threads()
    single = X.numel() <= 1 << 20
    if single:
        torch.set_num_threads(1)
    try:
        return _fit(X, labels, classifier, seed, d)
    finally:
        if single:
            torch.set_num_threads(threads)


def _fit(X: Tensor, labels: Tensor, classifier: str, seed: int, d: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if classifier == "linear":
            model = nn.Linear(d, 1).double()
            opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, history_size=20,
                                    line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = F.binary_cross_entropy_with_logits(model(X)[:, 0], labels) + 1e-3 * model.weight.pow(2).sum()
                loss.backward()
                return loss

            opt.step(closure)
        else:
            model = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 1)).double()
            opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
            for _ in range(200):
                opt.zero_grad()
                F.binary_cross_entropy_with_logits(model(X)[:, 0], labels).backward()
                opt.step()
    return model


def proxy_a_distance(
    xs: Tensor,
    xt: Tensor,
    seed: int = 0,
    classifier: str = "linear",
    *,
    max_samples: int | None = 10_000,
) -> float:
    """Proxy A-distance 2 (1 - 2 eps) of Ben-David et al. (2007, 2010), clipped to [0, 2].

    A domain classifier ("linear": logistic regression; "mlp": one hidden layer of 64) is trained to
    tell source (xs) from target (xt) rows on a balanced split (the same number k of rows from each
    domain, at most max_samples, half of them for training) and eps is its error on the held-out half.
    0: the domains are indistinguishable to the classifier; 2: perfectly separable. Seeded.
    """
    _check_domains(xs, xt)
    _check_int(seed, "seed", 0)
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    if max_samples is not None:
        _check_int(max_samples, "max_samples", MIN_PAD_SAMPLES)
    k = min(xs.shape[0], xt.shape[0])
    if k < MIN_PAD_SAMPLES:
        raise ValueError(
            f"proxy_a_distance needs at least {MIN_PAD_SAMPLES} samples in each domain (half to train the "
            f"domain classifier, half to evaluate it), got {xs.shape[0]} source and {xt.shape[0]} target samples"
        )
    if max_samples is not None:
        k = min(k, max_samples)
    g = torch.Generator().manual_seed(seed)
    s_idx = torch.randperm(xs.shape[0], generator=g)[:k]
    t_idx = torch.randperm(xt.shape[0], generator=g)[:k]
    a = xs.detach().cpu().double()[s_idx]
    b = xt.detach().cpu().double()[t_idx]
    k_train = k // 2
    X_train = torch.cat([a[:k_train], b[:k_train]])
    X_test = torch.cat([a[k_train:], b[k_train:]])
    y_train = torch.cat([torch.zeros(k_train), torch.ones(k_train)]).double()
    y_test = torch.cat([torch.zeros(k - k_train), torch.ones(k - k_train)]).double()
    mean = X_train.mean(0, keepdim=True)
    std = X_train.std(0, keepdim=True).nan_to_num(1.0).clamp_min(1e-12)
    X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
    if not bool(torch.isfinite(X_train).all()) or not bool(torch.isfinite(X_test).all()):
        raise ValueError("xs and xt must be finite (found NaN or inf)")
    model = _train_domain_classifier(X_train, y_train, classifier, seed)
    with torch.no_grad():
        pred = (model(X_test)[:, 0] > 0).double()
    eps = float((pred != y_test).double().mean())
    return float(min(2.0, max(0.0, 2.0 * (1.0 - 2.0 * eps))))


VERDICT_LOW = 0.1  # MMD^2 below this (normalised kernel, k(x, x) = 1): low shift
VERDICT_HIGH = 0.5  # above this: high shift


@dataclass(frozen=True)
class DivergenceReport:
    """Outcome of :func:`domain_divergence`. mmd2 uses a kernel with k(x, x) = 1 (MMD^2 in [0, 2])."""

    mmd2: float
    p_value: float
    proxy_a_distance: float
    verdict: str
    num_source: int
    num_target: int
    num_permutations: int
    alpha: float = 0.05
    classifier: str = "linear"

    def explain(self) -> str:
        """One paragraph in plain English."""
        significant = self.p_value <= self.alpha
        test = (
            f"a permutation test with {self.num_permutations} permutations gives p = {self.p_value:.3g}, so the "
            + (
                f"difference is statistically significant at the {self.alpha:g} level"
                if significant
                else f"test cannot reject that both samples come from the same distribution at the {self.alpha:g} level"
            )
        )
        advice = {
            "low": "A model trained on the source should transfer with little or no adaptation.",
            "moderate": "Expect some accuracy loss on the target; domain adaptation (e.g. an MMD penalty) or "
            "fine-tuning on a few target labels is likely to help.",
            "high": "The source is a poor stand-in for the target: expect a large accuracy drop without adaptation, "
            "and compare against training on target labels alone (negative transfer is possible).",
        }[self.verdict]
        return (
            f"Between the source ({self.num_source} samples) and the target ({self.num_target} samples) the squared "
            f"MMD is {self.mmd2:.4g} (RBF kernels at median-heuristic bandwidths, normalised so that k(x, x) = 1, "
            f"hence between 0 and 2); {test}. The proxy A-distance of a {self.classifier} domain classifier is "
            f"{self.proxy_a_distance:.3g} (0: the domains are indistinguishable, 2: perfectly separable). "
            f"Verdict: {self.verdict} shift (MMD^2 < {VERDICT_LOW:g} is low, > {VERDICT_HIGH:g} is high, and low "
            f"whenever the test cannot reject). {advice}"
        )


def _verdict(mmd2_value: float, p_value: float, alpha: float) -> str:
    if p_value > alpha or mmd2_value < VERDICT_LOW:
        return "low"
    return "high" if mmd2_value > VERDICT_HIGH else "moderate"


def domain_divergence(
    xs: Tensor,
    xt: Tensor,
    *,
    num_permutations: int = 500,
    seed: int = 0,
    classifier: str = "linear",
    alpha: float = 0.05,
    max_samples: int = 2048,
) -> DivergenceReport:
    """How different are the source (xs) and target (xt) feature distributions?

    Runs :func:`mmd_test` (biased MMD^2, median-heuristic ladder with weights 1/K, so k(x, x) = 1) on at
    most max_samples rows per domain (a seeded subsample: the test costs O((n + m)^2 x permutations)),
    and :func:`proxy_a_distance`. verdict: "low" if MMD^2 < 0.1 or the test cannot reject at alpha,
    "high" if MMD^2 > 0.5, else "moderate". ``report.explain()`` gives one paragraph.
    """
    _check_domains(xs, xt)
    _check_int(max_samples, "max_samples", 2)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    _check_int(seed, "seed", 0)
    g = torch.Generator().manual_seed(seed)
    xs_t = xs[torch.randperm(xs.shape[0], generator=g)[:max_samples].to(xs.device)] if xs.shape[0] > max_samples else xs
    xt_t = xt[torch.randperm(xt.shape[0], generator=g)[:max_samples].to(xt.device)] if xt.shape[0] > max_samples else xt
    if xs_t.dtype != xt_t.dtype:
        common = torch.promote_types(xs_t.dtype, xt_t.dtype)
        xs_t, xt_t = xs_t.to(common), xt_t.to(common)
    result = mmd_test(xs_t, xt_t, None, num_permutations, "biased", seed)
    pad = proxy_a_distance(xs, xt, seed, classifier)
    mmd2_value = max(0.0, result.statistic)
    return DivergenceReport(
        mmd2=mmd2_value,
        p_value=result.p_value,
        proxy_a_distance=pad,
        verdict=_verdict(mmd2_value, result.p_value, float(alpha)),
        num_source=int(xs.shape[0]),
        num_target=int(xt.shape[0]),
        num_permutations=num_permutations,
        alpha=float(alpha),
        classifier=classifier,
    )
