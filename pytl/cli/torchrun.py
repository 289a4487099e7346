"""``--distributed N``: relaunch the command on N local processes with torchrun, and, inside each of
them, run it with the process group up and only rank 0 talking."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

import torch.distributed as dist

from pytl import distributed as pd

__all__ = ["relaunch", "run_on_every_rank", "under_torchrun"]


def under_torchrun() -> bool:
    """True inside a process that torchrun started (it sets RANK)."""
    return "RANK" in os.environ


def relaunch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m pytl ARGV`` (without --distributed) on nproc local processes with torchrun; its exit status."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--distributed":
            skip = True
        elif not a.startswith("--distributed="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "pytl", *rest]
    print(f"pytl: torchrun --standalone --nproc_per_node={nproc} -m pytl {' '.join(rest)}", file=sys.stderr, flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # torchrun's default, unannounced
    return subprocess.call(cmd, env=env)


def run_on_every_rank(run: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                      rank0_only: Sequence[str] = (),
                      what: str = "each trains its part of every batch (DDP), MMD² of the global batch") -> int:
    """``run(args)`` in this process: alone when torchrun did not start it, else with the process group
    up (gloo on CPU, NCCL on CUDA), every rank training its part of every batch while rank 0 alone
    prints. The options named in ``rank0_only`` (outputs such as a figure) are None on the other ranks."""
    if not pd.init_from_env(device="cuda" if str(getattr(args, "device", "cpu")).startswith("cuda") else "cpu"):
        return run(args)
    completed = False
    try:
        if pd.rank() == 0:
            print(f"torch.distributed: {pd.world_size()} processes, {dist.get_backend()}; {what}; rank 0 prints",
                  flush=True)
            status = run(args)
        else:
            args = argparse.Namespace(**{**vars(args), **dict.fromkeys(rank0_only)})
            with contextlib.redirect_stdout(io.StringIO()):
                status = run(args)
        completed = status == 0  # a rank that failed (a bad file) may have left its peers mid-collective
        return status
    finally:
        pd.shutdown(completed)  # a barrier before the teardown: no rank closes gloo under a peer's collective
