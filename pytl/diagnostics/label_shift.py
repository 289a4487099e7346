"""Label shift: how the target's class proportions differ from the source's, from unlabelled target data.

Black-box shift estimation (BBSE, Lipton, Wang & Smola, ICML 2018). Under label shift (p(x|y) is the same
in both domains, only p(y) changes), a fixed classifier's predictions on the target have the distribution

    mu_t(i) = P_t(yhat = i) = sum_j P_s(yhat = i, y = j) w(j),   w(j) = q(j) / p(j),

so w = C^-1 mu_t, where C(i, j) = P_s(yhat = i, y = j) is the joint confusion matrix on held-out labelled
source data, and the target proportions are q = w * p. The estimate is consistent when C is invertible
(the classifier tells every class apart better than chance); its error grows with C's condition number,
which the result reports. ``soft=True`` uses predicted probabilities instead of hard predictions (the
soft-confusion variant): less variance with a calibrated classifier.

``weights`` = q / p are the class weights that make the source look like the target (importance weights
for a source classifier's loss under label shift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pytl import _inputs as inp
from pytl._checks import check_bool, check_int
from pytl.inference import EVAL_BATCH, probabilities, read

__all__ = ["LabelShiftEstimate", "RELIABLE_CONDITION", "estimate_label_shift", "label_shift_from_predictions"]

#: above this condition number of the confusion matrix the estimate is called unreliable: the classifier
#: confuses some classes so much that small sampling noise in mu_t moves the solution a lot
RELIABLE_CONDITION = 100.0


@dataclass(frozen=True)
class LabelShiftEstimate:
    """BBSE's answer, float64 on the CPU. C classes.

    target_proportions: q(y) (C,), sums to 1. source_proportions: p(y) of the source validation labels.
    weights: q(y) / p(y) (C,), 0 for a class absent from the source labels. confusion: C(i, j) =
    P_s(yhat = i, y = j). condition_number: of ``confusion`` (inf when singular). clipped: classes whose
    raw solution w was negative and was set to 0 (sampling noise, or no label shift alone)."""

    target_proportions: Tensor
    source_proportions: Tensor
    weights: Tensor
    confusion: Tensor
    condition_number: float
    clipped: tuple[int, ...]
    soft: bool

    @property
    def reliable(self) -> bool:
        return self.condition_number <= RELIABLE_CONDITION

    def explain(self) -> str:
        """Plain English: the proportions, the largest change, and how far to trust them."""
        p, q = self.source_proportions.tolist(), self.target_proportions.tolist()
        lines = ["class  source p(y)  target q(y)  weight q/p"]
        for c, (pc, qc, wc) in enumerate(zip(p, q, self.weights.tolist())):
            lines.append(f"{c:>5}  {pc:>11.3f}  {qc:>11.3f}  {wc:>10.2f}")
        tv = 0.5 * float((self.target_proportions - self.source_proportions).abs().sum())
        lines.append(f"total variation between the proportions: {tv:.3f}"
                     + (" (little label shift)" if tv < 0.05 else ""))
        if self.reliable:
            lines.append(f"confusion matrix condition number {self.condition_number:.1f}: the classifier separates the "
                         "classes well enough for this estimate")
        else:
            cond = "inf (singular)" if math.isinf(self.condition_number) else f"{self.condition_number:.0f}"
            lines.append(f"unreliable: confusion matrix condition number {cond} (> {RELIABLE_CONDITION:.0f}); the "
                         "classifier confuses some classes (or one never appears in the source labels), so small "
                         "sampling noise moves the estimate a lot")
        if self.clipped:
            lines.append(f"classes {list(self.clipped)} got a negative raw estimate, set to 0: sampling noise, or a "
                         "shift that is not label shift alone (p(x|y) changed too)")
        return "\n".join(lines)


def _as_predictions(t: Tensor, name: str, num_classes: int) -> Tensor:
    """Hard predictions (1-D class indices, already through ``inp.as_labels``) as one-hot rows, or
    probabilities (2-D, rows summing to 1), float64."""
    if t.dim() == 1:
        inp.check_label_range(t, num_classes, name)
        return torch.nn.functional.one_hot(t, num_classes).double()
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] < 2:
        raise ValueError(f"{name} must be class indices (n,) or probabilities (n, C) with C >= 2, got shape "
                         f"{tuple(t.shape)}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} as a 2-D array must hold probabilities (floating point), got {t.dtype}")
    probs = t.detach().double().cpu()
    if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    worst = float((probs.sum(1) - 1).abs().max())
    if worst > 1e-4:
        raise ValueError(f"{name}'s rows must sum to 1 (probabilities; apply softmax to logits), off by up to {worst:.3g}")
    if probs.shape[1] != num_classes:
        raise ValueError(f"{name} has {probs.shape[1]} class columns, expected {num_classes}")
    return probs


def label_shift_from_predictions(source_predictions: Any, source_labels: Any, target_predictions: Any, *,
                                 num_classes: int | None = None) -> LabelShiftEstimate:
    """BBSE from a classifier's predictions: on held-out labelled source data (``source_predictions`` with
    their true ``source_labels``) and on the unlabelled target (``target_predictions``). Predictions are
    class indices (hard BBSE) or probabilities (n, C) (soft); both sides the same kind. ``num_classes``
    defaults to the probabilities' width, or the largest class index seen + 1."""
    y = inp.as_labels(source_labels, "source_labels")
    src = inp.to_tensor(source_predictions, "source_predictions")
    tgt = inp.to_tensor(target_predictions, "target_predictions")
    if src.dim() != tgt.dim():
        raise ValueError("source_predictions and target_predictions must be the same kind: both class indices (n,) "
                         f"or both probabilities (n, C), got shapes {tuple(src.shape)} and {tuple(tgt.shape)}")
    soft = src.dim() == 2
    if src.dim() == 1:  # hard predictions: class indices, converted once
        src, tgt = inp.as_labels(src, "source_predictions"), inp.as_labels(tgt, "target_predictions")
    if num_classes is None:
        num_classes = int(src.shape[1]) if soft else 1 + max(int(y.max()), int(src.max()), int(tgt.max()))
    else:
        num_classes = check_int(num_classes, "num_classes", 2)
    ps = _as_predictions(src, "source_predictions", num_classes)
    pt = _as_predictions(tgt, "target_predictions", num_classes)
    if ps.shape[0] != y.shape[0]:
        raise ValueError(f"source_labels has {y.shape[0]} labels for {ps.shape[0]} source_predictions")
    inp.check_label_range(y, num_classes, "source_labels")
    return _bbse(ps, y, pt, num_classes, soft)


