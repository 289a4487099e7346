"""Models: an MLP encoder, a small CNN encoder for images, a classifier head, and ``TransferModel``
(encoder + head, head swap).

Transfer learning keeps the encoder (what is general) and replaces the head (what is task
specific), so the model is split into exactly those two parts: ``embed(x)`` is where MMD aligns the
domains, ``forward(x)`` gives the logits.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Union

import torch
from torch import Tensor, nn

from pytl._checks import check_bool, check_choice, check_float, check_int

__all__ = ["ClassifierHead", "ConvEncoder", "MLPEncoder", "Standardize", "TransferModel", "default_cnn",
           "default_model"]

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


class Standardize(nn.Module):
    """(x − mean) / std per input feature, with fixed statistics (buffers, not parameters).

    Raw features far from the origin or on very different scales slow an MLP down badly; the default
    model therefore standardises with statistics of the pooled training inputs (both domains, one
    transform, so the shift between domains is kept for MMD to remove)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.shape != std.shape:
            raise ValueError(f"mean and std must have the same shape, got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool(torch.isfinite(mean).all()) or not bool(torch.isfinite(std).all()):
            raise ValueError("mean and std must be finite")
        std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features are left as they are
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    @classmethod
    def fit(cls, *samples: Tensor) -> Standardize:
        """Statistics of the pooled samples (each (N, ...), flattened per sample)."""
        x = torch.cat([s.detach().reshape(s.shape[0], -1).double() for s in samples])
        return cls(x.mean(0), x.std(0, unbiased=False))

    @classmethod
    def fit_channels(cls, *samples: Tensor) -> Standardize:
        """Per-channel statistics of pooled images (each (N, C, H, W)): C features, for ``ConvEncoder``."""
        for s in samples:
            if not isinstance(s, Tensor) or s.dim() != 4:
                shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise ValueError(f"fit_channels takes image tensors (N, C, H, W), got {shape}")
        x = torch.cat([s.detach().double().transpose(0, 1).reshape(s.shape[1], -1) for s in samples], dim=1)
        return cls(x.mean(1), x.std(1, unbiased=False))

    def forward(self, x: Tensor) -> Tensor:
        return (x.flatten(1) - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"features={self.mean.numel()}"


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


def _linears(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every nn.Linear in ``module`` (itself included) with its name, in registration order."""
    return [(name, sub) for name, sub in module.named_modules() if isinstance(sub, nn.Linear)]


def _last_linear(module: nn.Module) -> tuple[str, nn.Linear]:
    found = _linears(module)
    if not found:
        kinds = sorted({type(m).__name__ for m in module.modules() if m is not module}) or ["none"]
        raise ValueError(
            f"from_backbone: {type(module).__name__} has no nn.Linear layer to replace (its layers: "
            f"{', '.join(kinds[:12])}). Build TransferModel(encoder, head) yourself for such a model."
        )
    return found[-1]


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parts = name.split(".")
    parent = root
    for p in parts[:-1]:
        parent = getattr(parent, p)
    return parent, parts[-1]


def _num_classes_of(module: nn.Module) -> int | None:
    found = _linears(module)
    return int(found[-1][1].out_features) if found else None


class TransferModel(nn.Module):
    """``encoder`` (shared, transferred) followed by ``head`` (task specific).

    ``embed(x)`` returns the encoder's features (flattened to (N, F)): the representation that MMD
    aligns across domains. ``forward(x)`` returns the head's logits.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        for name, m in (("encoder", encoder), ("head", head)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(m).__name__}")
        self.encoder = encoder
        self.head = head

    @property
    def num_classes(self) -> int | None:
        """out_features of the head's last Linear (None when the head has no Linear)."""
        return _num_classes_of(self.head)

    def embed(self, x: Tensor) -> Tensor:
        z = self.encoder(x)
        return z.flatten(1) if z.dim() > 2 else z

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))

    @classmethod
    def from_backbone(
        cls,
        backbone: nn.Module,
        num_classes: int,
        *,
        example_input: Tensor | None = None,
        copy_backbone: bool = True,
    ) -> TransferModel:
        """Swap the head of any backbone: its last ``nn.Linear`` becomes a fresh ``Linear(F, num_classes)``.

        The last Linear in registration order is taken (torchvision's ``fc``, ``classifier[-1]``, a
        Sequential's last layer); it is replaced by ``nn.Identity`` in the encoder, so ``embed(x)``
        is what used to feed it. Parameter-free layers that followed it in a Sequential (a Softmax,
        say) are dropped, since the new head returns logits; layers with parameters after it mean
        it is not the classifier and raise. Pass ``example_input`` to check, with one forward
        pass, that this Linear really produces the backbone's output. The backbone is deep-copied
        unless ``copy_backbone=False``.
        """
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        copy_backbone = check_bool(copy_backbone, "copy_backbone")
        if isinstance(backbone, TransferModel):
            encoder = copy.deepcopy(backbone.encoder) if copy_backbone else backbone.encoder
            head_in = _infer_head_in(backbone.head)
            return cls(encoder, nn.Linear(head_in, num_classes))
        if example_input is not None:
            _check_last_linear_is_output(backbone, example_input)
        encoder = copy.deepcopy(backbone) if copy_backbone else backbone
        name, linear = _last_linear(encoder)
        if name == "":
            raise ValueError("from_backbone: the backbone is a single nn.Linear; nothing would remain as encoder")
        if isinstance(linear, nn.modules.linear.NonDynamicallyQuantizableLinear):
            raise ValueError(
                f"from_backbone: the last Linear ({name!r}) is an attention projection, not a classifier; "
                "build TransferModel(encoder, head) yourself"
            )
        in_features = int(linear.in_features)
        if in_features < 1:
            raise ValueError(
                f"from_backbone: cannot infer the feature size from {name!r} (in_features={in_features}); "
                "run one forward pass first if it is a LazyLinear"
            )
        _drop_trailing(encoder, name)
        parent, attr = _parent(encoder, name)
        setattr(parent, attr, nn.Identity())
        head = nn.Linear(in_features, num_classes)
        ref = next(linear.parameters(), None)
        if ref is not None:
            head = head.to(device=ref.device, dtype=ref.dtype)
        return cls(encoder, head)


def _infer_head_in(head: nn.Module) -> int:
    found = _linears(head)
    if found:
        return int(found[0][1].in_features)
    raise ValueError("from_backbone: the TransferModel's head has no nn.Linear to infer the feature size from")


def _drop_trailing(root: nn.Module, name: str) -> None:
    """In every Sequential on the path to ``name``, replace parameter-free layers after it by Identity."""
    parts = name.split(".")
    module = root
    for depth, part in enumerate(parts):
        if isinstance(module, nn.Sequential):
            keys = list(module._modules.keys())
            after = keys[keys.index(part) + 1:]
            for key in after:
                sub = module._modules[key]
                if sub is None:
                    continue
                if any(True for _ in sub.parameters()) or any(True for _ in sub.buffers()):
                    path = ".".join(parts[:depth] + [key])
                    raise ValueError(
                        f"from_backbone: the last Linear {name!r} is followed by {path!r} "
                        f"({type(sub).__name__}), which has parameters, so {name!r} is not the classifier "
                        "head; build TransferModel(encoder, head) yourself"
                    )
                module._modules[key] = nn.Identity()
        module = getattr(module, part)


def _check_last_linear_is_output(backbone: nn.Module, example_input: Tensor) -> None:
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    name, linear = _last_linear(backbone)
    seen: list[Tensor] = []
    handle = linear.register_forward_hook(lambda _m, _i, out: seen.append(out))
    was_training = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            out = backbone(example_input)
    finally:
        handle.remove()
        backbone.train(was_training)
    if not seen:
        raise ValueError(f"from_backbone: the last Linear {name!r} is not used in the backbone's forward pass")
    if not isinstance(out, Tensor) or out.shape != seen[-1].shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"from_backbone: the last Linear {name!r} outputs {tuple(seen[-1].shape)} but the backbone returns "
            f"{shape}; it does not look like the classifier head"
        )


