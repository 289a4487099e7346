"""Freezing policies: what to train, how fast, and how far from the pretrained weights.

Low layers of a network are general and high layers task specific, so fine-tuning on a few labels
freezes (or slows down) the bottom and trains the top. A model is split into *blocks* in depth
order (see :func:`blocks`); policies act on blocks or on parameter names and combine with ``+``::

    policy = FreezeFirst(2) + BatchNormPolicy("frozen") + LayerwiseLR(0.5) + L2SP(alpha=0.01, beta=1e-4)
    policy.apply(model)
    print(summary(model))

The trainer calls ``apply`` at the start of a stage, ``on_epoch_start`` before each epoch (gradual
unfreezing), builds its optimizer from :func:`param_groups` and adds ``penalty`` to the loss.
Parameters stay in the optimizer while frozen (their ``.grad`` is None, so every torch optimizer
skips them), which is what lets a block be unfrozen mid-training with its own learning rate.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "BatchNormPolicy",
    "Block",
    "Compose",
    "FreezeAllButHead",
    "FreezeByName",
    "FreezeFirst",
    "FreezingPolicy",
    "GradualUnfreeze",
    "L2SP",
    "LayerwiseLR",
    "blocks",
    "freeze",
    "freeze_all_but_head",
    "freeze_by_name",
    "freeze_first",
    "param_groups",
    "summary",
    "unfreeze",
]


# --------------------------------------------------------------------------------------------- blocks


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


# ------------------------------------------------------------------------------------- plain functions


def freeze(module: nn.Module | Iterable[nn.Parameter]) -> None:
    """requires_grad = False for every parameter of a module (or an iterable of parameters)."""
    params = module.parameters() if isinstance(module, nn.Module) else module
    for p in params:
        p.requires_grad_(False)


def unfreeze(module: nn.Module | Iterable[nn.Parameter]) -> None:
    """requires_grad = True for every parameter of a module (or an iterable of parameters)."""
    params = module.parameters() if isinstance(module, nn.Module) else module
    for p in params:
        p.requires_grad_(True)


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > n:
        raise ValueError(f"k={k} but the model has only {n} blocks")
    return k


def freeze_first(model: nn.Module, k: int) -> list[str]:
    """Freeze the first (lowest) ``k`` blocks; returns their names."""
    bs = blocks(model)
    k = _check_k(k, len(bs))
    for b in bs[:k]:
        freeze(b.params.values())
    return [b.name for b in bs[:k]]


Pattern = Union[str, "re.Pattern[str]"]


def _compile_patterns(patterns: Pattern | Sequence[Pattern]) -> list[re.Pattern[str]]:
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    out = []
    for p in patterns:
        if isinstance(p, re.Pattern):
            out.append(p)
        elif isinstance(p, str):
            out.append(re.compile(fnmatch.translate(p)))
        else:
            raise TypeError(f"patterns must be glob strings or compiled regexes, got {type(p).__name__}")
    if not out:
        raise ValueError("give at least one name pattern")
    return out


def freeze_by_name(model: nn.Module, patterns: Pattern | Sequence[Pattern]) -> list[str]:
    """Freeze every parameter whose full name matches a glob (``"encoder.blocks.0.*"``) or a regex.

    A regex (``re.compile(...)``) is searched anywhere in the name. Raises if nothing matches, since
    a typo would otherwise silently train everything."""
    regexes = _compile_patterns(patterns)
    names = []
    for name, p in model.named_parameters():
        if any((r.search(name) if _is_user_regex(r) else r.match(name)) for r in regexes):
            p.requires_grad_(False)
            names.append(name)
    if not names:
        raise ValueError(
            f"no parameter name matches {[r.pattern for r in regexes]}; names look like "
            f"{[n for n, _ in list(model.named_parameters())[:4]]}"
        )
    return names


def _is_user_regex(r: re.Pattern[str]) -> bool:
    return not r.pattern.startswith("(?s:")  # fnmatch.translate output starts with "(?s:"


def freeze_all_but_head(model: nn.Module) -> list[str]:
    """Freeze every block but the head (a linear probe on the transferred features)."""
    bs = blocks(model)
    for b in bs[:-1]:
        freeze(b.params.values())
    return [b.name for b in bs[:-1]]


# -------------------------------------------------------------------------------------------- policies


class FreezingPolicy:
    """Base class. Subclasses override what they need; ``a + b`` combines policies."""

    #: application order inside Compose: freezers, then unfreezing schedules, then everything else
    order: int = 0

    def apply(self, model: nn.Module) -> None:
        """Called once at the start of a training stage."""

    def on_epoch_start(self, model: nn.Module, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
        """Called before each epoch (0-based); returns the names of blocks it unfroze."""
        return []

    def lr_scale(self, block_index: int, num_blocks: int, block: Block) -> float:
        """Multiplier of the base learning rate for a block."""
        return 1.0

    def penalty(self, model: nn.Module) -> Tensor | None:
        """A regularisation term added to the loss, or None."""
        return None

    def release(self, model: nn.Module) -> None:
        """Remove anything installed on the model (hooks) at the end of a stage."""

    def policies(self) -> list[FreezingPolicy]:
        return [self]

    def __add__(self, other: FreezingPolicy) -> Compose:
        if not isinstance(other, FreezingPolicy):
            return NotImplemented
        return Compose(self.policies() + other.policies())

    def summary(self, model: nn.Module) -> str:
        """What the policy does and, per block, what it would leave trainable (the model is not touched)."""
        probe = copy.deepcopy(model)
        self.apply(probe)
        self.release(probe)
        return f"policy: {self}\n{summary(probe, policy=self)}"


class Compose(FreezingPolicy):
    """Several policies applied together (freezers first, then schedules, then the rest)."""

    def __init__(self, policies: Sequence[FreezingPolicy]) -> None:
        flat: list[FreezingPolicy] = []
        for p in policies:
            if not isinstance(p, FreezingPolicy):
                raise TypeError(f"Compose takes FreezingPolicy objects, got {type(p).__name__}")
            flat += p.policies()
        self._policies = sorted(flat, key=lambda p: p.order)

    def policies(self) -> list[FreezingPolicy]:
        return list(self._policies)

    def apply(self, model: nn.Module) -> None:
        for p in self._policies:
            p.apply(model)

    def on_epoch_start(self, model: nn.Module, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
        out: list[str] = []
        for p in self._policies:
            out += p.on_epoch_start(model, epoch, optimizer)
        return out

    def lr_scale(self, block_index: int, num_blocks: int, block: Block) -> float:
        s = 1.0
        for p in self._policies:
            s *= p.lr_scale(block_index, num_blocks, block)
        return s

    def penalty(self, model: nn.Module) -> Tensor | None:
        terms = [t for t in (p.penalty(model) for p in self._policies) if t is not None]
        return None if not terms else torch.stack([t.reshape(()) for t in terms]).sum()

    def release(self, model: nn.Module) -> None:
        for p in self._policies:
            p.release(model)

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self._policies) or "Compose([])"


class FreezeFirst(FreezingPolicy):
    """Freeze the ``k`` lowest blocks (the general features)."""

    def __init__(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be an int >= 0, got {k!r}")
        self.k = k

    def apply(self, model: nn.Module) -> None:
        freeze_first(model, self.k)

    def __repr__(self) -> str:
        return f"FreezeFirst({self.k})"


class FreezeByName(FreezingPolicy):
    """Freeze parameters whose names match glob patterns or compiled regexes."""

    def __init__(self, *patterns: Pattern) -> None:
        self.patterns = list(patterns)
        _compile_patterns(self.patterns)

    def apply(self, model: nn.Module) -> None:
        freeze_by_name(model, self.patterns)

    def __repr__(self) -> str:
        return f"FreezeByName({', '.join(repr(getattr(p, 'pattern', p)) for p in self.patterns)})"


class FreezeAllButHead(FreezingPolicy):
    """Train the head only: a linear probe of the transferred features."""

    def apply(self, model: nn.Module) -> None:
        freeze_all_but_head(model)

    def __repr__(self) -> str:
        return "FreezeAllButHead()"


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
        if mode not in BN_MODES:
            raise ValueError(f"mode must be one of {BN_MODES}, got {mode!r}")
        self.mode = mode
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

        def is_frozen() -> bool:
            if mode == "all":
                return True
            watched = own if own else block_params  # a BN without affine follows its block
            return bool(watched) and not any(p.requires_grad for p in watched)

        def pre(module: nn.Module, _inputs: tuple) -> None:
            module._pytl_saved_training = module.training  # type: ignore[attr-defined]
            if is_frozen():
                module.training = False

        def post(module: nn.Module, _inputs: tuple, _out: Tensor) -> None:
            module.training = getattr(module, "_pytl_saved_training", module.training)

        return [bn.register_forward_pre_hook(pre), bn.register_forward_hook(post)]

    def release(self, model: nn.Module) -> None:
        for h in self._handles.pop(id(model), []):
            h.remove()

    def __repr__(self) -> str:
        return f"BatchNormPolicy({self.mode!r})"


class GradualUnfreeze(FreezingPolicy):
    """Freeze everything below the head, then unfreeze on a schedule at ``lr_factor`` × the lr.

    ``start``: the epoch (0-based) at which unfreezing begins. ``every=None`` unfreezes all blocks at
    ``start`` ("freeze the backbone for the first few epochs, then unfreeze with a 10× smaller lr");
    ``every=n`` unfreezes one block every n epochs, top block first (ULMFiT-style). Blocks frozen by
    other policies (FreezeFirst, FreezeByName) stay frozen.
    """

    order = 1

    def __init__(self, start: int, every: int | None = None, lr_factor: float = 0.1) -> None:
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be an int >= 0, got {start!r}")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be None or an int >= 1, got {every!r}")
        if isinstance(lr_factor, bool) or not isinstance(lr_factor, (int, float)) or not lr_factor > 0:
            raise ValueError(f"lr_factor must be a positive number, got {lr_factor!r}")
        self.start, self.every, self.lr_factor = start, every, float(lr_factor)
        self._pending: list[str] = []  # block names to unfreeze, top first
        self._param_names: dict[str, list[str]] = {}
        self._num_frozen_blocks = 0

    def apply(self, model: nn.Module) -> None:
        self._pending = []
        frozen_here: set[str] = set()
        for b in reversed(blocks(model)[:-1]):
            trainable = [n for n, p in b.params.items() if p.requires_grad]
            if trainable:
                freeze(b.params[n] for n in trainable)
                frozen_here.update(trainable)
                self._pending.append(b.name)
        # only the parameters this policy froze come back (others may be frozen by FreezeFirst etc.)
        self._param_names = {b.name: [n for n, p in b.params.items() if n in frozen_here]
                             for b in blocks(model) if b.name in self._pending}
        self._num_frozen_blocks = len(self._pending)

    def on_epoch_start(self, model: nn.Module, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
        if epoch < self.start or not self._pending:
            return []
        due = len(self._pending) if self.every is None else 1 + (epoch - self.start) // self.every
        done = self._num_frozen_blocks - len(self._pending)
        todo = max(0, due - done)
        names, self._pending = self._pending[:todo], self._pending[todo:]
        params = dict(model.named_parameters())
        for name in names:
            for pname in self._param_names[name]:
                params[pname].requires_grad_(True)
            if optimizer is not None:
                for group in optimizer.param_groups:
                    if group.get("block") == name:
                        group["lr"] = group.get("base_lr", group["lr"]) * self.lr_factor
        return names

    def __repr__(self) -> str:
        return f"GradualUnfreeze(start={self.start}, every={self.every}, lr_factor={self.lr_factor:g})"


class LayerwiseLR(FreezingPolicy):
    """Per-depth learning rates: the head gets lr, each block below ``decay`` times the one above."""

    order = 3

    def __init__(self, decay: float) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(f"decay must be a number in (0, 1], got {decay!r}")
        self.decay = float(decay)

    def lr_scale(self, block_index: int, num_blocks: int, block: Block) -> float:
        return self.decay ** (num_blocks - 1 - block_index)

    def __repr__(self) -> str:
        return f"LayerwiseLR(decay={self.decay:g})"


class L2SP(FreezingPolicy):
    """L2-SP: α·‖w − w₀‖² over transferred parameters + β·‖w‖² over new ones (trainable ones only).

    w₀ is snapshotted when the policy is applied (the start of fine-tuning), so fine-tuning cannot
    drift far from the pretrained solution. Parameters whose names match ``new`` (globs, default the
    head) are "new"; all others are "transferred". Pass ``new=()`` when the head was trained on the
    source with the same classes and should be pulled back too.
    """

    order = 3

    def __init__(self, alpha: float = 0.01, beta: float = 0.0, new: Sequence[str] = ("head", "head.*")) -> None:
        for name, v in (("alpha", alpha), ("beta", beta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if isinstance(new, str):
            new = (new,)
        self.alpha, self.beta, self.new = float(alpha), float(beta), tuple(new)
        self._w0: dict[str, Tensor] | None = None

    def is_new(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pat) for pat in self.new)

    def apply(self, model: nn.Module) -> None:
        self._w0 = {n: p.detach().clone() for n, p in model.named_parameters() if not self.is_new(n)}

    def penalty(self, model: nn.Module) -> Tensor | None:
        if self._w0 is None:
            raise RuntimeError("L2SP.penalty called before apply(model): no starting weights w0")
        sp, new = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name in self._w0:
                sp.append((p - self._w0[name].to(p.device)).pow(2).sum())
            elif self.is_new(name):
                new.append(p.pow(2).sum())
            else:
                raise RuntimeError(f"L2SP: parameter {name!r} has no starting weight; re-apply the policy")
        zero = next(model.parameters()).new_zeros(())
        total = zero
        if sp and self.alpha > 0:
            total = total + self.alpha * torch.stack(sp).sum()
        if new and self.beta > 0:
            total = total + self.beta * torch.stack(new).sum()
        return total

    def __repr__(self) -> str:
        return f"L2SP(alpha={self.alpha:g}, beta={self.beta:g}, new={list(self.new)})"


# --------------------------------------------------------------------------------- optimizer, summary


def param_groups(model: nn.Module, lr: float, policy: FreezingPolicy | None = None,
                 weight_decay: float = 0.0) -> list[dict]:
    """One optimizer parameter group per block, with ``lr = lr × policy.lr_scale(...)``.

    Every parameter is included, frozen or not (torch optimizers skip parameters without a grad), so
    that a schedule can unfreeze a block later. Each group carries ``block`` (its name) and
    ``base_lr`` (its lr before any unfreezing factor)."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    bs = blocks(model)
    groups = []
    for i, b in enumerate(bs):
        scale = policy.lr_scale(i, len(bs), b) if policy is not None else 1.0
        groups.append({
            "params": list(b.params.values()),
            "lr": lr * scale,
            "base_lr": lr * scale,
            "block": b.name,
            "weight_decay": weight_decay,
        })
    return groups


