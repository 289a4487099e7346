"""What the criteria read from a model: its logits (and features) on the source validation set and on
the unlabelled target (pytl.inference: computed once, in eval mode, without gradients, batch by batch),
and the per-sample losses that IWV and DEV weight.

The inputs follow pytl's one convention (pytl._inputs): ``source_val`` is a labelled pair (X, y) of
arrays, tensors or lists, or a DataLoader yielding (x, y) batches; ``target_unlabeled`` is X, or a
DataLoader yielding x (or (x, ...)) batches. Everything a criterion computes on afterwards is float64
on the CPU, so a score does not depend on the model's dtype or device beyond its forward pass.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from pytl.inference import FEATURES, Outputs, check_model, entropies, model_outputs, probabilities, read

__all__ = ["FEATURES", "LOSSES", "Outputs", "check_model", "entropies", "model_outputs", "per_sample_loss", "probabilities",
           "read"]

#: the per-sample loss ℓ that IWV and DEV weight: cross-entropy (−log p_y) or the 0-1 error
LOSSES = ("cross_entropy", "zero_one")


def per_sample_loss(out: Outputs, loss: str) -> Tensor:
    """ℓ_i of each labelled sample, float64: "cross_entropy" (−log p_{y_i}) or "zero_one" (1 when argmax ≠ y_i)."""
    assert out.labels is not None
    if loss == "cross_entropy":
        return F.cross_entropy(out.logits, out.labels, reduction="none")
    return (out.logits.argmax(1) != out.labels).double()
