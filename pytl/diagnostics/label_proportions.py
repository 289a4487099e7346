"""Do the few target labels' class proportions differ from the source's? A label shift seen in the labels
themselves, before any training.

Aligning the marginal feature distributions (MMD, CORAL, DANN) assumes the classes keep their proportions:
under a label shift, matching the marginals pulls target samples onto the wrong classes (on the breast-cancer
pair of benchmarks/OUTCOMES.md, source 84% benign and target 42%, mmd_only fell from 93% to 58%). With target
labels at hand the shift can be tested directly: a goodness-of-fit test of the target's class counts against
the source's proportions. The chi-square statistic's null is simulated (multinomial draws from the source's
proportions), so the p-value is valid for the handful of labels this library expects, where the chi-square
approximation is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pytl import _inputs as inp
from pytl._checks import check_int

__all__ = ["LABEL_SHIFT_ALPHA", "LABEL_SHIFT_MIN_TV", "LabelProportionTest", "label_proportion_test"]

#: labels simulated at most (m labels × draws); beyond, the chi-square distribution's p-value (m is large then)
SIMULATED_LABELS = 1 << 23
#: the level at which the trainer warns, and the smallest total-variation distance worth a warning (with many
#: labels a tiny, harmless difference is significant too)
LABEL_SHIFT_ALPHA, LABEL_SHIFT_MIN_TV = 0.01, 0.1


@dataclass(frozen=True)
class LabelProportionTest:
    """The class proportions of both sides (float64), their total-variation distance, the chi-square statistic
    of the target counts against the source proportions, and its simulated p-value."""

    source_proportions: Tensor
    target_proportions: Tensor
    total_variation: float
    statistic: float
    p_value: float

    @property
    def shifted(self) -> bool:
        """Significant at LABEL_SHIFT_ALPHA and at least LABEL_SHIFT_MIN_TV apart."""
        return self.p_value < LABEL_SHIFT_ALPHA and self.total_variation >= LABEL_SHIFT_MIN_TV

    def class_weights(self) -> list[float]:
        """target / source proportion per class (0 where the source has none): the weights that make the source
        look like the target (``class_weights=`` of the trainer); noisy with few labels."""
        p, q = self.source_proportions, self.target_proportions
        return [round(float(b / a), 3) if a > 0 else 0.0 for a, b in zip(p, q)]


def label_proportion_test(source_labels: Any, target_labels: Any, num_classes: int | None = None, *,
                          draws: int = 9999, seed: int = 0) -> LabelProportionTest:
    """Goodness-of-fit of the target labels' class counts to the source labels' proportions: chi-square
    statistic, p-value from ``draws`` multinomial samples of the same size (seeded), or from the chi-square
    distribution when m × draws exceeds SIMULATED_LABELS (hundreds of labels: the approximation is good then)."""
    ys, yt = inp.as_labels(source_labels, "source_labels"), inp.as_labels(target_labels, "target_labels")
    k = check_int(num_classes, "num_classes", 2) if num_classes is not None else 1 + int(max(ys.max(), yt.max()))
    draws = check_int(draws, "draws", 1)
    inp.check_label_range(ys, k, "source_labels")
    inp.check_label_range(yt, k, "target_labels")
    p = torch.bincount(ys.cpu(), minlength=k).double() / ys.numel()
    counts = torch.bincount(yt.cpu(), minlength=k).double()
    m = yt.numel()
    observed = _chi_square(counts.unsqueeze(0), p, m)[0]
    seed = check_int(seed, "seed", 0)
    if m * draws <= SIMULATED_LABELS:
        g = torch.Generator().manual_seed(seed)
        picks = torch.multinomial(p, m * draws, replacement=True, generator=g).view(draws, m)
        simulated = torch.zeros(draws, k, dtype=torch.float64).scatter_add_(
            1, picks, torch.ones(draws, m, dtype=torch.float64))
        p_value = (1 + int((_chi_square(simulated, p, m) >= observed).sum())) / (draws + 1)
    else:  # many labels: the chi-square distribution is accurate, and the simulation would hold m × draws labels
        dof = max(int((p > 0).sum()) - 1, 1)
        p_value = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), observed / 2))
    q = counts / m
    return LabelProportionTest(p, q, float(0.5 * (p - q).abs().sum()), float(observed), p_value)


def _chi_square(counts: Tensor, p: Tensor, m: int) -> Tensor:
    """Σ (o − e)² / e over the classes the source has; a count in a class the source lacks is infinitely
    unlikely under the null (inf)."""
    expected = p * m
    present = p > 0
    stat = ((counts[:, present] - expected[present]) ** 2 / expected[present]).sum(1)
    lacking = (counts[:, ~present] > 0).any(1)
    return torch.where(lacking, torch.full_like(stat, float("inf")), stat)
