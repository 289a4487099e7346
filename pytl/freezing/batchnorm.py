"""``BatchNormPolicy``: whether BatchNorm layers in frozen blocks keep their running statistics."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from pytl._checks import check_choice
from pytl.freezing.block import blocks
from pytl.freezing.policy import FreezingPolicy

__all__ = ["BN_MODES", "BatchNormPolicy"]

BN_MODES = ("frozen", "all", "train")


class BatchNormPolicy(FreezingPolicy):
    """How BatchNorm layers behave while training.

    - ``"frozen"`` (the trainer's default): a BatchNorm whose block is frozen runs in eval mode, so
      it normalises with, and keeps, its pretrained running statistics. Frozen means frozen.
    - ``"all"``: every BatchNorm runs in eval mode (useful with tiny fine-tuning batches).
    - ``"train"``: plain PyTorch behaviour: running statistics update even in frozen layers.

    Implemented with forward hooks that switch the layer to eval mode for its own forward only, so
    ``model.train()`` / ``model.eval()`` keep working and unfreezing a block takes effect at once.
    """

    order = 2

    def __init__(self, mode: str = "frozen") -> None:
        self.mode = check_choice(mode, "mode", BN_MODES)
        self._handles: dict[int, list] = {}

    def apply(self, model: nn.Module) -> None:
        self.release(model)
        if self.mode == "train":
            return
        handles = []
        for block in blocks(model):
            block_params = list(block.params.values())
            for module in block.modules:
                for bn in module.modules():
                    if isinstance(bn, _BatchNorm):
                        handles += self._install(bn, block_params)
        self._handles[id(model)] = handles

    def _install(self, bn: _BatchNorm, block_params: list[nn.Parameter]) -> list:
        own = list(bn.parameters())
        mode = self.mode
        saved: dict[str, bool] = {}  # the layer's own mode, between its pre- and post-forward hooks

        def is_frozen() -> bool:
            if mode == "all":
                return True
            watched = own if own else block_params  # a BN without affine follows its block
            return bool(watched) and not any(p.requires_grad for p in watched)

        def pre(module: nn.Module, _inputs: tuple) -> None:
            saved["training"] = module.training
            if is_frozen():
                module.training = False

        def post(module: nn.Module, _inputs: tuple, _out: Tensor) -> None:
            module.training = saved.get("training", module.training)

        return [bn.register_forward_pre_hook(pre), bn.register_forward_hook(post)]

    def release(self, model: nn.Module) -> None:
        for h in self._handles.pop(id(model), []):
            h.remove()

    def __repr__(self) -> str:
        return f"BatchNormPolicy({self.mode!r})"
