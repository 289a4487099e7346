"""What the trainer costs on top of the work: TwoStageTrainer stage 1 against the minimal hand-written loop.

    python benchmarks/trainer_overhead.py            # the demo problem, a wide encoder, a small CNN
    python benchmarks/trainer_overhead.py --quick

The hand loop is the tutorial's: the same model, Adam, the same seeded batch order (a permutation of
the source per epoch, target batches cycling through their own permutations), one forward pass of the
source and target batch together, CE + λ·MMD² with the default bandwidths, backward, step. It ends
with the same weights as the trainer (checked), so the ratio trainer / hand is the trainer's own cost:
its bookkeeping per step (policy hooks, the epoch's running means, the record) and per epoch. Both run
in one process, alternating, best of --repeats, on the threads torch has (--threads).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytl  # noqa: E402
from pytl.models import default_cnn, default_model  # noqa: E402
from pytl.train.batches import ArrayBatches  # noqa: E402


def hand_loop(model: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, epochs: int,
              batch: int, lam: float, lr: float, seed: int) -> torch.nn.Module:
    """Stage 1 as the tutorial writes it, drawing batches exactly as the trainer does."""
    gen = torch.Generator().manual_seed(seed * 1009 + 1)  # the trainer's data-order stream for stage 1
    torch.manual_seed(seed * 1009 + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    pending: list[torch.Tensor] = []
    model.train()
    for _ in range(epochs):
        for idx in ArrayBatches(xs.shape[0], batch, gen).epoch():
            if not pending:
                pending = ArrayBatches(xt.shape[0], batch, gen).epoch()
            tidx = pending.pop(0)
            x_s, y_s, x_t = xs[idx], ys[idx], xt[tidx]
            z = model.embed(torch.cat([x_s, x_t]))
            zs, zt = z[: x_s.shape[0]], z[x_s.shape[0]:]
            loss = F.cross_entropy(model.head(zs), y_s) + lam * pytl.mmd2(zs, zt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


def trainer_run(model: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, epochs: int,
                batch: int, lam: float, lr: float, seed: int) -> torch.nn.Module:
    t = pytl.TwoStageTrainer(model, lambda_mmd=lam, align_epochs=epochs, batch_size=batch, lr=lr, seed=seed,
                             progress=False)
    t.align((xs, ys), xt)
    return t.model


def problems(quick: bool) -> list[tuple[str, torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, int, int]]:
    """(name, initial model, xs, ys, xt, epochs, batch size)."""
    g = torch.Generator().manual_seed(0)
    demo = pytl.make_domain_shift(0)
    xs, ys = (torch.as_tensor(a) for a in demo.source)
    xt = torch.as_tensor(demo.target_unlabeled)
    out = [("demo (2-D moons, MLP 2-64-64, batch 64)", default_model(2, 2, seed=0), xs, ys, xt, 5 if quick else 20, 64)]
    n = 1024 if quick else 4096
    wide_x = torch.randn(n, 128, generator=g)
    wide_y = (wide_x[:, 0] > 0).long()
    out.append(("wide encoder (128 → 512 → 512, batch 256)", default_model(128, 2, hidden_sizes=(512, 512), seed=0),
                wide_x, wide_y, torch.randn(n, 128, generator=g) + 0.3, 2 if quick else 3, 256))
    m = 512 if quick else 2048
    img = torch.rand(m, 1, 28, 28, generator=g)
    out.append(("small CNN on 28×28 (batch 64)", default_cnn(10, seed=0), img,
                torch.randint(0, 10, (m,), generator=g), torch.rand(m, 1, 28, 28, generator=g), 1 if quick else 2, 64))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's setting)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lam, lr, seed = 0.5, 1e-3, 0
    print(f"trainer stage 1 vs the hand-written loop: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}")
    worst = 0.0
    for name, model, xs, ys, xt, epochs, batch in problems(args.quick):
        best = {"hand": float("inf"), "trainer": float("inf")}
        same = True
        for _ in range(args.repeats):
            for kind, fn in (("hand", hand_loop), ("trainer", trainer_run)):
                m = copy.deepcopy(model)
                t0 = time.perf_counter()
                trained = fn(m, xs, ys, xt, epochs, batch, lam, lr, seed)
                best[kind] = min(best[kind], time.perf_counter() - t0)
                if kind == "hand":
                    ref = trained
                else:
                    same &= all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(),
                                                                   trained.state_dict().values()))
        ratio = best["trainer"] / best["hand"]
        worst = max(worst, ratio)
        print(f"{name:<45} hand {best['hand']:.3f} s  trainer {best['trainer']:.3f} s  ratio {ratio:.3f}"
              f"  {'same weights' if same else 'WEIGHTS DIFFER'}", flush=True)
    print(f"worst ratio {worst:.3f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
