"""Before training: will transfer from this source work? The Ben-David bound term by term, and a verdict.

Ben-David et al. (2010): for any hypothesis h of a class H, the target error is at most

    eps_T(h) <= eps_S(h) + 1/2 d_HdH(D_S, D_T) + lambda*,    lambda* = min_h (eps_S(h) + eps_T(h)),

three "independent levers" (the tutorial, section 6): the source error, the divergence between the
domains as H sees them, and the error of the best hypothesis for both domains at once, which is large
when the domains' labels disagree (no alignment of the inputs can help then). Each term is estimated
here with the same hypothesis class H ("linear": multinomial logistic regression; "mlp": one hidden layer
of 64), on held-out data, with a 95% interval:

- eps_S: a classifier trained on half of the source (seeded), its error on the other half (Wilson interval);
- 1/2 d_HdH: half the proxy A-distance 2 (1 - 2 err) of a domain classifier (pytl.diagnostics), its interval
  the Wilson interval of the held-out err mapped through 1 - 2 err;
- lambda*: one classifier trained on the source half and part of the labelled target together, its source
  error plus its target error on the held-out parts (2-fold cross-fitting over the target labels); unknown
  without target labels. Its interval, and the bound's, are sums of Wilson bounds at Bonferroni levels
  (intervals.py): they keep a positive width when an error is 0 or 1.

The same target labels give the from-scratch alternative (a classifier on them alone, the same folds), and
the MMD permutation test adds MMD^2 and its p-value. ``rank_sources`` (source_ranking.py) compares candidate
sources with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pytl import _inputs as inp
from pytl._html import html_table
from pytl.diagnostics.domain_classifier import pad_held_out_errors
from pytl.diagnostics.feasibility_inputs import (
    as_source,
    as_target,
    check_options,
    featurize_source,
    featurize_target,
)
from pytl.diagnostics.intervals import simultaneous_wilson, wilson
from pytl.diagnostics.permutation_test import mmd_test

__all__ = ["FEASIBILITY_VERDICTS", "FeasibilityReport", "Term", "feasibility_verdict", "transfer_feasibility"]

FEASIBILITY_VERDICTS = ("promising", "adapt the domains", "change the source", "expect no help")
#: lambda* above twice the source error by more than this: no single hypothesis fits both domains (their
#: labels disagree). On identical domains lambda* = eps_S(h*) + eps_T(h*) is about 2 eps_S, the hypothesis
#: class's own error counted twice, so the excess over 2 eps_S is what measures disagreement.
JOINT_EXCESS_LARGE = 0.2
#: 1/2 d_HdH above this (proxy A-distance > 1): the domains are far apart for H
DIVERGENCE_LARGE = 0.5
MMD_SAMPLES = 1024  # rows per domain for the MMD test
MMD_PERMUTATIONS = 200


@dataclass(frozen=True)
class Term:
    """One estimated term: its value, a 95% interval, and how it was obtained (None: not estimable)."""

    value: float | None
    low: float | None
    high: float | None
    how: str

    def text(self) -> str:
        if self.value is None:
            return "unknown"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class FeasibilityReport:
    """The outcome of :func:`transfer_feasibility` (errors are fractions in [0, 1])."""

    source_error: Term
    divergence: Term        # 1/2 d_HdH, from the proxy A-distance
    joint_error: Term       # lambda*; value None without target labels
    bound: Term             # the sum; value None without target labels
    target_error: Term      # measured: the source classifier's error on the target labels (what the bound bounds)
    scratch_error: Term     # a classifier on the target labels alone; value None without them
    mmd2: float
    p_value: float
    proxy_a_distance: float
    verdict: str
    num_source: int
    num_target: int
    num_target_labeled: int
    classifier: str = "linear"

    def _rows(self) -> list[tuple[str, str]]:
        terms = [("source error eps_S", self.source_error), ("1/2 d_HdH (from the PAD)", self.divergence),
                 ("joint error lambda*", self.joint_error), ("bound on the target error", self.bound),
                 ("measured: source classifier on target", self.target_error),
                 ("target labels alone (scratch)", self.scratch_error)]
        return [(name, term.text()) for name, term in terms] + [
            ("MMD² (p-value)", f"{self.mmd2:.4f} (p = {self.p_value:.3g})"), ("verdict", self.verdict)]

    def table(self) -> str:
        rows = self._rows()
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}}  {text}" for name, text in rows)

    def _repr_html_(self) -> str:
        """Jupyter's view: the terms with their intervals, the verdict in bold, then ``explain()``."""
        rows = self._rows()
        return html_table("pytl transfer feasibility (Ben-David's bound, term by term)", [("term", "value"), *rows],
                          [self.explain()], bold=(len(rows) - 1,), align_left=(0, 1))

    def explain(self) -> str:
        """The terms, which lever dominates and what to do, in the tutorial's terms."""
        parts = [f"Ben-David's bound with a {self.classifier} hypothesis class, from {self.num_source} source, "
                 f"{self.num_target} unlabelled target and {self.num_target_labeled} labelled target samples: "
                 f"source error {self.source_error.text()}, divergence 1/2 d_HdH {self.divergence.text()} "
                 f"(proxy A-distance {self.proxy_a_distance:.2f}), joint error lambda* {self.joint_error.text()}"]
        if self.bound.value is not None:
            parts.append(f"so the target error of a source-trained hypothesis is at most about {self.bound.value:.3f} "
                         f"(interval {self.bound.low:.3f} to {self.bound.high:.3f}); measured on the target labels, the "
                         f"source classifier errs {self.target_error.value:.3f}, a classifier trained on the target "
                         f"labels alone {self.scratch_error.value:.3f}")
        rule = ("below 0.1, the tutorial's green light" if self.mmd2 < 0.1 else
                "above 0.5, the tutorial's red flag" if self.mmd2 > 0.5 else "between the tutorial's 0.1 and 0.5")
        parts.append(f"MMD² {self.mmd2:.4f}, p = {self.p_value:.3g} ({rule}; a rule of thumb for embeddings whose "
                     "number depends on the bandwidth, so the verdict reads the divergence and lambda* instead)")
        advice = {
            "change the source": "lambda* is large (more than 0.2 above twice the source error): even the best "
            "hypothesis for both domains errs, so the two domains label alike inputs differently. Aligning the "
            "inputs (MMD, CORAL, DANN) cannot fix that; pick a different source domain (rank_sources compares "
            "candidates).",
            "expect no help": "the domains are close, yet the source classifier does worse on the target labels "
            "than a classifier trained on those labels alone: transfer from this source is not expected to help; "
            "keep the from-scratch baseline, or find a better source.",
            "adapt the domains": "the divergence dominates while lambda* is small (or unknown): the domains look "
            "different but a joint hypothesis exists, the case domain adaptation is for; align the embeddings "
            "(TwoStageTrainer(alignment='mmd' or 'cmmd')) and check against the from-scratch baseline.",
            "promising": "every term is small: a source-trained model should transfer; fine-tuning on a few target "
            "labels will tell how much.",
        }[self.verdict]
        caveat = ("" if self.joint_error.value is not None else
                  " lambda* is unknown without target labels, so the bound is too: a small divergence does not "
                  "rule out labels that disagree between the domains.")
        return "; ".join(parts) + f". Verdict: {self.verdict}. {advice}{caveat}"


