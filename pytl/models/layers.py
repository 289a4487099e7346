"""Building blocks shared by the encoders and the head: activations by name, layer-size and dropout
checks, and the Linear → [BatchNorm1d] → activation → [Dropout] dense layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Union

from torch import nn

from pytl._checks import check_choice, check_float, check_int

ActivationLike = Union[str, Callable[[], nn.Module]]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def _activation(activation: ActivationLike) -> Callable[[], nn.Module]:
    if isinstance(activation, str):
        name = check_choice(activation.lower(), "activation", sorted(_ACTIVATIONS),
                            extra="(any case) or a callable returning an nn.Module")
        return _ACTIVATIONS[name]
    if callable(activation):
        return activation
    raise TypeError(f"activation must be a name or a callable returning an nn.Module, got {type(activation).__name__}")


def _check_sizes(values: Sequence[int], name: str, allow_empty: bool) -> tuple[int, ...]:
    """Layer widths: a sequence (not a lone int) of ints >= 1, in order, repeats allowed."""
    if isinstance(values, (int, str)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of positive ints, got {values!r}")
    if not values and not allow_empty:
        raise ValueError(f"{name} must hold at least one layer size")
    return tuple(check_int(v, f"{name}[{i}]", minimum=1) for i, v in enumerate(values))


def _check_dropout(dropout: float) -> float:
    return check_float(dropout, "dropout", 0.0, 1.0, strict_max=True)


def _dense_layers(width: int, size: int, act: Callable[[], nn.Module], dropout: float,
                  batch_norm: bool = False) -> list[nn.Module]:
    """Linear → [BatchNorm1d] → activation → [Dropout]: one hidden layer of the encoder or the head."""
    layers: list[nn.Module] = [nn.Linear(width, size, bias=not batch_norm)]  # BatchNorm makes a bias redundant
    if batch_norm:
        layers.append(nn.BatchNorm1d(size))
    layers.append(act())
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers
