"""The trainer under torch.distributed: which ranks train together, the DDP-wrapped step, the global
batch's MMD, data sharding and failed collectives (docs/distributed.md)."""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pytl import distributed as pd

if TYPE_CHECKING:
    from pytl.train.state import RunState


def setup_ranks(run: RunState) -> None:
    """This process's rank and the number of ranks that train together (1: no DDP)."""
    wanted = run.settings.distributed
    use = wanted if wanted is not None else pd.is_initialized() and pd.world_size() > 1
    if use and not pd.is_initialized():
        raise ValueError("distributed=True but torch.distributed is no longer initialised")
    run.rank, run.world = (pd.rank(), pd.world_size()) if use else (0, 1)


def shard_input(run: RunState, data: Any, name: str, batch_size: int) -> Any:
    """Under DDP: a DataLoader gets a DistributedSampler; arrays are split per batch (batches.py)."""
    if data is None or run.world == 1:
        return data
    if isinstance(data, DataLoader):
        return pd.distributed_loader(data, run.rank, run.world, run.settings.seed, name)
    n = min(batch_size, data[0].shape[0] if isinstance(data, tuple) else data.shape[0])
    if n < 2 * run.world:
        raise ValueError(f"{name}: batches of {n} samples leave some of the {run.world} ranks fewer than 2 "
                         f"samples; use a batch size (and data) of at least {2 * run.world}")
    return data


def step_module(run: RunState, model: nn.Module) -> nn.Module:
    """The forward of a training step: wrapped in DDP under torch.distributed (rebuilt when a
    policy unfreezes parameters, since DDP fixes its parameter set when it is built)."""
    return pd.wrap_ddp(model, run.device) if run.world > 1 else pd.TrainStep(model)


def gather_for_mmd(run: RunState, zs: Tensor, zt: Tensor, ns: int, nt: int) -> tuple[Tensor, Tensor]:
    """With ``mmd_scope="global"`` under DDP, every rank's embeddings (gradients reach this rank's rows);
    otherwise this rank's own. ns, nt: global batch sizes, whose split every rank knows (pd.shard_sizes)."""
    if run.world > 1 and run.settings.mmd_scope == "global":
        zs, zt = pd.gather_samples(zs, zt, dist.group.WORLD, sizes=global_sizes(run, ns, nt))
    return zs, zt


def global_sizes(run: RunState, ns: int, nt: int) -> tuple[list[int], list[int]]:
    """Every rank's rows of a global batch of ns source and nt target rows (the split every rank knows)."""
    return pd.shard_sizes(ns, run.world), pd.shard_sizes(nt, run.world)


def share_of_sum(local: Tensor) -> Tensor:
    """This rank's value over the sum of every rank's (one all-reduce of a scalar)."""
    total = local.detach().clone()
    dist.all_reduce(total)
    return local / total


def check_checkpoint_everywhere(run: RunState) -> None:
    """Checkpoints take a collective (the ranks' RNG states): all ranks or none."""
    if run.world == 1:
        return
    have = pd.gather_objects(run.settings.checkpoint is not None)
    if len(set(have)) > 1:
        raise ValueError(f"checkpoint must be given on every rank or on none (rank 0 alone writes it); "
                         f"given on ranks {[r for r, h in enumerate(have) if h]} of {run.world}")


def raise_if_collective(run: RunState, exc: BaseException, stage: str, epoch: int) -> None:
    """A failed collective becomes a CollectiveError that says what probably happened and how to resume."""
    if run.world == 1 or isinstance(exc, pd.CollectiveError) or not pd.is_collective_failure(exc):
        return
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    path = run.settings.checkpoint_path
    if path is not None and os.path.isfile(path):
        how = f"the last checkpoint is {path!r}: rerun with resume_from={path!r} to continue"
    else:
        how = "no checkpoint was written (pass checkpoint=PATH to be able to resume)"
    raise pd.CollectiveError(
        f"rank {run.rank} of {run.world}: {stage} epoch {epoch} stopped because a collective operation failed "
        f"({first_line}). Another rank has probably died (its own error is in its log) or stalled for longer "
        f"than the process-group timeout; {how}.") from exc


def release(run: RunState) -> None:
    """At the end of a stage under DDP, collect its DDP wrapper now. Its reducer keeps a reference to the
    process group, and reference cycles keep the wrapper alive until the cyclic collector runs, possibly at
    interpreter exit, after ``destroy_process_group``: gloo's threads then free pending work during
    finalisation, and the process can abort ("terminate called without an active exception", seen in
    about 1 of 50 DDP test runs). Suspected, not proven: the abort is rare."""
    if run.world > 1:
        gc.collect()
