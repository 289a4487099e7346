"""What every alignment term of stage 1 is: the ``Alignment`` base class, the registry, and the gathering
of a global batch under DDP.

An alignment declares, as class attributes, everything the rest of pytl derives from it: its key
(``TwoStageTrainer(alignment=key)``, strategies "<key>_only" and "<key>"), the record key of its term,
its λ option in ``compare_strategies`` with the default, the description of its strategies, and what it
needs. pytl.experiments.strategies builds every table of strategies from ``ALIGNMENTS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pytl import distributed as pd
from pytl.train import ddp

if TYPE_CHECKING:
    from pytl.train.state import RunState

__all__ = ["ALIGNMENTS", "NEEDS", "Alignment", "OwnNetwork", "gathered", "make_alignment", "register"]

#: what an alignment may need beyond source labels and unlabelled target rows
NEEDS = frozenset({"pseudo_labels", "discriminator", "single_process"})


class Alignment:
    """One alignment term: compares a source batch's embeddings with a target batch's.

    Class attributes (declared by each subclass):
      key: its name; ``record_key``: its term's key in the history (default: key);
      lambda_option, lambda_default: compare_strategies' option for its λ and its default;
      description: what its "<key>_only" strategy adds to the source CE, with ``{<lambda_option>:g}`` for λ;
      needs: a subset of NEEDS ("pseudo_labels": the classifier's own target predictions, so it waits
      for the warm-up; "discriminator": a network of its own; "single_process": no DDP yet);
      reversed: λ scales a reversed gradient inside the term (the step's loss is CE + term) instead of
      weighing the term (CE + λ·term).
    An instance lives for one stage 1: ``begin`` (after a checkpoint's weights are restored), then per step
    ``term`` and ``after_step``; ``state_dict``/``load_state_dict`` carry its own state through checkpoints.
    """

    key: ClassVar[str]
    record_key: ClassVar[str] = ""
    lambda_option: ClassVar[str]
    lambda_default: ClassVar[float]
    description: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    reversed: ClassVar[bool] = False
    #: semi-supervised stage 1: term() also takes ``target_labels`` (zt's rows: a class, or -1 when unlabelled)
    uses_target_labels: ClassVar[bool] = False

    def __init__(self, run: RunState) -> None:
        self.run = run
        self.settings = run.settings

    def begin(self, model: nn.Module, resume: dict[str, Any] | None) -> None:
        """At the start of stage 1; ``resume``: this term's ``state_dict`` from a checkpoint (or None)."""

    def term(self, zs: Tensor, zt: Tensor, ys: Tensor, ns: int, nt: int, lam: float, active: bool,
             source_weights: Tensor | None) -> Tensor | None:
        """The term on this rank's embeddings (ns, nt: the global batch sizes); None while not ``active``
        (the warm-up) for a term that needs pseudo-labels."""
        raise NotImplementedError

    def after_step(self) -> None:
        """After the model's optimizer step."""

    def state_dict(self) -> dict[str, Any] | None:
        return None


class OwnNetwork:
    """A network an alignment trains beside the model (DANN's discriminator, MME's prototypes): built on the first
    batch, when the embedding width is known, from a seeded fork (a resumed run draws the same weights and the
    global stream, dropout and data order, is untouched), with Adam at the model's ``lr``; restored from a
    checkpoint's ``state_dict``. One process only: under DDP it would train apart on every rank."""

    def __init__(self, run: RunState, alignment: str, name: str, resume: dict[str, Any] | None, salt: int) -> None:
        s = run.settings
        if run.world > 1:
            raise ValueError(f"alignment={alignment!r} is not supported under torch.distributed yet: its {name} would "
                             "train apart on every rank; use alignment='mmd', 'cmmd' or 'coral' there")
        if s.amp and run.device.type == "cuda":
            raise ValueError(f"alignment={alignment!r} does not support amp=True on CUDA yet (the GradScaler would scale "
                             f"its {name}'s gradients too); use amp=False")
        self.seed, self.lr, self.resume, self.key = s.seed * 1009 + salt, s.lr, resume, name
        self.network: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def get(self, build: Callable[[], nn.Module], like: Tensor) -> nn.Module:
        """The network (built by ``build`` on the first call, on ``like``'s device and dtype), its gradients
        zeroed for this step."""
        if self.network is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                net = build()
            self.network = net.to(like.device, like.dtype)
            self.optimizer = torch.optim.Adam(self.network.parameters(), lr=self.lr)
            if self.resume is not None:
                self.network.load_state_dict(self.resume[self.key])
                self.optimizer.load_state_dict(self.resume["optimizer"])
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        return self.network

    def step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()

    def state_dict(self) -> dict[str, Any] | None:
        if self.network is None or self.optimizer is None:
            return self.resume
        return {self.key: self.network.state_dict(), "optimizer": self.optimizer.state_dict()}


#: every alignment, by key, in registration order (the order of the strategy tables)
ALIGNMENTS: dict[str, type[Alignment]] = {}


def register(cls: type[Alignment]) -> type[Alignment]:
    """Add an alignment class to the registry (checks its declarations); returns it."""
    for attr in ("key", "lambda_option", "lambda_default", "description"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} must declare {attr}")
    if cls.key in ALIGNMENTS:
        raise ValueError(f"an alignment named {cls.key!r} is already registered ({ALIGNMENTS[cls.key].__name__})")
    unknown = set(cls.needs) - NEEDS
    if unknown:
        raise ValueError(f"{cls.__name__}.needs has unknown entries {sorted(unknown)}; known: {sorted(NEEDS)}")
    if not cls.record_key:
        cls.record_key = cls.key
    ALIGNMENTS[cls.key] = cls
    return cls


def make_alignment(run: RunState) -> Alignment:
    return ALIGNMENTS[run.settings.alignment](run)


def gathered(run: RunState, zs: Tensor, zt: Tensor, ns: int, nt: int,
             extra: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor | None]]:
    """The embeddings of the global batch under DDP with mmd_scope="global", else this rank's, and the per-row
    ``extra`` (constants: one source tensor, or a source and a target tensor) that go with them, gathered as
    extra columns of the same all-gather and returned detached. An empty ``extra`` gives [None]."""
    if run.world == 1 or run.settings.mmd_scope != "global":
        return zs, zt, list(extra) or [None]
    if not extra:
        zs, zt = ddp.gather_for_mmd(run, zs, zt, ns, nt)
        return zs, zt, [None]
    es = extra[0]
    et = extra[1] if len(extra) > 1 else zt.new_zeros(zt.shape[0], es.shape[1])
    zs, zt, cs, ct = pd.gather_with_columns(zs, zt, es, et, dist.group.WORLD, sizes=ddp.global_sizes(run, ns, nt))
    return zs, zt, [cs.detach()] + ([ct.detach()] if len(extra) > 1 else [])


def bandwidths(run: RunState, zs: Tensor, zt: Tensor) -> Any:
    """The MMD terms' bandwidths: ``mmd_sigmas`` as given, or its value on the detached embeddings if callable."""
    sig = run.settings.mmd_sigmas
    return sig(zs.detach(), zt.detach()) if callable(sig) else sig
