"""pytl under torch.distributed (gloo, CPU processes): the global MMD, DDP training, failures, resume.

Each multi-process test launches its ranks as plain subprocesses of this file's ``_worker`` (as
torchrun would: one process per rank, a shared rendezvous), saves what every rank computed, and
compares it here with an independent single-process computation.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

import pytl
from pytl import distributed as pd
from pytl.cli import main
from pytl.data import make_domain_shift
from pytl.models import Standardize, default_model
from pytl.train import TwoStageTrainer
from pytl.train import loop as train_loop
from pytl.train import alignments as train_alignments
from pytl.train.prepare import prepare
from pytl.testing import mmd2_reference64

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TIMEOUT_S = 20  # the process-group timeout in the workers: a stalled collective fails after this

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


# ---------------------------------------------------------------------------------- the launcher


def launch(scenario: str, world: int, out: Path, timeout: float = 180.0):
    """Start ``world`` ranks of ``_worker(scenario)``; return their (returncode, stdout+stderr, seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    rdzv = out / f"rdzv-{scenario}-{time.monotonic_ns()}"
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_distributed as t; t._worker()"
    procs = []
    for r in range(world):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r),
               "PYTL_TEST_RDZV": f"file://{rdzv}", "PYTL_TEST_OUT": str(out), "PYTL_TEST_SCENARIO": scenario,
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(out),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    t0 = time.monotonic()
    results = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"{scenario}: rank {procs.index(p)} still running after {timeout} s") from None
        results.append((p.returncode, text, time.monotonic() - t0))
    return results


def ok(results):
    for r, (code, text, _) in enumerate(results):
        assert code == 0, f"rank {r} exited with {code}:\n{text[-3000:]}"


def _worker() -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=os.environ["PYTL_TEST_RDZV"], rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    out = Path(os.environ["PYTL_TEST_OUT"])
    result = SCENARIOS[os.environ["PYTL_TEST_SCENARIO"]](rank, world, out)
    torch.save(result, out / f"{os.environ['PYTL_TEST_SCENARIO']}-rank{rank}.pt")
    # every rank done with its collectives before any tears gloo down (pd.shutdown: on a loaded machine a rank
    # that destroys its group while the other still exchanges can abort, "terminate called without an active
    # exception", seen 3 times in 24 runs of three DDP tests while other jobs ran)
    pd.shutdown()


def load(out: Path, scenario: str, world: int) -> list:
    return [torch.load(out / f"{scenario}-rank{r}.pt", weights_only=False) for r in range(world)]


# ---------------------------------------------------------------------------------- the global MMD

# (n, m, d, sigmas, estimator, shards of x per rank, shards of y per rank); shards None: as even as possible
MMD_CASES = [
    (24, 18, 3, None, "biased", None, None),
    (24, 18, 3, [0.5, 2.0], "unbiased", None, None),
    (17, 23, 4, None, "unbiased", "uneven", "uneven"),
    (13, 9, 2, [0.7], "biased", "empty", "uneven"),       # one rank holds no x at all
    (700, 500, 3, None, "biased", "uneven", None),         # > 1024 pooled points: the subsampled median
    (30, 30, 5, "tensor", "biased", None, "uneven"),       # learnable bandwidths and weights
]


def case_data(i):
    n, m, d = MMD_CASES[i][:3]
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) * 1.2 + 0.4
    return x, y


def shard_sizes(total: int, world: int, kind) -> list[int]:
    if kind is None:
        return [len(c) for c in torch.arange(total).tensor_split(world)]
    if kind == "empty":
        return [0] + [len(c) for c in torch.arange(total).tensor_split(world - 1)]
    sizes = [1 + 2 * r for r in range(world)]  # 1, 3, 5, ...: deliberately unequal
    sizes[-1] = total - sum(sizes[:-1])
    return sizes


def sigma_args(spec, dtype=torch.float64):
    if spec == "tensor":
        return (torch.tensor([0.6, 1.5], dtype=dtype, requires_grad=True),
                torch.tensor([0.3, 0.7], dtype=dtype, requires_grad=True))
    return spec, None


def _scenario_mmd(rank, world, out):
    results = []
    for i, (n, m, d, spec, estimator, kx, ky) in enumerate(MMD_CASES):
        x, y = case_data(i)
        sx, sy = shard_sizes(n, world, kx), shard_sizes(m, world, ky)
        xr = x.split(sx)[rank].clone().requires_grad_()
        yr = y.split(sy)[rank].clone().requires_grad_()
        sig, w = sigma_args(spec)
        value = pytl.mmd2(xr, yr, sig, w, estimator=estimator, group=dist.group.WORLD)
        value.backward()
        extra = (sig.grad, w.grad) if spec == "tensor" else None
        results.append({"value": value.detach(), "gx": xr.grad, "gy": yr.grad, "sizes": (sx, sy), "param_grads": extra,
                        "local": float(pytl.mmd2(xr.detach(), yr.detach(), _detached(sig), _detached(w),
                                                 estimator=estimator)) if min(sx[rank], sy[rank]) >= 2 else None,
                        "ring": _ring_case(xr.detach(), yr.detach(), spec, estimator)})
    # the nn.Module twin, and errors that every rank must raise alike (no rank left hanging)
    x, y = case_data(0)
    loss = pytl.MMDLoss(distributed=True)(x.tensor_split(world)[rank], y.tensor_split(world)[rank])
    errors = {}
    for key, call in {
        "features": lambda: pytl.mmd2(torch.randn(4, 3 + rank, dtype=torch.float64), torch.randn(4, 3 + rank,
                                      dtype=torch.float64), group=dist.group.WORLD),
        "dtype": lambda: pytl.mmd2(torch.randn(4, 3, dtype=torch.float64 if rank else torch.float32),
                                   torch.randn(4, 3, dtype=torch.float64 if rank else torch.float32),
                                   group=dist.group.WORLD),
        "too_few": lambda: pytl.mmd2(torch.randn(1 if rank == 0 else 0, 3), torch.randn(3, 3), estimator="unbiased",
                                     group=dist.group.WORLD),
        "group_type": lambda: pytl.mmd2(x, y, group="world"),
    }.items():
        try:
            call()
            errors[key] = None
        except (ValueError, TypeError) as e:
            errors[key] = f"{type(e).__name__}: {e}"
    return {"cases": results, "module_loss": loss.detach(), "errors": errors}


def _ring_case(xr, yr, spec, estimator):
    """The same case by exchange="ring": value and gradients (and the statistic without autograd, which takes
    the sums-only sweeps)."""
    xr, yr = xr.clone().requires_grad_(), yr.clone().requires_grad_()
    sig, w = sigma_args(spec)
    value = pytl.mmd2(xr, yr, sig, w, estimator=estimator, group=dist.group.WORLD, exchange="ring")
    value.backward()
    with torch.no_grad():
        plain = pytl.mmd2(xr, yr, _detached(sig), _detached(w), estimator=estimator, group=dist.group.WORLD,
                          exchange="ring")
    return {"value": value.detach(), "plain": plain, "gx": xr.grad, "gy": yr.grad,
            "param_grads": (sig.grad, w.grad) if spec == "tensor" else None}


def _detached(v):
    return v.detach() if isinstance(v, torch.Tensor) else v


@pytest.fixture(scope="module")
def mmd_runs(tmp_path_factory):
    """The "mmd" scenario on 2 and 3 ranks, each launched once for the tests below."""
    cache = {}

    def get(world):
        if world not in cache:
            out = tmp_path_factory.mktemp(f"mmd{world}")
            ok(launch("mmd", world, out))
            cache[world] = load(out, "mmd", world)
        return cache[world]

    return get


def reference(i):
    """Single process, the concatenated batch: value and gradients (the independent reference)."""
    _, _, _, spec, estimator, _, _ = MMD_CASES[i]
    x, y = case_data(i)
    x.requires_grad_()
    y.requires_grad_()
    sig, w = sigma_args(spec)
    value = pytl.mmd2(x, y, sig, w, estimator=estimator)
    value.backward()
    return value.detach(), x.grad, y.grad, ((sig.grad, w.grad) if spec == "tensor" else None)


def close(a, b, rtol=1e-12):
    """Max-norm relative agreement (tight: float64 and one fused op on the same global batch)."""
    if a is None or b is None or a.shape != b.shape:
        return False
    if b.numel() == 0:
        return True
    scale = max(float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) <= rtol * scale


@pytest.mark.parametrize("world", [2, 3])
def test_global_mmd_value_and_gradients_equal_single_process(world, mmd_runs):
    ranks = mmd_runs(world)
    for i in range(len(MMD_CASES)):
        value, gx, gy, pgrads = reference(i)
        sx, sy = ranks[0]["cases"][i]["sizes"]
        for r in range(world):
            got = ranks[r]["cases"][i]
            # the same global value on every rank, equal to the single-process statistic
            assert close(got["value"], value), (i, r, float(got["value"]), float(value))
            # each rank's gradient is the single-process gradient of its own rows (not world_size x it)
            assert close(got["gx"], gx.split(sx)[r]) and close(got["gy"], gy.split(sy)[r]), (i, r)
            if pgrads is not None:  # bandwidths and weights: every rank gets the full gradient
                assert close(got["param_grads"][0], pgrads[0]) and close(got["param_grads"][1], pgrads[1]), (i, r)
        # the gathered statistic is not what a rank would compute alone (else the test proves nothing)
        locals_ = [ranks[r]["cases"][i]["local"] for r in range(world) if ranks[r]["cases"][i]["local"] is not None]
        assert locals_ and all(abs(v - float(value)) > 1e-6 * abs(float(value)) for v in locals_), i
    x, y = case_data(0)
    assert all(close(rk["module_loss"], pytl.mmd2(x, y)) for rk in ranks)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ring_exact_mmd_equals_single_process(world, mmd_runs):
    """exchange="ring": 2 ranks share their one pair of shards by halves, 3 take one full step each, 4 both;
    uneven shards, a rank without x, both estimators, the subsampled median, learnable bandwidths."""
    ranks = mmd_runs(world)
    for i in range(len(MMD_CASES)):
        value, gx, gy, pgrads = reference(i)
        sx, sy = ranks[0]["cases"][i]["sizes"]
        for r in range(world):
            got = ranks[r]["cases"][i]["ring"]
            assert close(got["value"], value) and close(got["plain"], value), (i, r, float(got["value"]), float(value))
            assert close(got["gx"], gx.split(sx)[r]) and close(got["gy"], gy.split(sy)[r]), (i, r)
            if pgrads is not None:
                assert close(got["param_grads"][0], pgrads[0]) and close(got["param_grads"][1], pgrads[1]), (i, r)


SCALABLE_SEED, BLOCK_SIZE = 5, 12


