"""pytl under torch.distributed: the global MMD of sharded batches, and what the trainer needs for DDP.

Under DistributedDataParallel each rank holds a shard of the source and target batches. The MMD of
a shard is a different statistic from the MMD of the global batch: it sees only the pairs inside
the shard, its median-heuristic bandwidths differ from rank to rank, and the biased estimator's
O(1/n) bias grows with the number of ranks. ``gather_samples`` rebuilds the global batch on every
rank with one all-gather, differentiable with respect to the rank's own rows, so that
``pytl.mmd2(x, y, group=...)`` computes the single-process statistic of the concatenated batch.

Gradient convention (see docs/distributed.md). Every rank computes the same scalar L from the same
gathered rows; in rank r's autograd graph only its own rows are connected, the others arrive as
constants. So the gradient rank r gets for its rows, ∂L/∂(its slice of the gathered batch), already
is ∂L/∂x_r of a single process working on the concatenated batch. The backward of the all-gather
therefore returns the local slice of the incoming gradient and communicates nothing. (The backward
of torch.distributed.nn.functional.all_gather sums the slices over ranks instead, which is right
when each rank computes a different loss from the gathered tensors, as in contrastive learning,
but here would give world_size × the gradient, and would make backward a collective too.)
DDP averages parameter gradients over ranks, so a trainer that wants the gradient of
"mean cross-entropy + λ·global MMD²" must back-propagate world_size·λ·MMD² (TwoStageTrainer does).
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from pytl._checks import check_float, check_int

__all__ = [
    "MMD_SCOPES",
    "CollectiveError",
    "TrainStep",
    "check_global_rows",
    "check_group",
    "check_shard_tensors",
    "collective_device",
    "distributed_loader",
    "exchange_shapes",
    "gather_rows",
    "rows_per_rank",
    "gather_samples",
    "init_from_env",
    "is_initialized",
    "rank",
    "shard",
    "shard_sizes",
    "shutdown",
    "world_size",
]

MMD_SCOPES = ("global", "per_rank")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class CollectiveError(RuntimeError):
    """A collective operation failed: another rank died, or stalled beyond the process-group timeout."""


# ------------------------------------------------------------------------------------ the process group


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank(group: Any = None) -> int:
    """This process's rank in ``group`` (default: all ranks); 0 without torch.distributed."""
    return dist.get_rank(group) if is_initialized() else 0


def world_size(group: Any = None) -> int:
    """The number of ranks in ``group`` (default: all ranks); 1 without torch.distributed."""
    return dist.get_world_size(group) if is_initialized() else 1


def check_group(group: Any, name: str = "group") -> None:
    """A clear error for a group that cannot be used (no process group, wrong type, not a member)."""
    if not is_initialized():
        raise ValueError(f"{name} was given but torch.distributed is not initialised: call "
                         "torch.distributed.init_process_group (torchrun sets up its environment; "
                         f"pytl.distributed.init_from_env() does both) or pass {name}=None for a single process")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"{name} must be a torch.distributed.ProcessGroup (e.g. torch.distributed.group.WORLD), "
                        f"got {type(group).__name__}")
    if dist.get_rank(group) < 0:
        raise ValueError(f"this process (global rank {dist.get_rank()}) is not a member of {name}")


def init_from_env(backend: str | None = None, timeout_s: float = 300.0, device: str | None = None) -> bool:
    """Initialise torch.distributed from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    Returns False (and does nothing) outside torchrun or when already initialised. The backend is
    NCCL for CUDA and gloo otherwise (``device``: "cpu" or "cuda", default CUDA when available);
    with CUDA the process uses the GPU LOCAL_RANK. ``timeout_s`` bounds how long a collective waits
    for a rank that stalls (a rank that dies closes its connections, and the others fail at their
    next collective within seconds); torch's default is 10 to 30 minutes.
    """
    timeout_s = check_float(timeout_s, "timeout_s", 0.0, strict_min=True)
    if is_initialized() or "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend is None:
        backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shutdown(completed: bool = True) -> None:
    """Tear the process group down without leaving a peer mid-collective.

    A rank that destroys its group closes its gloo connections at once; a peer whose last collective is still
    in flight (it finished later, on a loaded machine) then fails inside gloo's I/O thread, where the error
    cannot propagate, and the process aborts ("terminate called without an active exception"). So, after a run
    that ``completed`` on this rank, objects that hold the group (DDP reducers in reference cycles) are
    collected first, and every rank meets at a barrier before any destroys its group. After a failure the
    barrier is skipped: a peer may never reach it."""
    if not is_initialized():
        return
    if completed:
        gc.collect()
        dist.barrier()
    dist.destroy_process_group()


def collective_device(group: Any = None) -> torch.device:
    """Where a collective's tensors must live: the current GPU under NCCL, the CPU otherwise (gloo). For data
    that may sit on either (a memmap's sums, counts, small tables)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def on_collective_device(t: Tensor, group: Any = None) -> Tensor:
    """``t`` where the group's collectives take it (a copy when it must move)."""
    return t.to(collective_device(group))


