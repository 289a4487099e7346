"""``ConvEncoder``: a LeNet-like CNN encoder for small images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pytl._checks import check_bool, check_int
from pytl.models.layers import _check_dropout, _check_sizes, _dense_layers
from pytl.models.standardize import Standardize

class ConvEncoder(nn.Module):
    """A LeNet-like CNN for small images: [standardize], ``len(channels)`` blocks of
    Conv2d → [BatchNorm2d] → ReLU → MaxPool2d(2), then flatten → Linear → [BatchNorm1d] → ReLU → [Dropout].

    Inputs are (N, in_channels, image_size, image_size); the embedding is (N, ``embedding``). Each conv
    block and the final dense block is one entry of ``self.blocks``, so freezing policies see
    ``len(channels) + 1`` encoder blocks. ``standardize``: a ``Standardize`` with ``in_channels``
    features (per channel, ``Standardize.fit_channels``) or C·H·W features (per pixel, ``Standardize.fit``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (32, 64),
        embedding: int = 128,
        kernel_size: int = 5,
        dropout: float = 0.0,
        batch_norm: bool = True,
        standardize: Standardize | None = None,
    ) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        sizes = _check_sizes(channels, "channels", allow_empty=False)
        min_size = 2 ** len(sizes)
        image_size = check_int(image_size, "image_size", minimum=min_size)
        embedding = check_int(embedding, "embedding", minimum=1)
        kernel_size = check_int(kernel_size, "kernel_size", minimum=1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 1 (the convolutions keep the image size), "
                             f"got {kernel_size}")
        dropout = _check_dropout(dropout)
        batch_norm = check_bool(batch_norm, "batch_norm")
        if standardize is not None:
            if not isinstance(standardize, Standardize):
                raise TypeError(f"standardize must be a Standardize module or None, got {type(standardize).__name__}")
            pixels = in_channels * image_size * image_size
            if standardize.mean.numel() not in (in_channels, pixels):
                raise ValueError(f"standardize has {standardize.mean.numel()} features; expected {in_channels} "
                                 f"(per channel) or {pixels} (per pixel) for {in_channels}×{image_size}×{image_size} "
                                 "images")
        blocks: list[nn.Module] = []
        width, size = in_channels, image_size
        for out in sizes:
            conv = nn.Conv2d(width, out, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
            layers: list[nn.Module] = [conv]
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            blocks.append(nn.Sequential(*layers))
            width, size = out, size // 2
        blocks.append(nn.Sequential(nn.Flatten(1), *_dense_layers(width * size * size, embedding, nn.ReLU, dropout,
                                                                  batch_norm)))
        self.in_channels = in_channels
        self.image_size = image_size
        self.out_features = embedding
        self.standardize = standardize if standardize is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"ConvEncoder expects images of shape (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        st = self.standardize
        if isinstance(st, Standardize):
            if st.mean.numel() == self.in_channels:
                x = (x - st.mean.to(x.dtype).view(1, -1, 1, 1)) / st.std.to(x.dtype).view(1, -1, 1, 1)
            else:
                x = st(x).view_as(x)
        return self.blocks(x)