# ---------------------------------------------------------------------------------------------------
# The hypothesis class, and the entry point (its inputs: feasibility_inputs.py)
# ---------------------------------------------------------------------------------------------------
def _fit(X: Tensor, y: Tensor, classes: int, classifier: str, seed: int) -> Callable[[Tensor], Tensor]:
    """A classifier of the hypothesis class on standardised float64 features; returns predict(X) -> labels."""
    mean, std = X.mean(0, keepdim=True), X.std(0, keepdim=True).nan_to_num(1.0).clamp_min(1e-12)
    Z = (X - mean) / std
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small full-batch problems: one thread is faster (domain_classifier.py)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if classifier == "linear":
                model: nn.Module = nn.Linear(Z.shape[1], classes).double()
                opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, history_size=20,
                                        line_search_fn="strong_wolfe")

                def closure():
                    opt.zero_grad()
                    loss = F.cross_entropy(model(Z), y) + 1e-3 * model.weight.pow(2).sum()
                    loss.backward()
                    return loss

                opt.step(closure)
            else:
                model = nn.Sequential(nn.Linear(Z.shape[1], 64), nn.ReLU(), nn.Linear(64, classes)).double()
                opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
                for _ in range(300):
                    opt.zero_grad()
                    F.cross_entropy(model(Z), y).backward()
                    opt.step()
    finally:
        torch.set_num_threads(threads)

    def predict(Xn: Tensor) -> Tensor:
        with torch.no_grad():
            return model((Xn - mean) / std).argmax(1)

    return predict


