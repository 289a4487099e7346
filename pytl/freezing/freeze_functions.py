"""The plain freezing functions: by module, by depth (the first k blocks, all but the head), by name."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from typing import Union

from torch import nn

from pytl._checks import check_int
from pytl.freezing.block import blocks

__all__ = ["Pattern", "compile_patterns", "freeze", "freeze_all_but_head", "freeze_by_name", "freeze_first",
           "unfreeze"]


def _set_requires_grad(module: nn.Module | Iterable[nn.Parameter], flag: bool) -> None:
    params = module.parameters() if isinstance(module, nn.Module) else module
    for p in params:
        p.requires_grad_(flag)


def freeze(module: nn.Module | Iterable[nn.Parameter]) -> None:
    """requires_grad = False for every parameter of a module (or an iterable of parameters)."""
    _set_requires_grad(module, False)


def unfreeze(module: nn.Module | Iterable[nn.Parameter]) -> None:
    """requires_grad = True for every parameter of a module (or an iterable of parameters)."""
    _set_requires_grad(module, True)


def freeze_first(model: nn.Module, k: int) -> list[str]:
    """Freeze the first (lowest) ``k`` blocks; returns their names."""
    bs = blocks(model)
    k = check_int(k, "k", minimum=0)
    if k > len(bs):
        raise ValueError(f"k={k} but the model has only {len(bs)} blocks")
    for b in bs[:k]:
        freeze(b.params.values())
    return [b.name for b in bs[:k]]


def freeze_all_but_head(model: nn.Module) -> list[str]:
    """Freeze every block but the head (a linear probe on the transferred features)."""
    bs = blocks(model)
    for b in bs[:-1]:
        freeze(b.params.values())
    return [b.name for b in bs[:-1]]


Pattern = Union[str, "re.Pattern[str]"]


def compile_patterns(patterns: Pattern | Sequence[Pattern]) -> list[re.Pattern[str]]:
    """Glob strings (matched against the whole name) and compiled regexes, as regexes; at least one."""
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


def _is_user_regex(r: re.Pattern[str]) -> bool:
    return not r.pattern.startswith("(?s:")  # fnmatch.translate output starts with "(?s:"


def freeze_by_name(model: nn.Module, patterns: Pattern | Sequence[Pattern]) -> list[str]:
    """Freeze every parameter whose full name matches a glob (``"encoder.blocks.0.*"``) or a regex.

    A regex (``re.compile(...)``) is searched anywhere in the name. Raises if nothing matches, since
    a typo would otherwise silently train everything."""
    regexes = compile_patterns(patterns)
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