def scalable_data(scale=1):
    """x (300, 3), y (260, 3) in uneven shards over 3 ranks, one without y; scale=10: ten times the rows (the rff
    test's hashed chunks need a few rows each)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300 * scale, 3, generator=g, dtype=torch.float64)
    y = torch.randn(260 * scale, 3, generator=g, dtype=torch.float64) * 1.3 + 0.2
    return x, y, [40 * scale, 110 * scale, 150 * scale], [130 * scale, 0, 130 * scale]


def _scenario_scalable(rank, world, out):
    x, y, sx, sy = scalable_data()
    results = {}
    for key, kwargs in {"rff_biased": dict(method="rff", num_features=64),
                        "rff_unbiased": dict(method="rff", num_features=64, estimator="unbiased"),
                        "block": dict(method="block", block_size=BLOCK_SIZE, estimator="unbiased")}.items():
        xr = x.split(sx)[rank].clone().requires_grad_()
        yr = y.split(sy)[rank].clone().requires_grad_()
        value = pytl.mmd2(xr, yr, seed=SCALABLE_SEED, group=dist.group.WORLD, **kwargs)
        value.backward()
        results[key] = (value.detach(), xr.grad, yr.grad)
    try:
        pytl.mmd2(x, y, method="auto", group=dist.group.WORLD)
        results["auto"] = None
    except ValueError as e:
        results["auto"] = str(e)
    # the tests of the concatenated samples: rff on tensors and on a memmap of the same shard, block
    x, y, sx, sy = scalable_data(10)
    xr, yr = x.split(sx)[rank], y.split(sy)[rank]
    np.save(out / f"x{rank}.npy", xr.numpy())
    memmap = np.load(out / f"x{rank}.npy", mmap_mode="r")
    group = dist.group.WORLD
    results["test_rff"] = pytl.mmd_test(xr, yr, method="rff", num_features=32, num_permutations=200,
                                        seed=SCALABLE_SEED, group=group)
    results["test_rff_memmap"] = pytl.mmd_test(memmap, yr, method="rff", num_features=32, num_permutations=200,
                                               seed=SCALABLE_SEED, group=group)
    results["test_block"] = pytl.mmd_test(xr, yr, method="block", estimator="unbiased", block_size=BLOCK_SIZE,
                                          seed=SCALABLE_SEED, group=group)
    try:
        pytl.mmd_test(xr, yr, group=group, method="exact")
        results["test_exact"] = None
    except ValueError as e:
        results["test_exact"] = str(e)
    bad = xr.clone()
    if rank == 1:
        bad[3, 0] = float("nan")  # only rank 1 sees it: every rank must raise, none wait for rank 1
    try:
        pytl.mmd_test(bad, yr, group=group, method="block", estimator="unbiased")
        results["nan_error"] = None
    except ValueError as e:
        results["nan_error"] = str(e)
    return results


def block_reference(x, y, sx, sy):
    """One process, the ranks' blocks rebuilt by hand: rows per block from the global layout, each rank's
    shards in the order of a generator seeded seed + rank, the mean of every rank's block statistics."""
    n_blocks = min(300, 260) // BLOCK_SIZE
    bx, by = 300 // n_blocks, 260 // n_blocks
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    stats = []
    for r, (xr, yr) in enumerate(zip(x.split(sx), y.split(sy))):
        count = min(xr.shape[0] // bx, yr.shape[0] // by)
        if count == 0:
            continue
        g = torch.Generator().manual_seed(SCALABLE_SEED + r)
        px = torch.randperm(xr.shape[0], generator=g)[: count * bx].view(count, bx)
        py = torch.randperm(yr.shape[0], generator=g)[: count * by].view(count, by)
        sig = pytl.bandwidth_ladder(pytl.median_heuristic(x.detach(), y.detach()))
        stats += [mmd2_reference64(xr[px[j]], yr[py[j]], sig, unbiased=True) for j in range(count)]
    value = torch.stack(stats).mean()
    value.backward()
    return value.detach(), x.grad, y.grad


def test_rff_and_block_of_sharded_samples_by_one_all_reduce(scalable_run):
    """rff: the single-process statistic and gradients of the concatenated samples (the same features); block:
    the mean of the ranks' own blocks, against a float64 pairwise reference rebuilt in one process."""
    ranks = scalable_run
    x, y, sx, sy = scalable_data()
    for key, estimator in (("rff_biased", "biased"), ("rff_unbiased", "unbiased")):
        xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
        want = pytl.mmd2(xx, yy, method="rff", num_features=64, seed=SCALABLE_SEED, estimator=estimator)
        want.backward()
        for r, got in enumerate(ranks):
            value, gx, gy = got[key]
            assert close(value, want.detach()), (key, r, float(value), float(want))
            assert close(gx, xx.grad.split(sx)[r]) and close(gy, yy.grad.split(sy)[r]), (key, r)
    want, gx_ref, gy_ref = block_reference(x, y, sx, sy)
    for r, got in enumerate(ranks):
        value, gx, gy = got["block"]
        assert close(value, want, rtol=1e-10), (r, float(value), float(want))
        assert close(gx, gx_ref.split(sx)[r], rtol=1e-9) and close(gy, gy_ref.split(sy)[r], rtol=1e-9), r
        assert "method='auto' with a group" in got["auto"]


@pytest.fixture(scope="module")
def scalable_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scalable")
    ok(launch("scalable", 3, out))
    return load(out, "scalable", 3)


def test_sharded_tests_equal_their_one_process_reconstruction(scalable_run):
    """mmd_test(group=...): every rank the same result; rff's statistic is one process's rff statistic with the
    same features, its null the chunk-permutation null of chunk sums rebuilt by hand (rank r's row i in
    chunk_of(r·2^40 + i)), the same from a memmap; block's the normal null of the ranks' blocks."""
    from pytl.diagnostics import scalable_tests, streaming
    from pytl.random_features import draw_features

    x, y, sx, sy = scalable_data(10)
    first = scalable_run[0]["test_rff"]
    assert all(same_result(r["test_rff"], first) and same_result(r["test_rff_memmap"], first) for r in scalable_run)
    sig = torch.tensor(first.sigmas, dtype=torch.float64)
    w = torch.tensor(first.weights, dtype=torch.float64)
    stat = pytl.mmd2(x, y, sig, w, method="rff", num_features=32, seed=SCALABLE_SEED)
    assert abs(first.statistic - float(stat)) <= 1e-10 * float(stat)
    freq, phases = draw_features(3, sig, 32, SCALABLE_SEED, x)
    chunks = streaming.CHUNKS_PER_SIDE
    sums, counts = [], []
    for sample, sizes, seed in ((x, sx, SCALABLE_SEED), (y, sy, SCALABLE_SEED + 1)):
        s, c = torch.zeros(chunks, freq.shape[0], dtype=torch.float64), torch.zeros(chunks, dtype=torch.float64)
        for r, shard in enumerate(sample.split(sizes)):
            ids = streaming.chunk_of(torch.arange(shard.shape[0]) + (r << 40), seed, chunks)
            s.index_add_(0, ids, torch.cos(shard @ freq.t() + phases))
            c.index_add_(0, ids, torch.ones(shard.shape[0], dtype=torch.float64))
        sums.append(s)
        counts.append(c)
    want_stat, want_p, want_null = scalable_tests.chunk_permutation_test(
        torch.cat(sums), torch.cat(counts), chunks, sig.numel(), w, 200, SCALABLE_SEED)
    assert abs(first.statistic - want_stat) <= 1e-10 * want_stat and first.p_value == want_p
    assert close(first.null_samples, want_null, rtol=1e-9)
    block = scalable_run[0]["test_block"]
    assert all(same_result(r["test_block"], block) for r in scalable_run)
    stats = block_statistics_by_hand(x, y, sx, sy, torch.tensor(block.sigmas, dtype=torch.float64))
    want_stat, want_p, _ = scalable_tests.block_null(stats)
    assert abs(block.statistic - want_stat) <= 1e-10 * abs(want_stat) and abs(block.p_value - want_p) <= 1e-9
    assert "exact test's permutations re-split" in scalable_run[1]["test_exact"]
    assert all(r["nan_error"].startswith("rank 1: x contains NaN") for r in scalable_run)


def same_result(a, b):
    return (a.statistic, a.p_value, a.sigmas, a.method) == (b.statistic, b.p_value, b.sigmas, b.method) and \
        torch.equal(a.null_samples, b.null_samples)


def block_statistics_by_hand(x, y, sx, sy, sig):
    n_blocks = min(x.shape[0], y.shape[0]) // BLOCK_SIZE
    bx, by = x.shape[0] // n_blocks, y.shape[0] // n_blocks
    stats = []
    for r, (xr, yr) in enumerate(zip(x.split(sx), y.split(sy))):
        count = min(xr.shape[0] // bx, yr.shape[0] // by)
        g = torch.Generator().manual_seed(SCALABLE_SEED + r)
        px = torch.randperm(xr.shape[0], generator=g)[: count * bx].view(count, bx)
        py = torch.randperm(yr.shape[0], generator=g)[: count * by].view(count, by)
        stats += [mmd2_reference64(xr[px[j]], yr[py[j]], sig, unbiased=True) for j in range(count)]
    return torch.stack(stats)


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_errors_are_raised_alike_on_every_rank(world, mmd_runs):
    for rk in mmd_runs(world):
        err = rk["errors"]
        assert err["features"].startswith("ValueError") and "features on every rank" in err["features"]
        assert err["dtype"].startswith("TypeError") and "dtype on every rank" in err["dtype"]
        assert err["too_few"].startswith("ValueError") and "at least 2 row(s)" in err["too_few"]
        assert err["group_type"].startswith("TypeError") and "ProcessGroup" in err["group_type"]


def test_group_without_process_group_is_a_clear_error():
    x, y = torch.randn(5, 2), torch.randn(6, 2)
    assert not pd.is_initialized()
    for call in (lambda: pytl.mmd2(x, y, group=object()),
                 lambda: pytl.mmd2(x, y, group=object(), exchange="ring"),
                 lambda: pytl.mmd2(x, y, group=object(), method="rff"),
                 lambda: pytl.mmd_test(x, y, group=object(), method="block", estimator="unbiased")):
        with pytest.raises(ValueError, match="group was given but torch.distributed is not initialised"):
            call()
    with pytest.raises(ValueError, match=r"MMDLoss\(distributed=True\) needs an initialised"):
        pytl.MMDLoss(distributed=True)(x, y)
    with pytest.raises(ValueError, match="group is only used with distributed=True"):
        pytl.MMDLoss(group=object())
    with pytest.raises(TypeError, match="distributed must be a bool"):
        pytl.MMDLoss(distributed="yes")


# ---------------------------------------------------------------------------------- the trainer under DDP

# uneven on purpose: the last source batch (5) and target batch (5) split 3 + 2 over two ranks
TRAIN = dict(align_epochs=3, finetune_epochs=3, batch_size=50, target_batch_size=40, finetune_batch_size=16,
             lambda_mmd=0.5, lr=3e-3, seed=0)


def train_data():
    return make_domain_shift(0, n_source=205, n_target_unlabeled=165, n_target_labeled=24, n_target_test=120)


def train_model(data):
    """The same float64 starting model in every process (float64: runs compare to 1e-9)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return default_model(2, 2, standardize=Standardize.fit(torch.as_tensor(data.source[0]),
                                                         torch.as_tensor(data.target_unlabeled))).double()


def train_fit(data, checkpoint=None, resume_from=None, snapshot=None, **extra):
    """Fit with TRAIN; ``snapshot=(path, stage, epoch)`` copies the checkpoint written after that epoch."""
    tr = TwoStageTrainer(train_model(data), progress=True, checkpoint=checkpoint, **TRAIN, **extra)
    save = train_loop.save_checkpoint  # the loop's checkpoint writer, wrapped for the snapshot
    if snapshot is not None:
        path, stage, epoch = snapshot

        def save_and_copy(trainer, st, ep, *args, **kwargs):
            save(trainer, st, ep, *args, **kwargs)
            if (st, ep) == (stage, epoch) and os.path.isfile(checkpoint):
                shutil.copyfile(checkpoint, path)

        train_loop.save_checkpoint = save_and_copy
    try:
        tr.fit(data.source, data.target_unlabeled, data.target_labeled, eval_data={"test": data.target_test},
               resume_from=resume_from)
    finally:
        train_loop.save_checkpoint = save
    return tr


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _scenario_train(rank, world, out):
    data = train_data()
    # every rank writes to its own path, so the test sees which ranks wrote
    tr = train_fit(data, checkpoint=str(out / f"ckpt-rank{rank}.pt"), snapshot=(str(out / "mid-dist.pt"), "align", 2))
    resumed = train_fit(data, checkpoint=str(out / f"resumed-rank{rank}.pt"), resume_from=str(out / "mid-single.pt"))
    # DataLoaders: the trainer gives them a DistributedSampler; the ranks must stay in step
    loader = DataLoader(TensorDataset(torch.as_tensor(data.source[0]), torch.as_tensor(data.source[1])),
                        batch_size=20, shuffle=True)
    lt = TwoStageTrainer(train_model(data), align_epochs=2, finetune_epochs=0, progress=False, seed=0)
    lt.align(loader, data.target_unlabeled)
    return {"weights": weights(tr.model), "history": tr.history, "resumed": weights(resumed.model),
            "resumed_history": resumed.history, "loader_weights": weights(lt.model),
            "loader_batches": len(prepare(lt.state, lt.model, loader, data.target_unlabeled, None, None, "align").source),
            "score": tr.score(*data.target_test)}


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """A single-process run (with a mid-run checkpoint), then the 2-rank scenario that resumes from it."""
    out = tmp_path_factory.mktemp("train")
    data = train_data()
    single = train_fit(data, checkpoint=str(out / "single.pt"), snapshot=(str(out / "mid-single.pt"), "finetune", 1))
    results = launch("train", 2, out)
    ok(results)
    return out, data, single, results, load(out, "train", 2)


def assert_same_weights(a, b, rtol=1e-9):
    assert a.keys() == b.keys()
    for k in a:
        assert close(a[k], b[k], rtol), (k, float((a[k] - b[k]).abs().max()))


def test_ddp_training_equals_single_process_training(train_run):
    out, data, single, _, ranks = train_run
    # the ranks agree exactly, and with a single process on the whole batches up to rounding
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])
    assert_same_weights(ranks[0]["weights"], weights(single.model))
    # metrics are reduced over ranks: the history is the single-process one (losses, global MMD², accuracies)
    for stage in ("align", "finetune"):
        got, want = ranks[0]["history"][stage], single.history[stage]
        assert len(got) == len(want) == 3
        for g, w in zip(got, want):
            for key in ("loss", "ce", "mmd2", "train_acc", "test_acc", "test_loss"):
                if w.get(key) is not None:
                    assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-9), (stage, key)
    assert ranks[0]["score"] == ranks[1]["score"] == single.score(*data.target_test)


CORAL = dict(TRAIN, alignment="coral", lambda_mmd=200.0, finetune_epochs=0)
CMMD = dict(TRAIN, alignment="cmmd", lambda_mmd=1.0, finetune_epochs=0, warmup=0.3, class_weights=[1.5, 0.75])


def _scenario_coral(rank, world, out):
    data = train_data()
    tr = TwoStageTrainer(train_model(data), progress=False, **CORAL)
    tr.align(data.source, data.target_unlabeled)
    return {"weights": weights(tr.model), "history": tr.history}


def test_ddp_coral_alignment_equals_single_process(tmp_path):
    # CORAL of the gathered global batch, reweighted like the MMD (steps.objective): the same weights
    data = train_data()
    single = TwoStageTrainer(train_model(data), progress=False, **CORAL)
    single.align(data.source, data.target_unlabeled)
    ok(launch("coral", 2, tmp_path))
    ranks = load(tmp_path, "coral", 2)
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])
    assert_same_weights(ranks[0]["weights"], weights(single.model))
    for g, w in zip(ranks[0]["history"]["align"], single.history["align"]):
        assert g["coral"] == pytest.approx(w["coral"], rel=1e-6) and g["mmd2"] is None


def _scenario_cmmd(rank, world, out):
    data = train_data()
    tr = TwoStageTrainer(train_model(data), progress=False, **CMMD)
    tr.align(data.source, data.target_unlabeled)
    return {"weights": weights(tr.model), "history": tr.history}


def test_ddp_cmmd_alignment_with_class_weights_equals_single_process(tmp_path):
    # target probabilities and source labels travel with the gathered embeddings: the same global term; the
    # class-weighted cross-entropy is reweighted by each rank's share of the global weight sum
    data = train_data()
    single = TwoStageTrainer(train_model(data), progress=False, **CMMD)
    single.align(data.source, data.target_unlabeled)
    ok(launch("cmmd", 2, tmp_path))
    ranks = load(tmp_path, "cmmd", 2)
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])
    assert_same_weights(ranks[0]["weights"], weights(single.model))
    for g, w in zip(ranks[0]["history"]["align"], single.history["align"]):
        assert (g["cmmd"] is None) == (w["cmmd"] is None)
        assert g["cmmd"] is None or g["cmmd"] == pytest.approx(w["cmmd"], rel=1e-6)


def _scenario_weighted(rank, world, out):
    """The weighted and class-conditional MMD of rank-sharded batches (uneven shards), values and gradients."""
    x, y = case_data(2)
    n, m = x.shape[0], y.shape[0]
    g = torch.Generator().manual_seed(5)
    xw, yw = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(m, generator=g, dtype=torch.float64)
    labels = torch.randint(3, (n,), generator=g)
    yp = torch.softmax(torch.randn(m, 3, generator=g, dtype=torch.float64), 1)
    sx, sy = shard_sizes(n, world, "uneven"), shard_sizes(m, world, None)
    xr = x.split(sx)[rank].clone().requires_grad_()
    yr = y.split(sy)[rank].clone().requires_grad_()
    grp = dist.group.WORLD
    weighted = pytl.mmd2(xr, yr, [0.8, 2.0], x_weights=xw.split(sx)[rank], y_weights=yw.split(sy)[rank],
                         estimator="unbiased", group=grp)
    cmmd = pytl.class_conditional_mmd2(xr, yr, labels.split(sx)[rank], yp.split(sy)[rank], [0.8, 2.0], group=grp)
    (weighted + cmmd).backward()
    return {"weighted": weighted.detach(), "cmmd": cmmd.detach(), "gx": xr.grad, "gy": yr.grad, "sizes": (sx, sy),
            "inputs": (xw, yw, labels, yp)}


def test_weighted_and_class_conditional_mmd_of_sharded_batches_equal_single_process(tmp_path):
    ok(launch("weighted", 2, tmp_path))
    ranks = load(tmp_path, "weighted", 2)
    x, y = case_data(2)
    xw, yw, labels, yp = ranks[0]["inputs"]
    x.requires_grad_()
    y.requires_grad_()
    weighted = pytl.mmd2(x, y, [0.8, 2.0], x_weights=xw, y_weights=yw, estimator="unbiased")
    cmmd = pytl.class_conditional_mmd2(x, y, labels, yp, [0.8, 2.0])
    (weighted + cmmd).backward()
    sx, sy = ranks[0]["sizes"]
    for r, got in enumerate(ranks):
        assert close(got["weighted"], weighted.detach()) and close(got["cmmd"], cmmd.detach())
        assert close(got["gx"], x.grad.split(sx)[r]) and close(got["gy"], y.grad.split(sy)[r])


def test_only_rank0_writes_and_prints(train_run):
    out, _, _, results, ranks = train_run
    assert (out / "ckpt-rank0.pt").is_file() and not (out / "ckpt-rank1.pt").exists()
    assert (out / "resumed-rank0.pt").is_file() and not (out / "resumed-rank1.pt").exists()
    assert "align" in results[0][1] and "finetune" in results[0][1]   # the progress lines (progress=True)
    assert "align" not in results[1][1] and "finetune" not in results[1][1]


def test_checkpoints_move_between_distributed_and_single_process(train_run):
    out, data, single, _, ranks = train_run
    # a distributed checkpoint: a plain state_dict (no "module." prefix) that loads into a single-process model
    ckpt = torch.load(out / "ckpt-rank0.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and not any(k.startswith("module.") for k in ckpt["model"])
    model = train_model(data)
    model.load_state_dict(ckpt["model"])
    assert_same_weights(weights(model), ranks[0]["weights"], rtol=0)
    # ... and resumes there: a single process continuing the distributed run from its stage-1 epoch 2
    resumed = train_fit(data, resume_from=str(out / "mid-dist.pt"))
    assert_same_weights(weights(resumed.model), weights(single.model))
    assert [r["epoch"] for r in resumed.history["align"]] == [0, 1, 2]
    # vice versa: two ranks continued the single-process run from its fine-tuning epoch 1
    assert_same_weights(ranks[0]["resumed"], weights(single.model))
    assert len(ranks[0]["resumed_history"]["finetune"]) == 3


def test_dataloaders_get_a_distributed_sampler(train_run):
    _, _, _, _, ranks = train_run
    assert ranks[0]["loader_batches"] == 6  # 205 samples: 103 per rank, batches of 20
    assert all(torch.equal(ranks[0]["loader_weights"][k], ranks[1]["loader_weights"][k])
               for k in ranks[0]["loader_weights"])


def test_distributed_loader_shards_a_dataset():
    ds = TensorDataset(torch.arange(11.0)[:, None])
    parts = [pd.distributed_loader(DataLoader(ds, batch_size=3, shuffle=True), r, 2, seed=0, name="src")
             for r in (0, 1)]
    seen = [torch.cat([b[0] for b in p]).flatten().tolist() for p in parts]
    assert len(seen[0]) == len(seen[1]) == 6 and set(seen[0] + seen[1]) == set(range(11))  # padded to 12
    assert pd.distributed_loader(parts[0], 0, 2, 0, "src") is parts[0]
    custom = DataLoader(ds, batch_sampler=[[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="src is a DataLoader with a custom sampler"):
        pd.distributed_loader(custom, 0, 2, 0, "src")


# ---------------------------------------------------------------------------------- a rank dies


def _scenario_die(rank, world, out):
    """Rank 1 dies in the middle of stage-1 epoch 2 (after the checkpoint of epoch 1); rank 0 must stop."""
    data = train_data()
    tr = TwoStageTrainer(train_model(data), progress=False, checkpoint=str(out / "ckpt.pt"), **TRAIN)
    if rank == 1:  # this process is rank 1 alone: patching stage 1's MMD for the whole process is fine
        mmd, calls = train_alignments.MMDAlignment.term, [0]

        def dying(*args):
            calls[0] += 1
            if calls[0] == 13:  # 5 steps per epoch: the third step of epoch 2
                os._exit(3)
            return mmd(*args)

        train_alignments.MMDAlignment.term = dying
    tr.fit(data.source, data.target_unlabeled, data.target_labeled, eval_data={"test": data.target_test})
    return {}


def test_a_dying_rank_stops_the_others_and_the_run_resumes(train_run, tmp_path):
    results = launch("die", 2, tmp_path, timeout=TIMEOUT_S + 60)
    (code0, text0, seconds0), (code1, _, _) = results
    assert code1 == 3
    # the survivor exits with an error that says what happened and how to resume, well within the timeout
    assert code0 != 0 and seconds0 < TIMEOUT_S + 30, (code0, seconds0)
    message = "CollectiveError: rank 0 of 2: align epoch 2 stopped because a collective operation failed"
    assert message in text0, text0[-3000:]
    assert "Another rank has probably died" in text0 and f"resume_from={str(tmp_path / 'ckpt.pt')!r}" in text0
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert (ckpt["stage"], ckpt["epoch"]) == ("align", 2)
    # resuming from the last checkpoint ends where the uninterrupted two-rank run ended (resumed here in one
    # process, which test_checkpoints_move_between_distributed_and_single_process shows to be equivalent)
    data, uninterrupted = train_run[1], train_run[4][0]
    resumed = train_fit(data, resume_from=str(tmp_path / "ckpt.pt"))
    assert resumed.score(*data.target_test) == uninterrupted["score"]
    assert_same_weights(weights(resumed.model), uninterrupted["weights"])
    assert [r["epoch"] for r in resumed.history["align"]] == [0, 1, 2]


# ---------------------------------------------------------------------------------- resume, one process


class Interrupted(Exception):
    pass


def resumable_trainer(data, checkpoint):
    """Dropout, a DANN ramp, gradual unfreezing, L2-SP and target passes out of step with the epochs:
    everything a resumed run must restore."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = default_model(2, 2, dropout=0.2, standardize=Standardize.fit(torch.as_tensor(data.source[0])))
    return TwoStageTrainer(model, align_epochs=4, finetune_epochs=4, batch_size=50, target_batch_size=30,
                           finetune_batch_size=8, lambda_schedule="dann", seed=2, progress=False, checkpoint=checkpoint,
                           finetune_policy=pytl.freezing.GradualUnfreeze(1, every=1) + pytl.freezing.L2SP(0.01))


def die_after_checkpoint(monkeypatch, stop_after):
    """Training dies right after the checkpoint of ``stop_after=(stage, epoch)`` is written."""
    save = train_loop.save_checkpoint

    def save_then_die(trainer, stage, epoch, *args, **kwargs):
        save(trainer, stage, epoch, *args, **kwargs)
        if (stage, epoch) == stop_after:
            raise Interrupted

    monkeypatch.setattr(train_loop, "save_checkpoint", save_then_die)


@pytest.fixture(scope="module")
def straight_run():
    data = train_data()
    return data, resumable_trainer(data, None).fit(data.source, data.target_unlabeled, data.target_labeled,
                                                   eval_data={"test": data.target_test})


@pytest.mark.parametrize("stop_after", [("align", 2), ("finetune", 2), ("align", 4)])
def test_resume_in_one_process_is_bit_identical(stop_after, straight_run, tmp_path, monkeypatch):
    data, straight = straight_run
    args = (data.source, data.target_unlabeled, data.target_labeled)
    ev = {"test": data.target_test}
    ckpt = str(tmp_path / "ckpt.pt")
    with pytest.raises(Interrupted), monkeypatch.context() as patch:
        die_after_checkpoint(patch, stop_after)
        resumable_trainer(data, ckpt).fit(*args, eval_data=ev)
    resumed = resumable_trainer(data, ckpt).fit(*args, eval_data=ev, resume_from=ckpt)
    assert all(torch.equal(v, weights(straight.model)[k]) for k, v in weights(resumed.model).items())
    assert resumed.history == straight.history and resumed.policy_summary == straight.policy_summary


def test_resume_and_distributed_arguments_are_checked(tmp_path):
    data = train_data()
    args = (data.source, data.target_unlabeled, data.target_labeled)
    with pytest.raises(ValueError, match="resume_from='nope.pt': no such file"):
        TwoStageTrainer(**TRAIN, progress=False).fit(*args, resume_from="nope.pt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        TwoStageTrainer(**TRAIN, progress=False).fit(*args, resume_from=tmp_path / "junk.pt")
    ckpt = str(tmp_path / "ckpt.pt")
    short = {**TRAIN, "align_epochs": 1, "finetune_epochs": 1}
    TwoStageTrainer(**short, progress=False, checkpoint=ckpt).fit(*args)
    with pytest.raises(ValueError, match="is a fine-tuning checkpoint: resume it with fit"):
        TwoStageTrainer(**short, progress=False).align(*args[:2], resume_from=ckpt)
    with pytest.warns(UserWarning, match=r"settings that differ from its run.*'lr': \(0.003, 0.001\)"):
        TwoStageTrainer(**{**short, "lr": 1e-3}, progress=False).fit(*args, resume_from=ckpt)
    other = make_domain_shift(0, n_source=100, shape="blobs", num_classes=3)
    with pytest.raises(ValueError, match="written for samples of shape .* and 2 classes; this run has .* and 3"):
        TwoStageTrainer(**short, progress=False).fit(other.source, other.target_unlabeled, other.target_labeled,
                                                     resume_from=ckpt)
    with pytest.raises(ValueError, match="distributed=True needs an initialised torch.distributed process group"):
        TwoStageTrainer(distributed=True)
    with pytest.raises(ValueError, match="mmd_scope must be one of"):
        TwoStageTrainer(mmd_scope="local")
    with pytest.raises(TypeError, match="checkpoint must be a file path"):
        TwoStageTrainer(checkpoint=3)
    assert pd.init_from_env() is False  # outside torchrun: nothing to do
    with pytest.raises(ValueError, match="timeout_s must be a finite number > 0"):
        pd.init_from_env(timeout_s=0)
    with pytest.raises(TypeError, match="timeout_s must be a finite number"):
        pd.init_from_env(timeout_s="5")


# ---------------------------------------------------------------------------------- python -m pytl demo


def test_demo_distributed_prints_one_table_equal_to_the_single_process_one():
    args = ["demo", "--align-epochs", "1", "--finetune-epochs", "1", "--labels", "20"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-m", "pytl", *args, "--distributed", "2"], env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "torch.distributed: 2 processes, gloo" in run.stdout
    assert run.stdout.count("pytl strategy comparison") == 1  # rank 0 alone prints
    def table_rows(text):
        return [line for line in text.splitlines() if line.split()[:1] and line.split()[0] in pytl.experiments.STRATEGIES]

    rows = table_rows(run.stdout)
    # the same global batches as one process: the same table (float32 rounding aside, to the printed digit)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    assert len(rows) == 6 and rows == table_rows(buf.getvalue())


# ---------------------------------------------------------------------------------- divergence, feasibility on shards


def run_cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-m", "pytl", *args], env=env, cwd=str(cwd), capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_divergence_and_feasibility_on_sharded_files_under_torchrun(tmp_path):
    """One .npy split by rows and one file per rank ({rank}) give the same report, printed once; its MMD² is
    the random-feature statistic of every row (within its error of the exact statistic), its sample counts
    the files' totals; feasibility estimates the terms on the rows gathered from both ranks."""
    g = np.random.default_rng(0)
    xs, xt = g.normal(size=(3000, 4)), g.normal(size=(2400, 4)) + 0.3
    np.save(tmp_path / "src.npy", xs)
    np.save(tmp_path / "tgt.npy", xt)
    for r, (a, b) in enumerate(zip(np.array_split(xs, 2), np.array_split(xt, 2))):
        np.save(tmp_path / f"src-{r}.npy", a)
        np.save(tmp_path / f"tgt-{r}.npy", b)
    one_file = run_cli(["divergence", "src.npy", "tgt.npy", "--distributed", "2"], tmp_path)
    per_rank = run_cli(["divergence", "src-{rank}.npy", "tgt-{rank}.npy", "--distributed", "2"], tmp_path)
    reports = [line for line in one_file.splitlines() if line.startswith("MMD²")]
    assert len(reports) == 1 and reports == [line for line in per_rank.splitlines() if line.startswith("MMD²")]
    assert "source (3000 samples) and the target (2400 samples)" in one_file
    mmd2, p_value = float(reports[0].split()[1]), float(reports[0].split()[3])
    exact = float(pytl.mmd2(torch.from_numpy(xs), torch.from_numpy(xt)))
    assert abs(mmd2 / exact - 1) < 0.1 and p_value < 0.01, (mmd2, exact, p_value)
    np.savez(tmp_path / "lab.npz", X=xs, y=(xs[:, 0] > 0).astype(np.int64))
    table = run_cli(["feasibility", "lab.npz", "tgt.npy", "--distributed", "2"], tmp_path)
    assert table.count("source error eps_S") == 1 and "1/2 d_HdH" in table
    # a file only one rank lacks: that rank names it and stops at once, without waiting for its peers at the
    # teardown barrier (which they never reach), so the job ends within seconds instead of the group's timeout
    (tmp_path / "tgt-1.npy").unlink()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytl", "divergence", "src-{rank}.npy", "tgt-{rank}.npy",
                          "--distributed", "2"], env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=180)
    assert run.returncode != 0 and time.monotonic() - start < 60
    # every rank says which rank's file is missing (pytl.sharded_data.agree), and none dies of a closed connection
    assert run.stderr.count("pytl divergence: error: rank 1: target tgt-1.npy: no such file") == 2
    assert "Connection closed" not in run.stderr


def test_file_shards_cover_each_row_once(tmp_path):
    from pytl.cli.shards import load_feature_shard, load_labeled_shard

    x = np.arange(7 * 3, dtype=np.float64).reshape(7, 3)
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",")
    np.savez(tmp_path / "lab.npz", X=x, y=np.arange(7) % 2)
    note = lambda message: None  # noqa: E731
    for name in ("x.npy", "x.csv"):
        parts = [load_feature_shard(str(tmp_path / name), None, role="source", note=note, rank=r, world=3)
                 for r in range(3)]
        assert [p.shape[0] for p in parts] == [2, 3, 2] and np.array_equal(np.concatenate(parts), x)
    labeled = [load_labeled_shard(str(tmp_path / "lab.npz"), role="source", note=note, rank=r, world=3) for r in range(3)]
    assert np.array_equal(np.concatenate([p[1] for p in labeled]), np.arange(7) % 2)
    np.save(tmp_path / "part-1.npy", x[:2])
    got = load_feature_shard(str(tmp_path / "part-{rank}.npy"), None, role="source", note=note, rank=1, world=2)
    assert np.array_equal(got, x[:2])
    with pytest.raises(ValueError, match="part-0.npy"):
        load_feature_shard(str(tmp_path / "part-{rank}.npy"), None, role="source", note=note, rank=0, world=2)
    np.save(tmp_path / "bad.npy", np.array([[1.0, np.nan]] * 4))
    with pytest.raises(ValueError, match="bad.npy"):
        load_feature_shard(str(tmp_path / "bad.npy"), None, role="source", note=note, rank=1, world=2)


SCENARIOS = {"mmd": _scenario_mmd, "train": _scenario_train, "coral": _scenario_coral, "cmmd": _scenario_cmmd,
             "weighted": _scenario_weighted, "die": _scenario_die, "scalable": _scenario_scalable}
