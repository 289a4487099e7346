"""Blocks: a model's units of depth, bottom (input) to top (head), that the policies act on."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

__all__ = ["Block", "blocks"]


@dataclass
class Block:
    """One unit of depth: a name, its parameters (full names in the model) and the modules it spans."""

    name: str
    params: dict[str, nn.Parameter]
    modules: list[nn.Module] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.params.values() if p.requires_grad)

    @property
    def frozen(self) -> int:
        return self.num_params - self.trainable


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _split(module: nn.Module, prefix: str) -> list[Block]:
    """Blocks of one module: its own parameters (if any), then each child that has parameters.

    A chain of containers with a single parameterised child is descended, so that a wrapper around
    a Sequential still yields one block per layer."""
    own = {f"{prefix}{n}": p for n, p in module.named_parameters(recurse=False)}
    children = [(n, c) for n, c in module.named_children() if _has_params(c)]
    if not own and len(children) == 1:
        name, child = children[0]
        return _split(child, f"{prefix}{name}.")
    if not children:
        return [Block(prefix.rstrip(".") or "model", own, [module])] if own else []
    out: list[Block] = []
    if own:
        out.append(Block(f"{prefix}(own)" if prefix else "(own)", own, []))
    for name, child in children:
        params = {f"{prefix}{name}.{n}": p for n, p in child.named_parameters()}
        out.append(Block(f"{prefix}{name}", params, [child]))
    return out


def _is_transfer_model(model: nn.Module) -> bool:
    return hasattr(model, "encoder") and hasattr(model, "head") and hasattr(model, "embed")


def blocks(model: nn.Module) -> list[Block]:
    """The model's blocks, bottom (input) to top (head); together they hold every parameter once.

    For a ``TransferModel`` the encoder is split (an ``MLPEncoder`` gives one block per hidden layer,
    a torchvision ResNet one per stem layer and stage) and the head is the last block. Any other
    module is split the same way; its last block plays the head."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if _is_transfer_model(model):
        enc = _split(model.encoder, "encoder.")
        head_params = {f"head.{n}": p for n, p in model.head.named_parameters()}
        out = enc + ([Block("head", head_params, [model.head])] if head_params else [])
        own = {n: p for n, p in model.named_parameters(recurse=False)}
        if own:
            out.insert(0, Block("(own)", own, []))
        return out
    return _split(model, "")