def _halves(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=gen)
    return perm[: n // 2], perm[n // 2:]


def transfer_feasibility(
    source: Any,
    target_unlabeled: Any,
    target_labeled: Any = None,
    *,
    features: Any = None,
    classifier: str = "linear",
    num_classes: int | None = None,
    seed: int = 0,
) -> FeasibilityReport:
    """Estimate each term of Ben-David's bound for transferring from ``source`` to the target, before training.

    source: labelled (X, y); target_unlabeled: X; target_labeled: optional (X, y), a few target labels (at
    least 4, two per fold: they give lambda*, the bound and the from-scratch alternative). Arrays, tensors
    or nested lists, samples first (any feature shape: flattened). features: a callable or nn.Module applied
    to every input first (e.g. a pretrained backbone's ``embed``), to ask the question in its feature space.
    classifier: the hypothesis class H of every term, "linear" (default) or "mlp". num_classes: default the
    largest label + 1. The label space is checked first (pytl._inputs.check_label_space: a single class,
    1-based source labels refused; target classes the source lacks warned). Seeded. Returns a
    :class:`FeasibilityReport` (``.explain()``, ``.table()``).
    """
    num_classes, seed = check_options(features, classifier, num_classes, seed)
    xs, ys = as_source(source, "source")
    xt, labeled = as_target(target_unlabeled, target_labeled)
    inp.check_label_space(ys, None if labeled is None else labeled[1], num_classes)
    xt, labeled = featurize_target(xt, labeled, features)
    xs = featurize_source(xs, features, "source", xt, labeled)
    return estimate_feasibility(xs, ys, xt, labeled, num_classes, classifier, seed)


# ---------------------------------------------------------------------------------------------------
# The estimates, on checked inputs
# ---------------------------------------------------------------------------------------------------
def _errors(predict: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> int:
    return int((predict(x) != y).sum())


def _advance_past_former_bootstrap(gen: torch.Generator, n: int) -> None:
    """Advance ``gen`` as the former bootstrap interval of 1/2 d_HdH did (1000 resamples of n indices; in chunks,
    the same stream), so that the target folds and the MMD subsample drawn after it, and with them every
    number measured in docs/diagnostics.md (the sweep, the real pairs), stay as they were."""
    for _ in range(10):
        torch.randint(n, (100, n), generator=gen)


def estimate_feasibility(xs: Tensor, ys: Tensor, xt: Tensor, labeled: tuple[Tensor, Tensor] | None,
                         num_classes: int | None, classifier: str, seed: int) -> FeasibilityReport:
    """The report on inputs already checked and featurized (float64 rows, labels int64)."""
    classes = num_classes or 1 + max(int(ys.max()), -1 if labeled is None else int(labeled[1].max()))
    gen = torch.Generator().manual_seed(seed * 7919 + 11)

    # eps_S: train on one half of the source, test on the other
    s_train, s_test = _halves(xs.shape[0], gen)
    m = s_test.numel()
    h_s = _fit(xs[s_train], ys[s_train], classes, classifier, seed)
    e_s = _errors(h_s, xs[s_test], ys[s_test]) / m
    source_error = Term(e_s, *wilson(e_s, m), f"{classifier} classifier on {s_train.numel()} source samples, error "
                        f"on the other {m} (Wilson 95% interval)")

    # 1/2 d_HdH = 1 - 2 err from the proxy A-distance: the Wilson interval of the domain classifier's held-out
    # error err, mapped through the (decreasing) 1 - 2 err and clipped to [0, 1]
    wrong_d = pad_held_out_errors(xs, xt, seed, classifier)
    n_d, e_d = wrong_d.numel(), float(wrong_d.double().mean())
    pad = min(2.0, max(0.0, 2.0 * (1.0 - 2.0 * e_d)))

    def half_pad(lo: float, hi: float) -> tuple[float, float]:
        return min(1.0, max(0.0, 1.0 - 2.0 * hi)), min(1.0, max(0.0, 1.0 - 2.0 * lo))

    divergence = Term(pad / 2, *half_pad(*wilson(e_d, n_d)),
                      f"half the proxy A-distance {pad:.3f} of a {classifier} domain classifier, 1 - 2 err with err "
                      f"its error on {n_d} held-out rows (interval: err's Wilson 95% interval, mapped)")
    _advance_past_former_bootstrap(gen, n_d)

    # lambda* and the scratch alternative: 2-fold cross-fitting over the target labels
    unknown = "needs target labels"
    joint_error = bound = scratch_error = target_error = Term(None, None, None, unknown)
    num_labeled = 0
    if labeled is not None:
        xl, yl = labeled
        num_labeled = n_t = int(yl.numel())
        fold_a, fold_b = _halves(n_t, gen)
        wrong_js = wrong_jt = wrong_sc = 0
        for train, test in ((fold_a, fold_b), (fold_b, fold_a)):
            h = _fit(torch.cat([xs[s_train], xl[train]]), torch.cat([ys[s_train], yl[train]]), classes, classifier, seed)
            wrong_js += _errors(h, xs[s_test], ys[s_test])
            wrong_jt += _errors(h, xl[test], yl[test])
            wrong_sc += _errors(_fit(xl[train], yl[train], classes, classifier, seed), xl[test], yl[test])
        # the source part: two classifiers on the same m rows, a mean of per-row rates counted on n = m rows
        es_j, et_j = wrong_js / (2 * m), wrong_jt / n_t
        lam = es_j + et_j
        (ls, hs), (lt, ht) = simultaneous_wilson([(es_j, m), (et_j, n_t)])
        joint_error = Term(lam, ls + lt, hs + ht,
                           f"one {classifier} classifier on the source half and half of the {n_t} target labels, "
                           f"its source error {es_j:.3f} + target error {et_j:.3f} on the held-out parts (2-fold "
                           "cross-fitting; 95% interval: the sum of the two errors' 97.5% Wilson bounds)")
        # the bound: 4 rates (eps_S, the domain error, lambda*'s two), each at 98.75% (Bonferroni)
        (l1, h1), (l2, h2), (l3, h3), (l4, h4) = simultaneous_wilson([(e_s, m), (e_d, n_d), (es_j, m), (et_j, n_t)])
        d_low, d_high = half_pad(l2, h2)
        bound = Term(e_s + divergence.value + lam, l1 + d_low + l3 + l4, h1 + d_high + h3 + h4,
                     "the sum of the three terms (95% interval: the sum of its four error rates' 98.75% Wilson "
                     "bounds, which hold all at once with probability >= 95%)")
        e_tt = _errors(h_s, xl, yl) / n_t
        target_error = Term(e_tt, *wilson(e_tt, n_t),
                            f"the source classifier of eps_S on all {n_t} target labels (Wilson 95% interval)")
        e_sc = wrong_sc / n_t
        scratch_error = Term(e_sc, *wilson(e_sc, n_t), f"a {classifier} classifier on half of the target labels, its "
                             "error on the other half (2-fold; Wilson 95% interval)")

    # MMD^2 and its permutation test on a seeded subsample
    ms = xs[torch.randperm(xs.shape[0], generator=gen)[:MMD_SAMPLES]]
    mt = xt[torch.randperm(xt.shape[0], generator=gen)[:MMD_SAMPLES]]
    test = mmd_test(ms, mt, None, MMD_PERMUTATIONS, "biased", seed)

    return FeasibilityReport(
        source_error=source_error, divergence=divergence, joint_error=joint_error, bound=bound,
        target_error=target_error, scratch_error=scratch_error, mmd2=max(0.0, test.statistic),
        p_value=test.p_value, proxy_a_distance=pad,
        verdict=feasibility_verdict(source_error, divergence, joint_error, target_error, scratch_error),
        num_source=int(xs.shape[0]), num_target=int(xt.shape[0]), num_target_labeled=num_labeled,
        classifier=classifier)


def feasibility_verdict(source_error: Term, divergence: Term, joint_error: Term, target_error: Term,
                        scratch_error: Term) -> str:
    """The lever that dominates, in this order: "change the source" when lambda* exceeds 2 eps_S by more than
    JOINT_EXCESS_LARGE (the labels disagree); "adapt the domains" when 1/2 d_HdH > DIVERGENCE_LARGE (a joint
    hypothesis exists but the domains look different: the bound is loose there, alignment is the lever);
    "expect no help" when the source classifier is worse on the target labels than a classifier trained
    on them; else "promising". Without target labels only the divergence can speak."""
    if joint_error.value is not None and joint_error.value - 2 * source_error.value > JOINT_EXCESS_LARGE:
        return "change the source"
    if divergence.value is not None and divergence.value > DIVERGENCE_LARGE:
        return "adapt the domains"
    if target_error.value is not None and scratch_error.value is not None and target_error.value > scratch_error.value:
        return "expect no help"
    return "promising"