def _fmt_count(n: int) -> str:
    return f"{n:,}"


def summary(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
            policy: FreezingPolicy | None = None) -> str:
    """A table: per block, trainable and frozen parameter counts, and its lr when known."""
    bs = blocks(model)
    lrs: dict[str, float] = {}
    if optimizer is not None:
        for g in optimizer.param_groups:
            if "block" in g:
                lrs[g["block"]] = g["lr"]
    elif policy is not None:
        for i, b in enumerate(bs):
            lrs[b.name] = policy.lr_scale(i, len(bs), b)
    lr_head = "lr" if optimizer is not None else "lr scale"
    rows = [("block", "trainable", "frozen", lr_head if lrs else "")]
    for b in bs:
        rows.append((b.name, _fmt_count(b.trainable), _fmt_count(b.frozen),
                     f"{lrs[b.name]:.3g}" if b.name in lrs else ""))
    tot_t, tot_f = sum(b.trainable for b in bs), sum(b.frozen for b in bs)
    rows.append(("total", _fmt_count(tot_t), _fmt_count(tot_f), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for j, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in (1, 2, 3)]
        lines.append("  ".join(cells).rstrip())
        if j == 0 or j == len(rows) - 2:
            lines.append("-" * len(lines[0]) if j == 0 else "-" * max(len(line) for line in lines))
    return "\n".join(lines)