def _bbse(ps: Tensor, y: Tensor, pt: Tensor, num_classes: int, soft: bool) -> LabelShiftEstimate:
    n = ps.shape[0]
    truth = torch.nn.functional.one_hot(y, num_classes).double()
    confusion = ps.T @ truth / n  # C(i, j) = P_s(yhat = i, y = j)
    mu_t = pt.mean(0)
    p_source = truth.mean(0)
    w = torch.linalg.lstsq(confusion, mu_t.unsqueeze(1), driver="gelsd").solution.squeeze(1)  # pinv when singular
    clipped = tuple(int(c) for c in torch.nonzero(w < 0).flatten())
    w = w.clamp_min(0.0)
    q = w * p_source
    total = float(q.sum())
    if total <= 0:
        raise ValueError("the label-shift estimate is all zero: the target predictions are not explained by any "
                         "mixture of the source classes (is the classifier the one the source predictions came from?)")
    q = q / total
    weights = torch.where(p_source > 0, q / p_source.clamp_min(1e-300), torch.zeros_like(q))
    cond = float(torch.linalg.cond(confusion))
    if not math.isfinite(cond):
        cond = math.inf
    return LabelShiftEstimate(q, p_source, weights, confusion, cond, clipped, soft)


def estimate_label_shift(model: Any, source_val: Any, target_unlabeled: Any, *, soft: bool = False,
                         batch_size: int = EVAL_BATCH) -> LabelShiftEstimate:
    """BBSE with a trained classifier: its predictions on ``source_val`` (a labelled (X, y) pair or
    DataLoader of source data it was not trained on) and on ``target_unlabeled`` (X or a DataLoader).
    ``soft``: use softmax probabilities instead of argmax predictions."""
    soft = check_bool(soft, "soft")
    s_out, t_out = read(model, source_val, target_unlabeled, criterion="label shift", need_source=True,
                        batch_size=batch_size)
    num_classes = int(s_out.logits.shape[1])
    inp.check_label_range(s_out.labels, num_classes, "source_val labels")
    if soft:
        ps, pt = probabilities(s_out.logits), probabilities(t_out.logits)
    else:
        ps = torch.nn.functional.one_hot(s_out.logits.argmax(1), num_classes).double()
        pt = torch.nn.functional.one_hot(t_out.logits.argmax(1), num_classes).double()
    return _bbse(ps, s_out.labels, pt, num_classes, soft)
