"""The source class weights of stage 1 (``class_weights=``): given, or estimated by BBSE once at the end of
the warm-up from the model's own predictions (a label shift: class proportions that differ by domain)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from pytl._checks import DataWarning, warn_user
from pytl.diagnostics.label_shift import label_shift_from_predictions
from pytl.inference import predict_proba

if TYPE_CHECKING:
    from pytl.train.state import RunState

#: rows per domain that the class-weight estimate predicts on
ESTIMATE_ROWS = 4096


class ClassWeights:
    """None, fixed (C,), or "estimated" by BBSE at the end of the warm-up (the model's hard predictions on up
    to ESTIMATE_ROWS source training rows and target rows; the estimate is kept as ``run.label_shift``)."""

    def __init__(self, run: RunState, source: Any, target: Any) -> None:
        self.run, self.source, self.target = run, source, target
        spec = run.settings.class_weight_spec()
        self.estimated = isinstance(spec, str)
        self.weights: Tensor | None = None
        if spec is not None and not self.estimated:
            self.weights = torch.as_tensor(spec, dtype=run.dtype, device=run.device)

    def begin(self, resume: Tensor | None) -> None:
        """``resume``: the estimate from a checkpoint (``state_dict``), if one was taken."""
        if resume is not None and self.estimated:
            self.weights = resume.to(device=self.run.device, dtype=self.run.dtype)

    def due(self) -> bool:
        return self.estimated and self.weights is None

    def estimate(self, model: nn.Module) -> None:
        run = self.run
        xs, ys = self.source[0][:ESTIMATE_ROWS], self.source[1][:ESTIMATE_ROWS]
        xt = self.target[:ESTIMATE_ROWS]
        was_training = model.training
        ps = predict_proba(model, xs, run.device).argmax(1)
        pt = predict_proba(model, xt, run.device).argmax(1)
        model.train(was_training)
        est = label_shift_from_predictions(ps, ys.cpu(), pt, num_classes=run.num_classes)
        run.label_shift = est
        self.weights = est.weights.to(device=run.device, dtype=run.dtype)
        present = torch.bincount(ys.cpu(), minlength=len(est.weights)) > 0
        dropped = [int(c) for c in torch.nonzero(present & (est.weights.cpu() <= 0)).flatten()]
        if dropped:  # measured: a source classifier 10% right on the target zeroed 7 of 10 balanced classes
            warn_user(f"class_weights='estimated': BBSE gave weight 0 to source class(es) {dropped}, so stage 1 stops "
                      f"learning them. With a source classifier this wrong on the target (its predictions after the "
                      f"warm-up) the estimate is unreliable; unless the target truly lacks these classes, pass "
                      f"class_weights=None or weights of your own", DataWarning)

    def of(self, ys: Tensor) -> Tensor | None:
        return None if self.weights is None else self.weights[ys]

    def state_dict(self) -> Tensor | None:
        return None if self.weights is None or not self.estimated else self.weights.detach().cpu()
