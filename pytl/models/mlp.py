"""``MLPEncoder``: flatten, [standardize], then dense blocks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pytl._checks import check_bool, check_int
from pytl.models.layers import ActivationLike, _activation, _check_dropout, _check_sizes, _dense_layers
from pytl.models.standardize import Standardize

class MLPEncoder(nn.Module):
    """Flatten, [standardize], then ``len(hidden_sizes)`` blocks of Linear → [BatchNorm1d] → activation → [Dropout].

    Each block is one entry of ``self.blocks`` so that freezing policies can address depth ("freeze
    the first k blocks"); the embedding is the output of the last block (``out_features`` wide).
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: ActivationLike = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        standardize: Standardize | None = None,
    ) -> None:
        super().__init__()
        in_features = check_int(in_features, "in_features", minimum=1)
        sizes = _check_sizes(hidden_sizes, "hidden_sizes", allow_empty=False)
        if standardize is not None:
            if not isinstance(standardize, Standardize):
                raise TypeError(f"standardize must be a Standardize module or None, got {type(standardize).__name__}")
            if standardize.mean.numel() != in_features:
                raise ValueError(f"standardize has {standardize.mean.numel()} features, in_features is {in_features}")
        act = _activation(activation)
        dropout = _check_dropout(dropout)
        batch_norm = check_bool(batch_norm, "batch_norm")
        blocks = []
        width = in_features
        for size in sizes:
            blocks.append(nn.Sequential(*_dense_layers(width, size, act, dropout, batch_norm)))
            width = size
        self.in_features = in_features
        self.out_features = width
        self.standardize = standardize if standardize is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.standardize(x.flatten(1)))
