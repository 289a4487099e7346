"""The MME alignment (Saito et al., ICCV 2019, "Semi-supervised Domain Adaptation via Minimax Entropy"): a cosine
classifier whose prototypes maximise the entropy of the unlabelled target predictions while the encoder
minimises it, so the prototypes move towards the target and the target features cluster around them."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pytl.adversarial import grad_reverse
from pytl.train.alignments.base import Alignment, OwnNetwork

#: the cosine classifier's temperature (the paper's T = 0.05): logits are cosines / T
TEMPERATURE = 0.05


class CosinePrototypes(nn.Module):
    """One prototype per class; logits are the cosines between the embedding and each prototype over
    ``temperature`` (both normalised, so the entropy cannot be raised by shrinking weights)."""

    def __init__(self, features: int, classes: int, temperature: float = TEMPERATURE) -> None:
        super().__init__()
        self.prototypes = nn.Linear(features, classes, bias=False)
        self.temperature = temperature

    def forward(self, z: Tensor) -> Tensor:
        return F.normalize(z.flatten(1), dim=1) @ F.normalize(self.prototypes.weight, dim=1).T / self.temperature


class MMEAlignment(Alignment):
    """MME's two losses on the model's embeddings, with a cosine classifier of its own (the prototypes):
    its cross-entropy on the labelled rows (source, and the labelled target rows when semi-supervised) trains
    prototypes and encoder alike; on the unlabelled target rows the prototypes ascend λ·entropy and the encoder,
    through a gradient reversal layer, descends it. Its term is that cross-entropy minus λ·entropy.

    One difference from the paper: there the cosine classifier *is* the model's classifier; here the model
    keeps its own head (trained on the source CE as in every strategy, then fine-tuned), and the prototypes
    shape the embedding beside it, so MME fits the two-stage recipe and its fine-tuning like the other terms.
    The prototypes and their optimizer travel in checkpoints."""

    key = "mme"
    # the entropy's weight (the paper's λ = 0.1); the prototypes' cross-entropy is not weighted
    lambda_option, lambda_default = "lambda_mme", 0.1
    description = "CE + cosine prototypes' CE − {lambda_mme:g}·target entropy (minimax)"
    needs = frozenset({"discriminator", "single_process"})
    reversed = True
    uses_target_labels = True

    def begin(self, model: nn.Module, resume: dict[str, Any] | None) -> None:
        self.prototypes = OwnNetwork(self.run, "mme", "prototypes", resume, salt=29)

    def term(self, zs, zt, ys, ns, nt, lam, active, source_weights, target_labels=None):
        classes = self.run.num_classes
        assert classes is not None
        head = self.prototypes.get(lambda: CosinePrototypes(zs[0].numel(), classes), zs)
        rows = F.cross_entropy(head(zs), ys, reduction="none")
        ce = rows.mean() if source_weights is None else \
            (rows * source_weights).sum() / source_weights.sum().clamp_min(1e-12)
        unlabelled = zt
        if target_labels is not None:
            known = target_labels >= 0
            if bool(known.any()):
                ce = ce + F.cross_entropy(head(zt[known]), target_labels[known])
            unlabelled = zt[~known]
        # the prototypes see -λ·H and ascend H; the reversed gradient makes the encoder descend it
        logp = torch.log_softmax(head(grad_reverse(unlabelled, 1.0)).float(), 1)
        entropy = -(logp.exp() * logp).sum(1).mean()
        return ce - lam * entropy.to(ce.dtype)

    def after_step(self) -> None:
        self.prototypes.step()

    def state_dict(self) -> dict[str, Any] | None:
        return self.prototypes.state_dict()
