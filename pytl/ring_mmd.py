"""The exact MMD² of data sharded over ranks, by a ring exchange of shards: memory O(shard) per rank.

Pool every rank's rows z = (x rows, y rows) and give each a weight row c_i: the biased statistic is
MMD² = Σ_ij (c_i · c_j) k(z_i, z_j) with c = 1/n on x's rows and −1/m on y's. The unbiased one uses two
columns, x: (s, 0) with s² = 1/(n(n−1)), y: (v1, v2) with s·v1 = −1/(nm) and |v|² = 1/(m(m−1)), minus the
diagonal 1/(n−1) + 1/(m−1). The double sum splits into blocks of shard pairs (r, s):

    MMD² = Σ_r B_rr + 2 Σ_{r<s} B_rs.

Rank r computes its diagonal block B_rr (the weighted pair sweep, self-pairs once), then receives the other
shards around the ring, one hop per step, and computes B_rs for s = r−1, ..., r−⌊(W−1)/2⌋; with an even W the
last pair (r, r − W/2) is shared by both of its ranks, each taking half of the other's rows. So each unordered
pair of rows is computed once over all ranks, as in one process (whose sweep also visits self-pairs once).
The rows of the next shard travel while this step's block computes.

Gradient. Each block's sweep (pytl.cross_pair_sums_and_grad) gives the gradient to both shards in the same
pass; the visitor's share travels with it around the ring and goes home in one last hop. The forward thus
holds every rank's exact gradient of the global statistic for its own rows (and, after the one all-reduce
that also gives the value, the bandwidths' and kernel weights'), and the backward multiplies: no collective
in backward, as with ``gather_samples``.

Every rank must call with the same bandwidths (None: the median heuristic of the global samples, computed on
the same subsample as one process, gathered with one all-reduce of a few hundred rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from pytl import distributed as _dist
from pytl._checks import check_choice
from pytl._loader import load_ops
from pytl.bandwidths import (
    as_bandwidth_vector,
    bandwidth_ladder,
    default_weights,
    median_heuristic,
    median_points,
    param_dtype,
)

load_ops()

__all__ = ["global_bandwidths", "global_median", "ring_mmd2"]

@dataclass
class _Plan:
    """What every rank knows before the ring turns: the shard sizes, the global sizes, who is who."""
    ns: list[int]
    ms: list[int]
    me: int
    world: int
    group: Any
    unbiased: bool
    need_grad: bool

    @property
    def n(self) -> int:
        return sum(self.ns)

    @property
    def m(self) -> int:
        return sum(self.ms)

    def weight_rows(self, rank: int, like: Tensor) -> Tensor:
        """The weight rows c_i of rank ``rank``'s pooled shard (x rows, then y rows), float64."""
        n, m = self.n, self.m
        if not self.unbiased:
            xw, yw = [1.0 / n], [-1.0 / m]
        else:
            s = 1.0 / math.sqrt(n * (n - 1))
            v1 = -1.0 / (n * m * s)
            xw, yw = [s, 0.0], [v1, math.sqrt(max(1.0 / (m * (m - 1)) - v1 * v1, 0.0))]
        xr, yr = torch.tensor(xw, dtype=torch.float64), torch.tensor(yw, dtype=torch.float64)
        rows = torch.cat([xr.expand(self.ns[rank], -1), yr.expand(self.ms[rank], -1)])
        return rows.to(like.device, torch.float64)


def ring_mmd2(x: Tensor, y: Tensor, sigmas: Any = None, weights: Any = None, *, group: Any,
              estimator: str = "biased") -> Tensor:
    """The exact MMD² of the global samples cat(x of every rank), cat(y of every rank), each rank holding its
    shards x (n_r, d) and y (m_r, d): the single-process value on every rank, and each rank's gradient to its
    own rows (module docstring). Memory O(shard) per rank; each rank computes about 1/W of the pairs.
    sigmas, weights, estimator: as for :func:`pytl.mmd2` (the same on every rank). Usually reached through
    ``pytl.mmd2(x, y, group=..., exchange="ring")``."""
    unbiased = check_choice(estimator, "estimator", ("biased", "unbiased")) == "unbiased"
    _dist.check_group(group)
    _dist.check_shard_tensors(x, y)
    need_grad = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad
                                                for t in (x, y, sigmas, weights))
    ns, ms, flags = _dist.exchange_shapes(x, y, group, extra=(int(need_grad),))
    if len({f[0] for f in flags}) > 1:
        raise ValueError("pytl.mmd2(group=..., exchange='ring'): x, y, sigmas or weights require grad on some ranks "
                         f"and not on others (per rank: {[bool(f[0]) for f in flags]}); the ring's gradient is a "
                         "collective")
    _dist.check_global_rows(ns, ms, 2 if unbiased else 1)
    plan = _Plan(ns, ms, dist.get_rank(group), dist.get_world_size(group), group, unbiased, need_grad)
    sig, w = global_bandwidths(x, y, sigmas, weights, ns, ms, group)
    return _RingMMD2.apply(x, y, sig, w, plan)


