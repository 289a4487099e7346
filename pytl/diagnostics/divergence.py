"""The domain-shift report: the MMD permutation test and the proxy A-distance, with a verdict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pytl._checks import check_choice, check_float, check_int
from pytl._inputs import as_features
from pytl.diagnostics.domain_classifier import CLASSIFIERS, as_domains, proxy_a_distance
from pytl.diagnostics.permutation_test import mmd_test
from pytl.distributed import collective_device
from pytl.sharded_data import agree, gather_subsample

__all__ = ["PAD_HIGH", "PAD_LOW", "VERDICT_HIGH", "VERDICT_LOW", "DivergenceReport", "domain_divergence", "verdict"]

VERDICT_LOW = 0.1  # MMD^2 below this (normalised kernel, k(x, x) = 1): low shift
VERDICT_HIGH = 0.5  # above this: high shift
PAD_HIGH = 1.0  # proxy A-distance above this: high shift whatever the MMD^2 (its thresholds depend on the bandwidth)
PAD_LOW = 0.5  # and at most this for a low one
#: rows per domain gathered from the ranks for the proxy A-distance of sharded samples (a linear classifier on
#: 40 000 rows takes seconds; the MMD test reads every row)
SHARDED_PAD_ROWS = 20_000


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
            f"Verdict: {self.verdict} shift (high when MMD^2 > {VERDICT_HIGH:g} or the proxy A-distance > {PAD_HIGH:g}, "
            f"low when MMD^2 < {VERDICT_LOW:g} with a proxy A-distance of at most {PAD_LOW:g}, and low whenever the "
            f"test cannot reject). {advice}"
        )


def verdict(mmd2_value: float, p_value: float, alpha: float, pad: float | None = None) -> str:
    """"low" when the test cannot reject at alpha; "high" when MMD^2 > VERDICT_HIGH or the proxy A-distance
    exceeds PAD_HIGH (a domain classifier tells the domains apart at least 75% of the time: half the PAD,
    Ben-David's divergence term, above 0.5, as pytl.transfer_feasibility calls a large divergence); "low"
    when MMD^2 < VERDICT_LOW and the PAD is at most PAD_LOW; else "moderate". Without ``pad``, MMD^2 alone."""
    if p_value > alpha:
        return "low"
    if mmd2_value > VERDICT_HIGH or (pad is not None and pad > PAD_HIGH):
        return "high"
    if mmd2_value < VERDICT_LOW and (pad is None or pad <= PAD_LOW):
        return "low"
    return "moderate"


def domain_divergence(
    xs: Any,
    xt: Any,
    *,
    num_permutations: int = 500,
    seed: int = 0,
    classifier: str = "linear",
    alpha: float = 0.05,
    max_samples: int = 2048,
    group: Any = None,
) -> DivergenceReport:
    """How different are the source (xs) and target (xt) feature distributions?

    xs (n_s, d), xt (n_t, d): numpy arrays, nested lists or tensors (of any floating dtypes: the MMD
    test runs in the wider one). Runs :func:`mmd_test` (biased MMD^2, median-heuristic ladder with
    weights 1/K, so k(x, x) = 1) on at most max_samples rows per domain (a seeded subsample: the test
    costs O((n + m)^2 x permutations)), and :func:`proxy_a_distance`. verdict (:func:`verdict`): "low" if
    the test cannot reject at alpha or MMD^2 < 0.1 with a proxy A-distance <= 0.5; "high" if MMD^2 > 0.5
    or the proxy A-distance > 1 (its thresholds do not depend on a bandwidth, and it is the divergence
    term of pytl.transfer_feasibility); else "moderate". ``report.explain()`` gives one paragraph.

    group: xs and xt are this rank's shards (torch.distributed; ``python -m pytl divergence`` under torchrun):
    the MMD test reads every row of every shard (the rff test by one all-reduce, mmd_test(group=...)), the
    proxy A-distance trains on a subsample of SHARDED_PAD_ROWS rows per domain gathered from all ranks
    (max_samples is the exact test's, unused); every rank returns the same report of the concatenated samples.
    """
    if group is not None:
        return _sharded_divergence(xs, xt, num_permutations, seed, classifier, alpha, max_samples, group)
    xs, xt = as_domains(xs, xt)
    max_samples = check_int(max_samples, "max_samples", 2)
    alpha = check_float(alpha, "alpha", 0.0, 1.0, strict_min=True, strict_max=True)
    check_choice(classifier, "classifier", CLASSIFIERS)
    seed = check_int(seed, "seed", 0)
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
        verdict=verdict(mmd2_value, result.p_value, alpha, pad),
        num_source=int(xs.shape[0]),
        num_target=int(xt.shape[0]),
        num_permutations=num_permutations,
        alpha=alpha,
        classifier=classifier,
    )


def _sharded_divergence(xs: Any, xt: Any, num_permutations: int, seed: int, classifier: str, alpha: float,
                        max_samples: int, group: Any) -> DivergenceReport:
    """domain_divergence of the ranks' concatenated shards (its docstring, ``group``)."""
    max_samples = check_int(max_samples, "max_samples", 2)
    alpha = check_float(alpha, "alpha", 0.0, 1.0, strict_min=True, strict_max=True)
    check_choice(classifier, "classifier", CLASSIFIERS)
    seed = check_int(seed, "seed", 0)
    xs_t, xt_t = agree(lambda: (as_features(xs, "xs", allow_empty=True), as_features(xt, "xt", allow_empty=True)),
                       group)  # a rank's bad shard raises on every rank, not only its own
    if xs_t.dtype != xt_t.dtype:
        common = torch.promote_types(xs_t.dtype, xt_t.dtype)
        xs_t, xt_t = xs_t.to(common), xt_t.to(common)
    xs_t, xt_t = xs_t.reshape(xs_t.shape[0], -1), xt_t.reshape(xt_t.shape[0], -1)
    result = mmd_test(xs_t, xt_t, None, num_permutations, "biased", seed, method="rff", group=group)
    sub_s = gather_subsample(xs_t, SHARDED_PAD_ROWS, seed, group)
    sub_t = gather_subsample(xt_t, SHARDED_PAD_ROWS, seed + 1, group)
    pad = proxy_a_distance(sub_s, sub_t, seed, classifier)
    totals = torch.tensor([xs_t.shape[0], xt_t.shape[0]], dtype=torch.float64, device=collective_device(group))
    dist.all_reduce(totals, group=group)
    mmd2_value = max(0.0, result.statistic)
    return DivergenceReport(
        mmd2=mmd2_value, p_value=result.p_value, proxy_a_distance=pad,
        verdict=verdict(mmd2_value, result.p_value, alpha, pad), num_source=int(totals[0]), num_target=int(totals[1]),
        num_permutations=num_permutations, alpha=alpha, classifier=classifier)
