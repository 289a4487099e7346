"""Models: an MLP encoder, a small CNN encoder for images, a classifier head, and ``TransferModel``
(encoder + head, head swap).

Transfer learning keeps the encoder (what is general) and replaces the head (what is task
specific), so the model is split into exactly those two parts: ``embed(x)`` is where MMD aligns the
domains, ``forward(x)`` gives the logits.

One concept per module: ``layers`` (activations, size checks, dense layers), ``standardize``,
``mlp`` (``MLPEncoder``), ``cnn`` (``ConvEncoder``), ``head`` (``ClassifierHead``), ``transfer``
(``TransferModel`` and the ``from_backbone`` helpers), ``defaults`` (``default_width``,
``default_model``, ``default_cnn``); their public names are re-exported here.
"""

from __future__ import annotations

from pytl.models.layers import ActivationLike
from pytl.models.standardize import Standardize
from pytl.models.mlp import MLPEncoder
from pytl.models.cnn import ConvEncoder
from pytl.models.head import ClassifierHead
from pytl.models.transfer import TransferModel
from pytl.models.defaults import default_cnn, default_model, default_width

__all__ = ["ActivationLike", "ClassifierHead", "ConvEncoder", "MLPEncoder", "Standardize", "TransferModel",
           "default_cnn", "default_model", "default_width"]
