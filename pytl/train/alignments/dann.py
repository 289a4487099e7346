"""The DANN alignment (Ganin et al. 2016): a domain discriminator trained through a gradient reversal layer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pytl.adversarial import DomainDiscriminator, domain_adversarial_loss
from pytl.train.alignments.base import Alignment


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
        if self.run.world > 1:
            raise ValueError("alignment='dann' is not supported under torch.distributed yet: its discriminator would "
                             "train apart on every rank; use alignment='mmd', 'cmmd' or 'coral' there")
        if self.settings.amp and self.run.device.type == "cuda":
            raise ValueError("alignment='dann' does not support amp=True on CUDA yet (the GradScaler would scale the "
                             "discriminator's gradients too); use amp=False")
        self.discriminator: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.resume = resume

    def term(self, zs, zt, ys, ns, nt, lam, active, source_weights):
        if self.discriminator is None:  # built on the first batch, when the embedding width is known
            # its initial weights from a seeded fork: a resumed run draws the same, and the global stream
            # (dropout, data order) is untouched
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.settings.seed * 1009 + 17)
                disc = DomainDiscriminator(zs[0].numel(), self.settings.dann_hidden)
            self.discriminator = disc.to(zs.device, zs.dtype)
            self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.settings.lr)
            if self.resume is not None:
                self.discriminator.load_state_dict(self.resume["discriminator"])
                self.optimizer.load_state_dict(self.resume["optimizer"])
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        return domain_adversarial_loss(self.discriminator, zs, zt, lam, source_weights)

    def after_step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()

    def state_dict(self) -> dict[str, Any] | None:
        if self.discriminator is None or self.optimizer is None:
            return self.resume
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}
