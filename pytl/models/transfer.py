"""``TransferModel`` (encoder + head) and the helpers of ``TransferModel.from_backbone`` (head swap of
any backbone)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from pytl._checks import check_bool, check_int

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
        if not isinstance(x, Tensor):  # e.g. report.best_model(numpy_array): torch's own error names no argument
            raise TypeError(f"{type(self).__name__} takes a torch.Tensor, got {type(x).__name__}; convert with "
                            "torch.as_tensor(X, dtype=torch.float32), or use report.predict('best', X) / "
                            "trainer.predict(X), which take arrays")
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
            keys = list(module._modules.keys())  # not named_children(): it skips a module registered twice
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
