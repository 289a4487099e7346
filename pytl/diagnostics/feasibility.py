"""Before training: will transfer from this source work? The Ben-David bound term by term, and a verdict.

Ben-David et al. (2010): for any hypothesis h of a class H, the target error is at most

    eps_T(h) <= eps_S(h) + 1/2 d_HdH(D_S, D_T) + lambda*,    lambda* = min_h (eps_S(h) + eps_T(h)),

three "independent levers" (the tutorial, section 6): the source error, the divergence between the
domains as H sees them, and the error of the best hypothesis for both domains at once, which is large
when the domains' labels disagree (no alignment of the inputs can help then). Each term is estimated
here with the same hypothesis class H ("linear": multinomial logistic regression; "mlp": one hidden layer
of 64), on held-out data, with a 95% interval:

- eps_S: a classifier trained on half of the source (seeded), its error on the other half (Wilson interval);
- 1/2 d_HdH: half the proxy A-distance 2 (1 - 2 err) of a domain classifier (pytl.diagnostics), with a
  bootstrap interval over its held-out predictions;
- lambda*: one classifier trained on the source half and part of the labelled target together, its source
  error plus its target error on the held-out parts (2-fold cross-fitting over the target labels); unknown
  without target labels.

The same target labels give the from-scratch alternative (a classifier on them alone, the same folds), and
the MMD permutation test adds MMD^2 and its p-value. ``rank_sources`` (source_ranking.py) compares candidate
sources with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pytl import _inputs as inp
from pytl._checks import check_choice, check_int
from pytl._samples import check_same_features
from pytl.diagnostics.domain_classifier import CLASSIFIERS, pad_held_out_errors
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
BOOTSTRAP = 1000
Z95 = 1.959963984540054


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

    def table(self) -> str:
        rows = [("source error eps_S", self.source_error), ("1/2 d_HdH (from the PAD)", self.divergence),
                ("joint error lambda*", self.joint_error), ("bound on the target error", self.bound),
                ("measured: source classifier on target", self.target_error),
                ("target labels alone (scratch)", self.scratch_error)]
        width = max(len(r[0]) for r in rows)
        lines = [f"{name:<{width}}  {term.text()}" for name, term in rows]
        lines.append(f"{'MMD² (p-value)':<{width}}  {self.mmd2:.4f} (p = {self.p_value:.3g})")
        lines.append(f"{'verdict':<{width}}  {self.verdict}")
        return "\n".join(lines)

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
# The estimates
# ---------------------------------------------------------------------------------------------------
def _apply_features(x: Tensor, features: Any, name: str) -> Tensor:
    """The rows of x through ``features`` (a callable or nn.Module, in eval mode, no gradient), flattened."""
    if features is None:
        return x.flatten(1).double()
    if not callable(features):
        raise TypeError(f"features must be a callable or an nn.Module (e.g. model.embed), got {type(features).__name__}")
    module = features if isinstance(features, nn.Module) else None
    mode = module.training if module is not None else None
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            if module is not None:
                p = next(module.parameters(), None)
                if p is not None:
                    x = x.to(device=p.device, dtype=p.dtype)
            out = torch.cat([torch.as_tensor(features(xb)) for xb in x.split(4096)])
    finally:
        if module is not None:
            module.train(mode)
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"features returned {out.shape[0]} rows for {x.shape[0]} rows of {name}")
    out = out.detach().cpu().flatten(1).double()
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"features of {name} contain NaN or inf")
    return out


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


def _wilson(wrong: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = wrong / n
    denom = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _halves(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=gen)
    return perm[: n // 2], perm[n // 2:]


def _check_labels(y: Tensor, classes: int, name: str) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"{name}: labels must lie in [0, {classes}), got {int(y.min())}..{int(y.max())}")


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
    largest label + 1. Seeded. Returns a :class:`FeasibilityReport` (``.explain()``, ``.table()``).
    """
    check_choice(classifier, "classifier", CLASSIFIERS)
    seed = check_int(seed, "seed", 0)
    for name, data in (("source", source), ("target_unlabeled", target_unlabeled), ("target_labeled", target_labeled)):
        if isinstance(data, DataLoader):
            raise TypeError(f"{name}: transfer_feasibility takes arrays or tensors (it trains full-batch "
                            "classifiers), not a DataLoader; pass (X, y) or X, e.g. a subsample of a few thousand rows")
    xs, ys = inp.as_labeled(source, "source")
    xt = inp.as_features(target_unlabeled, "target_unlabeled")
    labeled = None if target_labeled is None else inp.as_labeled(target_labeled, "target_labeled")
    xs, xt = _apply_features(xs, features, "source"), _apply_features(xt, features, "target_unlabeled")
    check_same_features(xs, xt, ("source", "target_unlabeled"))
    ys = ys.long()
    classes = int(ys.max()) + 1 if num_classes is None else check_int(num_classes, "num_classes", 2)
    if labeled is not None:
        xl = _apply_features(labeled[0], features, "target_labeled")
        yl = labeled[1].long()
        check_same_features(xs, xl, ("source", "target_labeled"))
        if num_classes is None:
            classes = max(classes, int(yl.max()) + 1)
        _check_labels(yl, classes, "target_labeled")
        if yl.numel() < 4:
            raise ValueError(f"target_labeled needs at least 4 labelled samples (two folds of two), got {yl.numel()}")
    _check_labels(ys, classes, "source")
    if xs.shape[0] < 4 or xt.shape[0] < 4:
        raise ValueError(f"source and target_unlabeled need at least 4 samples each, got {xs.shape[0]} and "
                         f"{xt.shape[0]}")
    gen = torch.Generator().manual_seed(seed * 7919 + 11)

    # eps_S: train on one half of the source, test on the other
    s_train, s_test = _halves(xs.shape[0], gen)
    h_s = _fit(xs[s_train], ys[s_train], classes, classifier, seed)
    wrong_s = int((h_s(xs[s_test]) != ys[s_test]).sum())
    e_s = wrong_s / s_test.numel()
    source_error = Term(e_s, *_wilson(wrong_s, s_test.numel()),
                        f"{classifier} classifier on {s_train.numel()} source samples, error on the other "
                        f"{s_test.numel()} (Wilson 95% interval)")

    # 1/2 d_HdH from the proxy A-distance, with a bootstrap over its held-out predictions
    wrong_d = pad_held_out_errors(xs, xt, seed, classifier)
    pad = min(2.0, max(0.0, 2.0 * (1.0 - 2.0 * float(wrong_d.double().mean()))))
    boot = wrong_d.double()[torch.randint(wrong_d.numel(), (BOOTSTRAP, wrong_d.numel()), generator=gen)].mean(1)
    half_pads = (1.0 - 2.0 * boot).clamp(0.0, 1.0)
    divergence = Term(pad / 2, float(half_pads.quantile(0.025)), float(half_pads.quantile(0.975)),
                      f"half the proxy A-distance {pad:.3f} of a {classifier} domain classifier ({wrong_d.numel()} "
                      f"held-out rows; bootstrap 95% interval, {BOOTSTRAP} resamples)")

    # lambda* and the scratch alternative: 2-fold cross-fitting over the target labels
    unknown = "needs target labels"
    joint_error = bound = scratch_error = target_error = Term(None, None, None, unknown)
    num_labeled = 0
    if labeled is not None:
        num_labeled = int(yl.numel())
        fold_a, fold_b = _halves(num_labeled, gen)
        wrong_js = wrong_jt = wrong_sc = 0
        for train, test in ((fold_a, fold_b), (fold_b, fold_a)):
            h = _fit(torch.cat([xs[s_train], xl[train]]), torch.cat([ys[s_train], yl[train]]), classes, classifier, seed)
            wrong_js += int((h(xs[s_test]) != ys[s_test]).sum())
            wrong_jt += int((h(xl[test]) != yl[test]).sum())
            h0 = _fit(xl[train], yl[train], classes, classifier, seed)
            wrong_sc += int((h0(xl[test]) != yl[test]).sum())
        n_s, n_t = 2 * s_test.numel(), num_labeled
        es_j, et_j = wrong_js / n_s, wrong_jt / n_t
        lam = es_j + et_j
        half = Z95 * math.sqrt(es_j * (1 - es_j) / n_s + et_j * (1 - et_j) / n_t)
        joint_error = Term(lam, max(0.0, lam - half), min(2.0, lam + half),
                           f"one {classifier} classifier on the source half and half of the {num_labeled} target "
                           f"labels, its source error {es_j:.3f} + target error {et_j:.3f} on the held-out parts "
                           "(2-fold cross-fitting; normal 95% interval)")
        total = e_s + divergence.value + lam
        bound = Term(total, source_error.low + divergence.low + joint_error.low,
                     source_error.high + divergence.high + joint_error.high,
                     "the sum of the three terms (interval: the sum of their intervals)")
        wrong_tt = int((h_s(xl) != yl).sum())
        target_error = Term(wrong_tt / n_t, *_wilson(wrong_tt, n_t),
                            f"the source classifier of eps_S on all {n_t} target labels (Wilson 95% interval)")
        scratch_error = Term(wrong_sc / n_t, *_wilson(wrong_sc, n_t),
                             f"a {classifier} classifier on half of the target labels, its error on the other "
                             "half (2-fold)")

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