def _all_gather_small(t: Tensor, group: Any) -> Tensor:
    t = on_collective_device(t.contiguous(), group)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return torch.stack(out).cpu()


# ------------------------------------------------------------------------------------ the global batch


def _gather_uneven(t: Tensor, rows: Sequence[int], group: Any) -> Tensor:
    """Every rank's ``t`` (rows[r] rows on rank r, the same trailing shape), in rank order: padded to the longest,
    one all-gather, trimmed. On ``t``'s device."""
    padded = t.new_zeros((max(rows), *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in rows]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:r] for p, r in zip(parts, rows)])


def gather_rows(t: Tensor, group: Any) -> Tensor:
    """Every rank's rows of ``t`` (any count per rank), in rank order, on every rank: one small exchange of the
    counts, then one all-gather on the group's collective device; returned on ``t``'s device."""
    return _gather_uneven(on_collective_device(t, group), rows_per_rank(t, group), group).to(t.device)


def rows_per_rank(t: Tensor, group: Any) -> list[int]:
    """Every rank's number of rows of ``t``, in rank order (one small all-gather)."""
    return [int(r[0]) for r in _all_gather_small(torch.tensor([t.shape[0]], dtype=torch.int64), group).tolist()]


class _AllGatherRows(torch.autograd.Function):
    """Forward: every rank's rows, in rank order (shards may differ in length: padded, gathered, trimmed).

    Backward: the slice of the gradient that belongs to this rank's rows, without communication
    (every rank computes the same loss, so the local slice is the exact gradient; module docstring)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, rows: list[int], me: int, group: Any) -> Tensor:  # type: ignore[override]
        ctx.start, ctx.rows = sum(rows[:me]), rows[me]
        return _gather_uneven(z, rows, group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        return grad[ctx.start: ctx.start + ctx.rows], None, None, None


def gather_samples(x: Tensor, y: Tensor, group: Any, min_rows: int = 1,
                   sizes: tuple[Sequence[int], Sequence[int]] | None = None) -> tuple[Tensor, Tensor]:
    """The global samples (cat of every rank's x, cat of every rank's y, in rank order) on every rank.

    One all-gather of the (n_r + m_r, d) rows, after a 6-number exchange of the shapes and dtypes
    so that shards of different lengths work and a mismatch raises the same ValueError on every
    rank instead of hanging some of them. A rank may hold no rows; the global samples need
    ``min_rows`` each. Gradients flow to this rank's rows only and equal those of a single process
    on the concatenated batch (module docstring). ``sizes``: the rows of x and of y on every rank,
    when every rank knows them (the trainer does): the exchange is skipped, one collective saved."""
    check_group(group)
    min_rows = check_int(min_rows, "min_rows", minimum=1)
    check_shard_tensors(x, y)
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    world, me = dist.get_world_size(group), dist.get_rank(group)
    if world == 1:
        return x, y  # nothing to gather (mmd2 checks the samples themselves)
    if sizes is not None:
        n, m = list(sizes[0]), list(sizes[1])
        if len(n) != world or len(m) != world or (n[me], m[me]) != (x.shape[0], y.shape[0]):
            raise ValueError(f"sizes {sizes} do not match {world} ranks with ({x.shape[0]}, {y.shape[0]}) rows here")
    else:
        n, m, _ = exchange_shapes(x, y, group)
    check_global_rows(n, m, min_rows)
    return _gather(x, y, n, m, me, group)


def check_shard_tensors(x: Any, y: Any) -> None:
    """A rank's shards of x and y: 2-D tensors (samples, features)."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or t.dim() != 2:
            raise TypeError(f"{name} must be a 2-D torch.Tensor (samples, features)")


def check_global_rows(n: Sequence[int], m: Sequence[int], least: int) -> None:
    """The concatenated samples (n[r], m[r] rows on rank r) hold at least ``least`` rows each; raised alike on
    every rank (every rank has the same table)."""
    if sum(n) < least or sum(m) < least:
        raise ValueError(f"the global samples need at least {least} row(s) each, got x: {sum(n)} (per rank {list(n)}), "
                         f"y: {sum(m)} (per rank {list(m)})")


