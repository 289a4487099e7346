"""Layer transferability (Yosinski et al., NeurIPS 2014): for k = 0..L copy the first k layers of a
source-trained network into a fresh one and train the rest on the target labels, once with the
copied layers frozen and once fine-tuned. k = 0 copies nothing: it is the from-scratch baseline."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pytl import _inputs as inp
from pytl._checks import check_int
from pytl.data import make_domain_shift
from pytl.experiments.curve_args import check_int_grid, check_model_arg, check_seeds, log, model_for
from pytl.experiments.splits import Splits, as_splits, data_for
from pytl.experiments.tables import CurveRow, CurveTable
from pytl.freezing import FreezeFirst, blocks
from pytl.models import Standardize, default_model
from pytl.train import TwoStageTrainer

__all__ = ["LAYER_SERIES", "layer_transferability", "transfer_blocks"]

LAYER_SERIES = ("frozen", "fine-tuned")


def layer_transferability(
    layers: Sequence[int] | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    data: Any = None,
    model: Any = None,
    hidden_sizes: Sequence[int] = (64, 64, 64, 64),
    source_epochs: int = 100,
    target_epochs: int = 50,
    lr: float = 1e-3,
    batch_size: int = 64,
    device: Any = "cpu",
    num_threads: int | None = 1,
    verbose: bool = False,
) -> CurveTable:
    """Yosinski et al. (NeurIPS 2014): how transferable is each layer?

    Per seed, a network of L layers below its head (an MLPEncoder of ``hidden_sizes`` + a linear head
    by default; ``freezing.blocks`` defines the layers of your own model) is trained on the source
    labels for ``source_epochs``. Then for each k in ``layers`` (default 0..L) its first k layers are
    copied into a fresh copy of the same initial network, whose other layers and head keep their random
    initial weights, and the network is trained on the target labels for ``target_epochs``: series
    "frozen" with the k copied layers frozen (``FreezeFirst(k)``, AnB in the paper), "fine-tuned" with
    everything trained (AnB+). At k = 0 nothing is copied: both series are the same from-scratch run,
    the baseline.

    data: None (``make_domain_shift(seed)``: 50 target labels, target rotated 30° and shifted by (3, 3)),
    a DomainShift-like object (same for every seed) or ``data(seed)``. model: None, an nn.Module with
    ``embed``/``head`` or any module ``freezing.blocks`` splits (copied, never trained), or ``model(seed)``.
    The remaining options are the trainer's (Adam, lr, batch size, device, CPU threads).
    """
    t_start = time.perf_counter()
    seeds = check_seeds(seeds)
    check_model_arg(model)
    check_int(source_epochs, "source_epochs", 0)
    check_int(target_epochs, "target_epochs", 1)
    # the trainer's own checks of every other setting, once, before anything trains
    TwoStageTrainer(None, lambda_mmd=0.0, align_epochs=source_epochs, finetune_epochs=target_epochs, lr=lr,
                    batch_size=batch_size, device=device, num_threads=num_threads, progress=False)
    if model is None:
        default_model(2, 2, hidden_sizes)  # checks hidden_sizes (TypeError/ValueError naming it)

    splits: dict[int, Splits] = {}
    nets: dict[int, nn.Module] = {}
    depth = None
    for s in seeds:
        d = make_domain_shift(s) if data is None else data_for(data, s)
        sp = as_splits(d, f"data (seed {s})" if callable(data) else "data")
        if sp.target_labeled is None:
            raise ValueError("data has no target_labeled samples: the target network trains on them")
        classes = sp.num_classes()
        if sp.target_labeled[0].shape[0] < classes:
            raise ValueError(f"data has {sp.target_labeled[0].shape[0]} labelled target samples, fewer than the "
                             f"{classes} classes")
        net = _initial_network(model, sp, classes, hidden_sizes, s)
        L = len(blocks(net)) - 1
        if L < 1:
            raise ValueError("the model has no layer below its head to transfer (freezing.blocks finds "
                             f"{L + 1} block)")
        if depth is not None and L != depth:
            raise ValueError(f"model(seed) must give the same depth for every seed, got {depth} and {L} layers")
        depth = L
        splits[s], nets[s] = sp, net
    assert depth is not None
    if layers is None:
        ks = tuple(range(depth + 1))
    else:
        ks = check_int_grid(layers, "layers", 0)
        if ks[-1] > depth:
            raise ValueError(f"layers must lie in 0..{depth} (the network has L = {depth} layers below its head), "
                             f"got {ks[-1]}")

    values: dict[tuple[str, int], list[float]] = {(m, k): [] for m in LAYER_SERIES for k in ks}
    train = dict(lambda_mmd=0.0, lr=lr, batch_size=batch_size, device=device, num_threads=num_threads, progress=False)
    for s in seeds:
        t0 = time.perf_counter()
        sp, base = splits[s], nets[s]
        src = TwoStageTrainer(copy.deepcopy(base), align_epochs=source_epochs, seed=s, **train)
        src.align(sp.source)
        line = []
        for k in ks:
            net = copy.deepcopy(base)
            transfer_blocks(src.model, net, k)
            for mode in LAYER_SERIES:
                if k == 0 and mode == "fine-tuned":  # nothing copied, nothing frozen: the same scratch run
                    values[(mode, k)].append(values[("frozen", 0)][-1])
                    continue
                policy = FreezeFirst(k) if mode == "frozen" and k > 0 else None
                tr = TwoStageTrainer(copy.deepcopy(net), finetune_epochs=target_epochs,
                                     finetune_policy=policy, seed=s, **train)
                tr.finetune(sp.target_labeled)
                values[(mode, k)].append(tr.score(*sp.target_test))
            line.append(f"k={k} {100 * values[('frozen', k)][-1]:.1f}/{100 * values[('fine-tuned', k)][-1]:.1f}%")
        log(verbose, f"seed {s} ({time.perf_counter() - t0:.1f}s), frozen/fine-tuned: " + "  ".join(line))

    rows = tuple(CurveRow(k, m, tuple(values[(m, k)]), seeds) for k in ks for m in LAYER_SERIES)
    notes = (f"k = 0 copies nothing: the from-scratch baseline; L = {depth} layers below the head; source "
             f"{source_epochs} epochs, target {target_epochs} epochs on the target labels",)
    settings = dict(layers=ks, seeds=seeds, depth=depth, hidden_sizes=tuple(hidden_sizes) if model is None else None,
                    source_epochs=source_epochs, target_epochs=target_epochs, lr=lr, batch_size=batch_size,
                    data="make_domain_shift(seed)" if data is None else "user data")
    return CurveTable("layer_transferability", "k", "layers copied (k)", rows, notes=notes, config=settings,
                      seconds=time.perf_counter() - t_start)


def _initial_network(model: Any, sp: Splits, classes: int, hidden_sizes: Sequence[int], seed: int) -> nn.Module:
    """One seed's initial network: a copy of the model argument, or the default MLP seeded with ``seed``."""
    if model is not None:
        return copy.deepcopy(model_for(model, seed))
    stats = Standardize.fit(sp.source[0], sp.target_unlabeled)
    return default_model(inp.prod(tuple(sp.source[0].shape[1:])), classes, tuple(hidden_sizes), standardize=stats,
                         seed=seed)


def transfer_blocks(source: nn.Module, target: nn.Module, k: int) -> None:
    """Copy the parameters and buffers of the first k blocks (pytl.freezing.blocks) of source into target."""
    if k == 0:
        return
    names = {id(m): n for n, m in target.named_modules()}
    src_state = source.state_dict()
    tgt_state = target.state_dict()
    keys: set[str] = set()
    for b in blocks(target)[:k]:
        keys.update(b.params)
        for m in b.modules:
            prefix = names[id(m)]
            keys.update(key for key in tgt_state if prefix and key.startswith(prefix + "."))
    with torch.no_grad():
        for key in keys:
            tgt_state[key].copy_(src_state[key])
