"""How sure a comparison is: cross-validated estimates and the paired test of transfer against scratch.

With a few target labels and no test set, each label is predicted once by a model that did not train
on it (stratified k-fold). Two strategies are then compared *paired*, label by label: only the labels
where exactly one of them is right carry information, and an exact sign test (McNemar's exact test)
on those says whether the difference could be chance. Ten labels cannot separate two points; the test
says so instead of flagging noise as negative transfer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["ALPHA", "VERDICTS", "Estimate", "PairedComparison", "calibrated_cross_entropy", "compare_paired", "format_p",
           "sign_test_p_value"]

ALPHA = 0.05  # two-sided significance level of the verdict
VERDICTS = ("transfer helps", "negative transfer", "inconclusive")
_Z_ALPHA, _Z_POWER = 1.959964, 0.841621  # normal quantiles: two-sided 5% level, 80% power


@dataclass(frozen=True)
class Estimate:
    """The cross-validated target accuracy of one strategy.

    mean: mean of the per-fold accuracies; std: their sample standard deviation (ddof = 1);
    folds: the per-fold accuracies; correct: per target label (in the order given), whether the model
    that held it out predicted it right (label-free strategies: their one model, on every label);
    loss: the mean held-out cross-entropy over every label after the one temperature that minimises it
    (``calibrated_cross_entropy``): what ``ComparisonReport.best`` ranks by. It uses each prediction's
    confidence, so it separates strategies whose accuracies a few labels cannot (10 labels give
    accuracies in steps of 10 points), and the temperature takes out calibration, which the shipped
    argmax does not use: raw cross-entropy preferred a confident, less accurate model over an
    under-trained, more accurate one. temperature: that temperature (> 1: the model was over-confident).
    log_proba: the held-out log class probabilities (N, C) these come from (for ensembles and your own scores).
    """

    mean: float
    std: float
    folds: tuple[float, ...]
    correct: Tensor
    loss: float = math.nan
    temperature: float = 1.0
    log_proba: Tensor | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_predictions(cls, log_proba: Tensor, y: Tensor, folds: list[Tensor]) -> Estimate:
        """From the held-out log class probabilities of every label (N, C) and the labels."""
        correct = log_proba.argmax(1) == y
        accs = tuple(float(correct[idx].double().mean()) for idx in folds)
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        loss, temperature = calibrated_cross_entropy(log_proba, y)
        return cls(mean, std, accs, correct, loss, temperature, log_proba)

    def rank_key(self) -> tuple[float, float]:
        """Sorts the better estimate first: the lower calibrated held-out cross-entropy, then the higher accuracy."""
        return (self.loss, -self.mean)

    def __repr__(self) -> str:
        return (f"Estimate(mean={self.mean:.4f}, std={self.std:.4f}, folds={[round(a, 4) for a in self.folds]}, "
                f"loss={self.loss:.4f}, temperature={self.temperature:.3g})")


def calibrated_cross_entropy(log_proba: Tensor, y: Tensor) -> tuple[float, float]:
    """min over T > 0 of the mean cross-entropy of softmax(log_proba / T) at the labels, and the minimising T.

    The mean NLL is convex in β = 1/T (a log-sum-exp minus a linear term), so a golden-section search over
    log β ∈ [−7, 7] finds the minimum (to ~1e-9 in log β); float64."""
    z = log_proba.double()
    zy = z.gather(1, y[:, None])[:, 0]

    def nll(log_beta: float) -> float:
        b = math.exp(log_beta)
        return float((torch.logsumexp(b * z, dim=1) - b * zy).mean())

    lo, hi = -7.0, 7.0
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    best = (lo + hi) / 2.0
    return nll(best), math.exp(-best)


def sign_test_p_value(wins: int, losses: int) -> float:
    """Exact two-sided sign test (McNemar's exact test) of ``wins`` against ``losses`` discordant pairs:
    the probability, were both equally likely, of a split at least this uneven."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class PairedComparison:
    """``strategy`` against ``baseline`` on the same samples: where only one of them is right.

    difference: accuracy of strategy minus baseline on those samples; wins / losses: samples only the
    strategy / only the baseline got right; p_value: exact two-sided sign test; source: what the
    samples are ("cross-validation over 50 target labels", "the test set (2000 samples)")."""

    strategy: str
    baseline: str
    difference: float
    wins: int
    losses: int
    n: int
    p_value: float
    source: str

    @property
    def verdict(self) -> str:
        """"transfer helps" / "negative transfer" when the sign test rejects equality at ``ALPHA``,
        "inconclusive" otherwise."""
        if self.p_value >= ALPHA or self.wins == self.losses:
            return "inconclusive"
        return "transfer helps" if self.wins > self.losses else "negative transfer"

    def samples_needed(self) -> int | None:
        """About how many samples would detect a difference of this size (McNemar, 5% level, 80% power, the
        same share of discordant samples); None when there is no difference to detect."""
        if self.wins == self.losses or self.n == 0:
            return None
        discordant = (self.wins + self.losses) / self.n
        delta = (self.wins - self.losses) / self.n
        return math.ceil((_Z_ALPHA + _Z_POWER) ** 2 * discordant / delta**2)

    def explain(self) -> str:
        """How sure the verdict is, and why, in a sentence or three."""
        pts = 100 * self.difference
        text = (f"On {self.source}, {self.strategy} is {pts:+.1f} points against {self.baseline}: it alone was right "
                f"on {self.wins} sample(s), {self.baseline} alone on {self.losses} (exact sign test "
                f"{format_p(self.p_value)}).")
        if self.verdict != "inconclusive":
            return text + f" Verdict: {self.verdict} (significant at the {ALPHA:g} level)."
        need = self.samples_needed()
        text += (f" Verdict: inconclusive: {self.n} samples cannot separate {abs(pts):.1f} points from chance")
        if need is not None and need > self.n:
            text += f"; a difference this size needs about {need} to be detected (80% power)"
        return text + "."


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def compare_paired(strategy: str, baseline: str, correct: Tensor, baseline_correct: Tensor,
                   source: str) -> PairedComparison:
    """The paired comparison of two per-sample correctness vectors over the same samples."""
    a, b = correct.bool(), baseline_correct.bool()
    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    n = int(a.numel())
    return PairedComparison(strategy, baseline, (wins - losses) / max(n, 1), wins, losses, n,
                            sign_test_p_value(wins, losses), source)