def gather_with_columns(x: Tensor, y: Tensor, x_cols: Tensor, y_cols: Tensor, group: Any, min_rows: int = 1,
                        sizes: tuple[Sequence[int], Sequence[int]] | None = None
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`gather_samples` of x and y whose rows carry columns of their own (sample weights, labels, class
    probabilities): appended as extra features, so one all-gather moves both. Returns the global x, y and
    their columns (in x's and y's dtype)."""
    d = x.shape[1]
    xa, ya = gather_samples(torch.cat([x, x_cols.to(x.dtype)], 1), torch.cat([y, y_cols.to(y.dtype)], 1), group,
                            min_rows=min_rows, sizes=sizes)
    return xa[:, :d], ya[:, :d], xa[:, d:], ya[:, d:]


def exchange_shapes(x: Tensor, y: Tensor, group: Any, extra: Sequence[int] = ()
                    ) -> tuple[list[int], list[int], list[list[int]]]:
    """Every rank's rows of x and of y, after checking that all ranks agree on the dtype and the width, and
    every rank's ``extra`` integers (flags that must agree, checked by the caller), in one small all-gather."""
    meta = torch.tensor([x.shape[0], y.shape[0], x.shape[1], y.shape[1], _dtype_code(x), _dtype_code(y), *extra],
                        dtype=torch.int64, device=x.device)
    table = _all_gather_small(meta, group).tolist()
    widths = {(r[2], r[3]) for r in table}
    codes = {(r[4], r[5]) for r in table}
    if len(codes) > 1 or any(a != b for a, b in codes):
        seen = [(_dtype_name(r[4]), _dtype_name(r[5])) for r in table]
        raise TypeError(f"x and y must have one floating-point dtype on every rank, got (x, y) per rank: {seen}")
    if len(widths) > 1 or any(a != b for a, b in widths):
        raise ValueError(f"x and y must have the same number of features on every rank, got (x, y) per rank: "
                         f"{[(r[2], r[3]) for r in table]}")
    return [r[0] for r in table], [r[1] for r in table], [r[6:] for r in table]


def _gather(x: Tensor, y: Tensor, n: list[int], m: list[int], me: int, group: Any) -> tuple[Tensor, Tensor]:
    rows = [a + b for a, b in zip(n, m)]
    z = _AllGatherRows.apply(torch.cat([x, y]), rows, me, group)
    xs, ys, start = [], [], 0
    for a, b in zip(n, m):
        xs.append(z[start: start + a])
        ys.append(z[start + a: start + a + b])
        start += a + b
    return torch.cat(xs), torch.cat(ys)


def _dtype_code(t: Tensor) -> int:
    return _DTYPES.index(t.dtype) if t.dtype in _DTYPES else -1


def _dtype_name(code: int) -> str:
    return str(_DTYPES[code]) if 0 <= code < len(_DTYPES) else "not floating-point"


# ------------------------------------------------------------------------------------ for the trainer


def shard_sizes(n: int, world: int) -> list[int]:
    """The lengths of the W parts ``shard`` makes of a batch of n: the first n mod W get one more."""
    q, r = divmod(n, world)
    return [q + 1 if i < r else q for i in range(world)]


def shard(idx: Tensor, me: int, world: int) -> Tensor:
    """This rank's part of a global batch of indices: contiguous, lengths differ by at most one.

    Every rank draws the same global batches (same seeded generator), so a run on W processes
    trains on exactly the batches of a one-process run, and the gathered MMD batch is the
    single-process one, in the same order."""
    return idx.tensor_split(world)[me]


def distributed_loader(loader: DataLoader, me: int, world: int, seed: int, name: str) -> DataLoader:
    """``loader`` with a DistributedSampler, so that each rank reads its own part of the dataset.

    A loader that already has one is returned as is. A map-style dataset with the default sampler
    gets a DistributedSampler (shuffling as before, seeded with ``seed`` so that the ranks agree on
    the permutation); its batch size is per rank, as in any DDP script. Other loaders cannot be
    sharded from outside: a clear error asks for a DistributedSampler."""
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)) or loader.batch_size is None:
        raise ValueError(f"{name} is a DataLoader with a custom sampler or batch sampler "
                         f"({type(loader.sampler).__name__}); under torch.distributed give it a "
                         "torch.utils.data.DistributedSampler so that each rank reads its own shard")
    sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=me,
                                 shuffle=isinstance(loader.sampler, RandomSampler), seed=seed)
    extra = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers} \
        if loader.num_workers > 0 else {}
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, **extra)


class TrainStep(nn.Module):
    """The forward of one training step, as DDP sees it.

    DDP synchronises gradients only for what runs through its own forward, and stage 1 needs
    ``model.embed`` on both domains and ``model.head`` on the source part: this module does both in
    one forward (``(logits, embeddings)``); with no target batch it is ``model(x)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, xt: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if xt is None:
            return self.model(x), None
        z = self.model.embed(torch.cat([x, xt]))  # one pass: BatchNorm sees both domains
        return self.model.head(z[: x.shape[0]]), z


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """TrainStep(model) inside DistributedDataParallel (built anew when the trainable set changes:
    DDP registers the parameters that require grad when it is constructed)."""
    step = TrainStep(model)
    if not any(p.requires_grad for p in model.parameters()):
        return step  # nothing to synchronise (and DDP refuses such a module)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(step, device_ids=ids)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Sequence[Tensor]) -> list[Tensor]:
    """Sums over ranks of 0-dim tensors, in one collective (float64, so that counts stay exact)."""
    if not values:
        return []
    t = torch.stack([v.reshape(()).double() for v in values])
    dist.all_reduce(t)
    return list(t.unbind())


_COLLECTIVE_HINTS = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "broken pipe", "socket",
                     "watchdog", "process group")


def is_collective_failure(exc: BaseException) -> bool:
    """Does ``exc`` come from communication (a dead or stalled peer) rather than from the model?"""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(h in str(exc).lower() for h in _COLLECTIVE_HINTS)