def global_bandwidths(x: Tensor, y: Tensor, sigmas: Any, weights: Any, ns: list[int], ms: list[int],
                      group: Any) -> tuple[Tensor, Tensor]:
    """(sigmas, weights) of the concatenated samples: as given, or the median ladder of the global samples
    (:func:`global_median`) and 1/K each. What pytl.bandwidths.resolve_bandwidths is to one process."""
    sig = bandwidth_ladder(global_median(x, y, ns, ms, group)) if sigmas is None else \
        as_bandwidth_vector(sigmas, "sigmas", x)
    w = default_weights(sig.numel(), param_dtype(x), x.device) if weights is None else \
        as_bandwidth_vector(weights, "weights", x)
    return sig, w


def global_median(x: Tensor, y: Tensor, ns: list[int], ms: list[int], group: Any) -> Tensor:
    """The median heuristic of the global samples, on exactly the subsample one process would take
    (csrc/median_heuristic.cpp: spread rows i·(2^31 − 1 mod n) mod n of each side, in proportion): each rank
    fills in the rows it holds, one all-reduce of (points, d) assembles them."""
    n, m, d, me = sum(ns), sum(ms), x.shape[1], dist.get_rank(group)
    points = median_points(n + m, d)
    if points >= n + m:
        px, py = n, m
    else:
        px = min(n, max(1, round(points * n / (n + m))), points - 1)
        py = points - px
    parts = []
    for sample, sizes, count in ((x, ns, px), (y, ms, py)):
        total = sum(sizes)
        idx = torch.arange(count, dtype=torch.int64) if count >= total else \
            (torch.arange(count, dtype=torch.int64) * ((2**31 - 1) % total)) % total
        start = sum(sizes[:me])
        mine = (idx >= start) & (idx < start + sizes[me])
        rows = torch.zeros(count, d, dtype=torch.float64, device=sample.device)
        rows[mine.to(sample.device)] = sample.detach()[(idx[mine] - start).to(sample.device)].double()
        parts.append(rows)
    pooled = torch.cat(parts)
    dist.all_reduce(pooled, group=group)  # each row comes from one rank, zeros from the others: exact
    return median_heuristic(pooled[:px].to(x.dtype), pooled[px:].to(x.dtype))


class _RingMMD2(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, sig: Tensor, w: Tensor, plan: _Plan) -> Tensor:  # type: ignore[override]
        terms, gsig, gz = _ring_sweep(x.detach(), y.detach(), sig.detach(), w.detach(), plan)
        k = sig.numel()
        reduced = torch.cat([terms, gsig])
        dist.all_reduce(reduced, group=plan.group)
        terms, gsig = reduced[:k], reduced[k:]
        if plan.unbiased:
            terms = terms - (1.0 / (plan.n - 1) + 1.0 / (plan.m - 1))
        value = (terms * w.detach().double()).sum()
        if plan.need_grad:
            assert gz is not None
            n_r = x.shape[0]
            ctx.save_for_backward(gz[:n_r].to(x.dtype), gz[n_r:].to(y.dtype), gsig.to(sig.dtype),
                                  terms.to(w.dtype))
        return value.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        gx, gy, gsig, terms = ctx.saved_tensors
        return gx * grad.to(gx.dtype), gy * grad.to(gy.dtype), gsig * grad.to(gsig.dtype), \
            terms * grad.to(terms.dtype), None


