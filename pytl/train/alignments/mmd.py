"""The MMD alignment: MMD² of the source and target embeddings (the fused pytl.mmd2 op, or its random-feature
estimate with ``mmd_method="rff"``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from pytl.ops import mmd2
from pytl.train.alignments.base import Alignment, bandwidths, gathered

#: seeds of the per-step random features: settings.seed · this + the step, the same on every rank (so that DDP
#: ranks compute one loss) and after a resume (the step is checkpointed)
_STEP_SEED_STRIDE = 1_000_003


class MMDAlignment(Alignment):
    """MMD² of the embeddings (median-heuristic ladder unless ``mmd_sigmas``; ``mmd_estimator``); with class
    weights, the source rows are weighted by them (``x_weights``). ``mmd_method="rff"``: random Fourier features
    drawn afresh each step (linear in the batch: large batches of wide embeddings)."""

    key, record_key = "mmd", "mmd2"
    lambda_option, lambda_default = "lambda_mmd", 0.5
    description = "CE + {lambda_mmd:g}·MMD²"

    def begin(self, model: nn.Module, resume: dict[str, Any] | None) -> None:
        self.step = int(resume["step"]) if resume else 0

    def term(self, zs, zt, ys, ns, nt, lam, active, source_weights):
        zs, zt, (sw,) = gathered(self.run, zs, zt, ns, nt, [] if source_weights is None else [source_weights[:, None]])
        sig = bandwidths(self.run, zs, zt)
        estimator = self.settings.mmd_estimator
        if self.settings.mmd_method == "rff":
            return mmd2(zs, zt, sig, estimator=estimator, method="rff",
                        seed=self.settings.seed * _STEP_SEED_STRIDE + self.step)
        if sw is None:
            return mmd2(zs, zt, sig, estimator=estimator)
        return mmd2(zs, zt, sig, x_weights=sw[:, 0], estimator=estimator)

    def after_step(self) -> None:
        self.step += 1

    def state_dict(self) -> dict[str, Any] | None:
        return {"step": self.step} if self.settings.mmd_method == "rff" else None  # the exact term has no state
