"""The Deep CORAL alignment (Sun & Saenko 2016)."""

from __future__ import annotations

from pytl.losses import coral_loss
from pytl.train.alignments.base import Alignment, gathered


class CORALAlignment(Alignment):
    """||C_s − C_t||²_F / 4d² of the embeddings' covariances (of the global batch under DDP)."""

    key = "coral"
    # Deep CORAL's ||C_s - C_t||^2 / 4d^2 is ~1e-4 on the tutorial's 64-wide embedding, where MMD² is 0.1-0.5,
    # so its λ is larger; 1000 makes its term a sizeable fraction of the cross-entropy there
    # (docs/python_layer.md, "Which alignment")
    lambda_option, lambda_default = "lambda_coral", 1000.0
    description = "CE + {lambda_coral:g}·CORAL"

    def term(self, zs, zt, ys, ns, nt, lam, active, source_weights):
        zs, zt, _ = gathered(self.run, zs, zt, ns, nt, [])
        return coral_loss(zs, zt)
