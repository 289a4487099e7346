"""Stage 1's alignment terms, one class per file, and their registry.

Each term compares a source batch's embeddings with a target batch's and is weighted by λ in the step's
loss (``CE + λ·term``), except a ``reversed`` one (DANN, MME), whose λ acts inside the term instead (a reversed
gradient's scale, the entropy's weight).
A new alignment is one file (a subclass of ``Alignment`` that declares its key, λ option and default,
description and needs) plus one ``register`` line below; the trainer's ``alignment=`` setting and every
strategy table of pytl.experiments derive from the registry (docs/architecture.md shows an example).
"""

from pytl.train.alignments.base import ALIGNMENTS, NEEDS, Alignment, gathered, make_alignment, register
from pytl.train.alignments.cmmd import CMMDAlignment
from pytl.train.alignments.coral import CORALAlignment
from pytl.train.alignments.dann import DANNAlignment
from pytl.train.alignments.mmd import MMDAlignment
from pytl.train.alignments.mme import MMEAlignment

register(MMDAlignment)
register(CMMDAlignment)
register(CORALAlignment)
register(DANNAlignment)
register(MMEAlignment)

__all__ = ["ALIGNMENTS", "NEEDS", "Alignment", "CMMDAlignment", "CORALAlignment", "DANNAlignment",
           "MMDAlignment", "MMEAlignment", "gathered", "make_alignment", "register"]
