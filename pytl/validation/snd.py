"""Soft neighborhood density (SND): how densely the target predictions cluster.

Saito, Kim, Teterwak, Sclaroff, Darrell & Saenko, "Tune it the Right Way: Unsupervised Validation of
Domain Adaptation via Soft Neighborhood Density", ICCV 2021. With p_i the softmax output of target
sample i, L2-normalised to p̂_i, the similarities s_ij = p̂_i · p̂_j (i ≠ j) are turned into a soft
neighbourhood of each sample by a softmax with temperature τ = 0.05,

    q_ij = exp(s_ij / τ) / Σ_{k≠i} exp(s_ik / τ),      SND = (1/n) Σ_i H(q_i) = −(1/n) Σ_i Σ_{j≠i} q_ij log q_ij,

higher is better: a model whose target predictions form dense clusters (each sample has many close
neighbours in prediction space) gives each row a flat, high-entropy neighbourhood.

Computed in float64 on chunks of rows: ``chunk_size`` rows of the n × n similarity at a time, so the
memory is O(chunk_size · n), never n × n (by default chunk_size · n ≈ CHUNK_ELEMENTS). The diagonal is
excluded exactly (s_ii = −∞); the authors' code fills it with −1/τ and takes log(q + 1e-5), which moves
the value by a negligible amount and is not reproduced.

When it fails: it rewards clustering, not correct clustering. A model that maps the target into a few
tight clusters that straddle the true classes, or (with many classes) collapses them, can score well.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pytl._checks import check_float, check_optional_int
from pytl.inference import EVAL_BATCH
from pytl.validation import outputs

__all__ = ["CHUNK_ELEMENTS", "TEMPERATURE", "snd_from_probabilities", "soft_neighborhood_density"]

TEMPERATURE = 0.05
CHUNK_ELEMENTS = 1 << 22  # similarity entries per chunk by default (32 MiB in float64)


def snd_from_probabilities(probs: Tensor, temperature: float = TEMPERATURE, chunk_size: int | None = None) -> float:
    """SND of predicted class probabilities ``probs`` (n, C), n ≥ 2, in float64, ``chunk_size`` rows at a time
    (None: about CHUNK_ELEMENTS similarities per chunk)."""
    temperature = check_float(temperature, "temperature", 0.0, strict_min=True)
    chunk_size = check_optional_int(chunk_size, "chunk_size", 1)
    if not isinstance(probs, Tensor) or probs.dim() != 2:
        raise ValueError("probs must be a 2-D tensor (samples, classes)")
    n = probs.shape[0]
    if n < 2:
        raise ValueError(f"soft neighborhood density needs at least 2 target samples (each is compared with the "
                         f"others), got {n}")
    p = torch.nn.functional.normalize(probs.detach().cpu().double(), dim=1)
    rows = chunk_size if chunk_size is not None else max(1, CHUNK_ELEMENTS // n)
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        sim = (p[start:stop] @ p.T) / temperature
        idx = torch.arange(start, stop)
        sim[idx - start, idx] = float("-inf")
        q = torch.softmax(sim, dim=1)
        total += torch.special.entr(q).sum()
    return float(total / n)


def soft_neighborhood_density(model: Any, source_val: Any, target_unlabeled: Any, *, temperature: float = TEMPERATURE,
                              chunk_size: int | None = None, batch_size: int = EVAL_BATCH) -> float:
    """SND of the model's target predictions (higher is better): see the module docstring.

    Uses only ``target_unlabeled`` (at least 2 samples; arrays, tensors or a DataLoader); ``source_val``
    may be None, and when given only its sample shape is checked against the target's."""
    temperature = check_float(temperature, "temperature", 0.0, strict_min=True)
    chunk_size = check_optional_int(chunk_size, "chunk_size", 1)
    _, tgt = outputs.read(model, source_val, target_unlabeled, criterion="snd", need_source=False,
                          batch_size=batch_size)
    return snd_from_probabilities(outputs.probabilities(tgt.logits), temperature, chunk_size)
