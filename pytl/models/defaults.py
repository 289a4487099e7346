"""The models built when none is given: ``default_width``, ``default_model`` (MLP), ``default_cnn``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pytl._checks import check_int
from pytl.models.cnn import ConvEncoder
from pytl.models.head import ClassifierHead
from pytl.models.layers import ActivationLike
from pytl.models.mlp import MLPEncoder
from pytl.models.standardize import Standardize
from pytl.models.transfer import TransferModel


#: The default MLP's hidden width, whatever the input's size. Narrower layers for small inputs (64 for 64
#: features, 128 for 128-wide embeddings, the rule until the eighth session) cost the label-free alignments
#: up to 9 points on real pairs, and 512 gained nothing more (benchmarks/OUTCOMES.md, "Eighth session").
DEFAULT_WIDTH = 256


def default_width(in_features: int) -> int:
    """The default MLP's hidden width for ``in_features`` inputs: ``DEFAULT_WIDTH`` (256) for every input size.

    One width for all: the measured gain from widening small inputs' layers did not depend on their size."""
    check_int(in_features, "in_features", minimum=1)
    return DEFAULT_WIDTH


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
        w = default_width(in_features)
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
