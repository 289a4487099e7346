"""The DANN alignment (Ganin et al. 2016): a domain discriminator trained through a gradient reversal layer."""

from __future__ import annotations

from typing import Any

from torch import nn

from pytl.adversarial import DomainDiscriminator, domain_adversarial_loss
from pytl.train.alignments.base import Alignment, OwnNetwork


class DANNAlignment(Alignment):
    """A domain discriminator of ``dann_hidden`` units per hidden layer, Adam at ``lr``, trained through a
    gradient reversal layer that scales the encoder's gradient by λ (so λ keeps its meaning and
    ``lambda_schedule="dann"`` applies). Its term is the domain BCE, ln 2 ≈ 0.693 when the domains look
    alike. The discriminator and its optimizer belong to the term and travel in checkpoints."""

    key = "dann"
    # the gradient reversal's scale (DANN's own loss is not weighted)
    lambda_option, lambda_default = "lambda_dann", 1.0
    description = "CE + domain discriminator, gradient reversed ×{lambda_dann:g}"
    needs = frozenset({"discriminator", "single_process"})
    reversed = True

    def begin(self, model: nn.Module, resume: dict[str, Any] | None) -> None:
        self.discriminator = OwnNetwork(self.run, "dann", "discriminator", resume, salt=17)

    def term(self, zs, zt, ys, ns, nt, lam, active, source_weights):
        hidden = self.settings.dann_hidden
        disc = self.discriminator.get(lambda: DomainDiscriminator(zs[0].numel(), hidden), zs)
        return domain_adversarial_loss(disc, zs, zt, lam, source_weights)

    def after_step(self) -> None:
        self.discriminator.step()

    def state_dict(self) -> dict[str, Any] | None:
        return self.discriminator.state_dict()
