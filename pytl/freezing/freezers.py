"""The policies that freeze once, when a stage starts: by depth, by name, or all but the head."""

from __future__ import annotations

from torch import nn

from pytl._checks import check_int
from pytl.freezing.freeze_functions import (
    Pattern,
    compile_patterns,
    freeze_all_but_head,
    freeze_by_name,
    freeze_first,
)
from pytl.freezing.policy import FreezingPolicy

__all__ = ["FreezeAllButHead", "FreezeByName", "FreezeFirst"]


class FreezeFirst(FreezingPolicy):
    """Freeze the ``k`` lowest blocks (the general features)."""

    def __init__(self, k: int) -> None:
        self.k = check_int(k, "k", minimum=0)

    def apply(self, model: nn.Module) -> None:
        freeze_first(model, self.k)

    def __repr__(self) -> str:
        return f"FreezeFirst({self.k})"


class FreezeByName(FreezingPolicy):
    """Freeze parameters whose names match glob patterns or compiled regexes."""

    def __init__(self, *patterns: Pattern) -> None:
        self.patterns = list(patterns)
        compile_patterns(self.patterns)  # bad patterns raise here, not when the stage starts

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
