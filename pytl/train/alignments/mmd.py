"""The MMD alignment: MMD² of the source and target embeddings (the fused pytl.mmd2 op)."""

from __future__ import annotations

from pytl.ops import mmd2
from pytl.train.alignments.base import Alignment, bandwidths, gathered


class MMDAlignment(Alignment):
    """MMD² of the embeddings (median-heuristic ladder unless ``mmd_sigmas``; ``mmd_estimator``); with class
    weights, the source rows are weighted by them (``x_weights``)."""

    key, record_key = "mmd", "mmd2"
    lambda_option, lambda_default = "lambda_mmd", 0.5
    description = "CE + {lambda_mmd:g}·MMD²"

    def term(self, zs, zt, ys, ns, nt, lam, active, source_weights):
        zs, zt, (sw,) = gathered(self.run, zs, zt, ns, nt, [] if source_weights is None else [source_weights[:, None]])
        sig = bandwidths(self.run, zs, zt)
        if sw is None:
            return mmd2(zs, zt, sig, estimator=self.settings.mmd_estimator)
        return mmd2(zs, zt, sig, x_weights=sw[:, 0], estimator=self.settings.mmd_estimator)