def _ring_sweep(x: Tensor, y: Tensor, sig: Tensor, w: Tensor, plan: _Plan) -> tuple[Tensor, Tensor, Tensor | None]:
    """This rank's share: per-bandwidth block sums (K,) and their bandwidth gradient (K,) (float64, before the
    all-reduce), and with need_grad the gradient to its pooled rows cat(x, y) (float64)."""
    me, world = plan.me, plan.world
    z = torch.cat([x, y])
    cz = plan.weight_rows(me, z)
    rows_of = [a + b for a, b in zip(plan.ns, plan.ms)]
    steps = world // 2
    nxt, prv = (me + 1) % world, (me - 1) % world
    # the first visitor's rows travel while the diagonal block computes
    visitor = z.new_empty((rows_of[(me - 1) % world], z.shape[1])) if steps else None
    pending = _start_exchange(z, nxt, visitor, prv, plan.group) if steps else []
    terms, gsig, gz = _diagonal_block(x, y, cz, sig, w, plan)
    carried = None  # the gradient of the visitor handled last step, which travels on with it
    s = me
    for t in range(1, steps + 1):
        _wait(pending)
        s = (me - t) % world
        current = visitor
        if t < steps:  # forward this visitor's rows while computing on them
            visitor = z.new_empty((rows_of[(me - t - 1) % world], z.shape[1]))
            pending = _start_exchange(current, nxt, visitor, prv, plan.group)
        p_rows, v_rows = slice(None), slice(None)
        if 2 * t == world:  # the pair (me, s) is shared with rank s: each computes half of it
            if me < s:
                v_rows = slice(0, rows_of[s] // 2)
            else:
                p_rows = slice(rows_of[me] // 2, None)
        cv = plan.weight_rows(s, z)
        b_terms, b_gsig, gp, gv = _cross_block(z[p_rows], current[v_rows], cz[p_rows], cv[v_rows], sig, w, plan)
        terms, gsig = terms + 2 * b_terms, gsig + 2 * b_gsig
        if gz is not None:
            gz[p_rows] += 2 * gp
            acc = torch.zeros(current.shape, dtype=torch.float64, device=z.device)
            acc[v_rows] += 2 * gv
            if t > 1:  # what the previous rank accumulated for this visitor on its step t - 1
                incoming = torch.empty_like(acc)
                _wait(_start_exchange(carried, nxt, incoming, prv, plan.group, _GRADIENTS))
                acc += incoming
            carried = acc
    if gz is not None and steps:  # each visitor's gradient goes home; this rank's own comes back
        home = torch.empty_like(gz)
        _wait(_start_exchange(carried, s, home, (me + steps) % world, plan.group, _GRADIENTS))
        gz += home
    return terms, gsig, gz


_ROWS, _GRADIENTS = 1, 2  # message tags: a shard's rows and its gradient share one peer pair


def _start_exchange(send: Tensor, to: int, recv: Tensor, source: int, group: Any, tag: int = _ROWS) -> list[Any]:
    """Start sending ``send`` to rank ``to`` and receiving ``recv`` from rank ``source`` (ranks of group)."""
    ops = []
    if send.numel():
        ops.append(dist.P2POp(dist.isend, send.contiguous(), dist.get_global_rank(group, to), group, tag))
    if recv.numel():
        ops.append(dist.P2POp(dist.irecv, recv, dist.get_global_rank(group, source), group, tag))
    return dist.batch_isend_irecv(ops) if ops else []


def _wait(requests: list[Any]) -> None:
    for req in requests:
        req.wait()


def _diagonal_block(x: Tensor, y: Tensor, cz: Tensor, sig: Tensor, w: Tensor, plan: _Plan
                    ) -> tuple[Tensor, Tensor, Tensor | None]:
    """B_rr: the pairs inside this rank's shard, each unordered pair once (the weighted pair sweep over x_r and
    y_r with unit weights, its three blocks combined with the weight rows' products). Returns its per-bandwidth
    sums, their bandwidth gradient, and with need_grad the gradient to cat(x, y) (float64)."""
    k = sig.numel()
    z = torch.cat([x, y])
    zero = torch.zeros(k, dtype=torch.float64, device=z.device)
    grad = torch.zeros(z.shape, dtype=torch.float64, device=z.device) if plan.need_grad else None
    if z.shape[0] <= 1:  # no rows, or one row and its own pair: k = 1 per bandwidth, no gradient
        return (zero + (cz[0] @ cz[0]) if z.shape[0] else zero), zero, grad
    n_r = x.shape[0]
    if n_r and y.shape[0]:
        p, q, cp, cq = x, y, cz[0], cz[n_r]  # every row of a side has the same weight row
    else:  # one side only: its two halves, every pair weighted alike
        p, q, cp, cq = z[: z.shape[0] // 2], z[z.shape[0] // 2:], cz[0], cz[0]
    pair = torch.stack([cp @ cp, cq @ cq, 2 * (cp @ cq)])  # x-x, y-y, and x-y counted both ways
    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    ones_p = torch.ones(p.shape[0], 1, dtype=dtype, device=p.device)
    ones_q = torch.ones(q.shape[0], 1, dtype=dtype, device=p.device)
    if plan.need_grad:
        coefs = (pair.unsqueeze(1) * w.double().unsqueeze(0)).to(dtype)
        sums, gp, gq, _, _, gs = torch.ops.pytl.weighted_pair_sums_and_grad(coefs, p, q, ones_p, ones_q, sig)
        grad = torch.cat([gp, gq]).double()
        gsig = gs.double()
    else:
        sums, gsig = torch.ops.pytl.weighted_pair_sums(p, q, ones_p, ones_q, sig), zero
    return (pair.unsqueeze(1) * sums.double()).sum(0), gsig, grad


def _cross_block(p: Tensor, q: Tensor, cp: Tensor, cq: Tensor, sig: Tensor, w: Tensor, plan: _Plan
                 ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """B(p, q) = Σ_ij (c_i · c_j) k(p_i, q_j) per bandwidth, its bandwidth gradient, and with need_grad the
    gradients of Σ_k w_k B_k to p's and q's rows (float64)."""
    zero = torch.zeros(sig.numel(), dtype=torch.float64, device=p.device)
    if p.shape[0] == 0 or q.shape[0] == 0:
        if not plan.need_grad:
            return zero, zero, None, None
        return zero, zero, torch.zeros(p.shape, dtype=torch.float64, device=p.device), \
            torch.zeros(q.shape, dtype=torch.float64, device=p.device)
    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    cp, cq = cp.to(dtype), cq.to(dtype)
    if not plan.need_grad:
        return torch.ops.pytl.cross_pair_sums(p, q, cp, cq, sig).double(), zero, None, None
    sums, gp, gq, _, _, gs = torch.ops.pytl.cross_pair_sums_and_grad(w.to(dtype), p, q, cp, cq, sig)
    return sums.double(), gs.double(), gp.double(), gq.double()
