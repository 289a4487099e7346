"""``ClassifierHead``: the task-specific part of a ``TransferModel``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pytl._checks import check_int
from pytl.models.layers import ActivationLike, _activation, _check_dropout, _check_sizes, _dense_layers

class ClassifierHead(nn.Module):
    """The task-specific part: optional hidden layers, then a Linear to ``num_classes`` logits."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_sizes: Sequence[int] = (),
        activation: ActivationLike = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_features = check_int(in_features, "in_features", minimum=1)
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        sizes = _check_sizes(hidden_sizes, "hidden_sizes", allow_empty=True)
        act = _activation(activation)
        dropout = _check_dropout(dropout)
        layers: list[nn.Module] = []
        width = in_features
        for size in sizes:
            layers += _dense_layers(width, size, act, dropout)
            width = size
        if dropout > 0 and not sizes:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_classes))
        self.in_features = in_features
        self.num_classes = num_classes
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)