def default_width(in_features: int) -> int:
    """Hidden width that grows with the input: 64 for tiny inputs, up to 256."""
    return int(min(256, max(64, 2 ** math.ceil(math.log2(max(1, in_features))))))


def default_model(
    in_features: int,
    num_classes: int,
    hidden_sizes: Sequence[int] | None = None,
    activation: ActivationLike = "relu",
    dropout: float = 0.0,
    batch_norm: bool = False,
    standardize: Standardize | None = None,
    *,
    seed: int | None = None,
) -> TransferModel:
    """The MLP that ``compare_strategies`` and ``TwoStageTrainer`` build when given no model.

    ``hidden_sizes=None`` sizes it from the data: two blocks of ``default_width(in_features)``.
    ``standardize``: input statistics (``Standardize.fit(X_source, X_target)``), or None for raw inputs.
    ``seed``: initial weights drawn from ``torch.manual_seed(seed)`` inside a fork of the global RNG
    (the caller's RNG state is untouched); None draws them from the global RNG as it is.
    """
    if seed is not None:
        seed = check_int(seed, "seed", 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return default_model(in_features, num_classes, hidden_sizes, activation, dropout, batch_norm, standardize)
    if hidden_sizes is None:
        w = default_width(check_int(in_features, "in_features", minimum=1))
        hidden_sizes = (w, w)
    encoder = MLPEncoder(in_features, hidden_sizes, activation=activation, dropout=dropout, batch_norm=batch_norm,
                         standardize=standardize)
    return TransferModel(encoder, ClassifierHead(encoder.out_features, num_classes))


def default_cnn(
    num_classes: int,
    in_channels: int = 1,
    image_size: int = 28,
    channels: Sequence[int] = (32, 64),
    embedding: int = 128,
    kernel_size: int = 5,
    dropout: float = 0.0,
    batch_norm: bool = True,
    standardize: Standardize | None = None,
    *,
    seed: int | None = None,
) -> TransferModel:
    """A ``ConvEncoder`` with a linear head: the image counterpart of ``default_model``.

    Pass it as ``model=`` to ``compare_strategies`` or ``TwoStageTrainer`` for inputs of shape
    (N, in_channels, image_size, image_size). ``standardize``: input statistics, e.g.
    ``Standardize.fit_channels(X_source, X_target)`` (pooled over both domains, so the shift stays for
    MMD to remove), or None for raw inputs. ``seed``: initial weights drawn from
    ``torch.manual_seed(seed)`` inside a fork of the global RNG (the caller's RNG state is untouched);
    None draws them from the global RNG as it is.
    """
    if seed is not None:
        seed = check_int(seed, "seed", 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return default_cnn(num_classes, in_channels, image_size, channels, embedding, kernel_size, dropout,
                               batch_norm, standardize)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    encoder = ConvEncoder(in_channels, image_size, channels, embedding, kernel_size=kernel_size, dropout=dropout,
                          batch_norm=batch_norm, standardize=standardize)
    return TransferModel(encoder, ClassifierHead(encoder.out_features, num_classes))
