"""The class-conditional MMD alignment (LMMD of DSAN, Zhu et al. 2020)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pytl.inference import eval_mode
from pytl.losses import classes_on_both_sides
from pytl.ops import class_conditional_mmd2
from pytl.train.alignments.base import Alignment, bandwidths, gathered


class CMMDAlignment(Alignment):
    """Per class, the MMD² between the source rows of that class and the target rows weighted by the current
    classifier's (detached, eval-mode) probability of it, averaged over the classes present on both sides.
    Off during the warm-up (the classifier is still guessing); target rows below ``cmmd_confidence`` (top
    probability) get no weight."""

    key = "cmmd"
    # the class-conditional MMD² averaged over classes has the scale of one MMD²
    lambda_option, lambda_default = "lambda_cmmd", 0.5
    description = "CE + {lambda_cmmd:g}·class-conditional MMD²"
    needs = frozenset({"pseudo_labels"})
    uses_target_labels = True

    def begin(self, model: nn.Module, resume: dict[str, Any] | None) -> None:
        self.head = getattr(model, "module", model).head  # the model itself, should it come wrapped

    def term(self, zs, zt, ys, ns, nt, lam, active, source_weights, target_labels=None):
        if not active:
            return None
        confidence = self.settings.cmmd_confidence
        # the pseudo-labels: the head in eval mode (no dropout drawn, no BatchNorm statistics moved), detached
        with torch.no_grad(), eval_mode(self.head):
            pt = torch.softmax(self.head(zt.detach()).float(), 1).to(zt.dtype)
            if confidence > 0:
                pt = pt * (pt.amax(1, keepdim=True) >= confidence).to(pt.dtype)
            if target_labels is not None:  # semi-supervised: the labelled target rows take their true class
                known = target_labels >= 0
                pt[known] = F.one_hot(target_labels[known], pt.shape[1]).to(pt.dtype)
        ps = F.one_hot(ys, pt.shape[1]).to(zs.dtype)
        zs, zt, (ps, pt) = gathered(self.run, zs, zt, ns, nt, [ps, pt])
        sig = bandwidths(self.run, zs, zt)
        return class_conditional_mmd2(zs, zt, ps, pt, sig) / classes_on_both_sides(ps, pt)
