"""Freezing policies: what to train, how fast, and how far from the pretrained weights.

Low layers of a network are general and high layers task specific, so fine-tuning on a few labels
freezes (or slows down) the bottom and trains the top. A model is split into *blocks* in depth
order (see :func:`blocks`); policies act on blocks or on parameter names and combine with ``+``::

    policy = FreezeFirst(2) + BatchNormPolicy("frozen") + LayerwiseLR(0.5) + L2SP(alpha=0.01, beta=1e-4)
    policy.apply(model)
    print(summary(model))

The trainer calls ``apply`` at the start of a stage, ``on_epoch_start`` before each epoch (gradual
unfreezing), builds its optimizer from :func:`param_groups` and adds ``penalty`` to the loss.
Parameters stay in the optimizer while frozen (their ``.grad`` is None, so every torch optimizer
skips them), which is what lets a block be unfrozen mid-training with its own learning rate.

Where things live (everything is importable from ``pytl.freezing`` itself):

- ``block``: ``Block`` and ``blocks()``, how a model splits into units of depth
- ``freeze_functions``: ``freeze``, ``unfreeze``, ``freeze_first``, ``freeze_by_name``,
  ``freeze_all_but_head``
- ``policy``: the ``FreezingPolicy`` protocol and ``Compose`` (what ``a + b`` builds)
- ``freezers``: ``FreezeFirst``, ``FreezeByName``, ``FreezeAllButHead``
- ``batchnorm``: ``BatchNormPolicy``; ``gradual_unfreeze``: ``GradualUnfreeze``;
  ``layerwise_lr``: ``LayerwiseLR``; ``l2sp``: ``L2SP``
- ``optim``: ``param_groups`` (one optimizer group per block) and ``summary`` (the per-block table)

A new policy subclasses ``FreezingPolicy`` in a module of its own and is re-exported here. (No
module is named after a public function: ``pytl.freezing.blocks`` must stay the function.)
"""

from pytl.freezing.batchnorm import BN_MODES, BatchNormPolicy
from pytl.freezing.block import Block, blocks
from pytl.freezing.freeze_functions import (
    Pattern,
    freeze,
    freeze_all_but_head,
    freeze_by_name,
    freeze_first,
    unfreeze,
)
from pytl.freezing.freezers import FreezeAllButHead, FreezeByName, FreezeFirst
from pytl.freezing.gradual_unfreeze import GradualUnfreeze
from pytl.freezing.l2sp import L2SP
from pytl.freezing.layerwise_lr import LayerwiseLR
from pytl.freezing.optim import param_groups, summary
from pytl.freezing.policy import Compose, FreezingPolicy

__all__ = [
    "BatchNormPolicy",
    "Block",
    "Compose",
    "FreezeAllButHead",
    "FreezeByName",
    "FreezeFirst",
    "FreezingPolicy",
    "GradualUnfreeze",
    "L2SP",
    "LayerwiseLR",
    "blocks",
    "freeze",
    "freeze_all_but_head",
    "freeze_by_name",
    "freeze_first",
    "param_groups",
    "summary",
    "unfreeze",
]
