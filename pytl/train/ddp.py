"""The trainer under torch.distributed: which ranks train together, the DDP-wrapped step, the global
batch's MMD, data sharding and failed collectives (docs/distributed.md)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pytl import distributed as pd

if TYPE_CHECKING:
    from pytl.train.trainer import TwoStageTrainer


def setup_ranks(t: TwoStageTrainer) -> None:
    """This process's rank and the number of ranks that train together (1: no DDP)."""
    use = t.distributed if t.distributed is not None else pd.is_initialized() and pd.world_size() > 1
    if use and not pd.is_initialized():
        raise ValueError("distributed=True but torch.distributed is no longer initialised")
    t._rank, t._world = (pd.rank(), pd.world_size()) if use else (0, 1)


def shard_input(t: TwoStageTrainer, data: Any, name: str, batch_size: int) -> Any:
    """Under DDP: a DataLoader gets a DistributedSampler; arrays are split per batch (batches.py)."""
    if data is None or t._world == 1:
        return data
    if isinstance(data, DataLoader):
        return pd.distributed_loader(data, t._rank, t._world, t.seed, name)
    n = min(batch_size, data[0].shape[0] if isinstance(data, tuple) else data.shape[0])
    if n < 2 * t._world:
        raise ValueError(f"{name}: batches of {n} samples leave some of the {t._world} ranks fewer than 2 "
                         f"samples; use a batch size (and data) of at least {2 * t._world}")
    return data


def step_module(t: TwoStageTrainer, model: nn.Module) -> nn.Module:
    """The forward of a training step: wrapped in DDP under torch.distributed (rebuilt when a
    policy unfreezes parameters, since DDP fixes its parameter set when it is built)."""
    return pd.wrap_ddp(model, t.device) if t._world > 1 else pd.TrainStep(model)


def gather_for_mmd(t: TwoStageTrainer, zs: Tensor, zt: Tensor, ns: int, nt: int) -> tuple[Tensor, Tensor]:
    """With ``mmd_scope="global"`` under DDP, every rank's embeddings (gradients reach this rank's rows);
    otherwise this rank's own. ns, nt: global batch sizes, whose split every rank knows (pd.shard_sizes)."""
    if t._world > 1 and t.mmd_scope == "global":
        zs, zt = pd.gather_samples(zs, zt, dist.group.WORLD, sizes=global_sizes(t, ns, nt))
    return zs, zt


def global_sizes(t: TwoStageTrainer, ns: int, nt: int) -> tuple[list[int], list[int]]:
    """Every rank's rows of a global batch of ns source and nt target rows (the split every rank knows)."""
    return pd.shard_sizes(ns, t._world), pd.shard_sizes(nt, t._world)


def share_of_sum(local: Tensor) -> Tensor:
    """This rank's value over the sum of every rank's (one all-reduce of a scalar)."""
    total = local.detach().clone()
    dist.all_reduce(total)
    return local / total


def check_checkpoint_everywhere(t: TwoStageTrainer) -> None:
    """Checkpoints take a collective (the ranks' RNG states): all ranks or none."""
    if t._world == 1:
        return
    have = pd.gather_objects(t.checkpoint is not None)
    if len(set(have)) > 1:
        raise ValueError(f"checkpoint must be given on every rank or on none (rank 0 alone writes it); "
                         f"given on ranks {[r for r, h in enumerate(have) if h]} of {t._world}")


def raise_if_collective(t: TwoStageTrainer, exc: BaseException, stage: str, epoch: int) -> None:
    """A failed collective becomes a CollectiveError that says what probably happened and how to resume."""
    if t._world == 1 or isinstance(exc, pd.CollectiveError) or not pd.is_collective_failure(exc):
        return
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if t.checkpoint is not None and os.path.isfile(t.checkpoint):
        how = f"the last checkpoint is {t.checkpoint!r}: rerun with resume_from={t.checkpoint!r} to continue"
    else:
        how = "no checkpoint was written (pass checkpoint=PATH to be able to resume)"
    raise pd.CollectiveError(
        f"rank {t._rank} of {t._world}: {stage} epoch {epoch} stopped because a collective operation failed "
        f"({first_line}). Another rank has probably died (its own error is in its log) or stalled for longer "
        f"than the process-group timeout; {how}.") from exc
