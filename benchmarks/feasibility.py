"""Does the feasibility report predict? Ben-David's bound term by term (pytl.transfer_feasibility) against the
target error that transfer actually reaches, over the tutorial problem's divergence sweep, and the order of
pytl.rank_sources against the accuracy reached from each candidate source.

    python benchmarks/feasibility.py            # rotations 0..180 step 30, 3 seeds (about 2 minutes, one thread)
    python benchmarks/feasibility.py --real     # + the real pairs of real_pairs.py, raw pixels and CNN embeddings
    python benchmarks/feasibility.py --plot sweep.png   # + the sweep drawn: each term and the measured errors

Sweep: for each rotation r and seed, the two moons and a target rotated by r (no move): the report's terms
(linear hypothesis class, 50 target labels) next to the measured target test error of "source_only" and
"mmd_only" (TwoStageTrainer, 100 epochs) and of a linear classifier trained on the source. Ranking: one
target (rotation 0), one labelled candidate source per rotation; rank_sources' order against the target
accuracy of a source_only model trained on each candidate. Spearman rank correlations over all of it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytl  # noqa: E402

ROTATIONS = (0, 30, 60, 90, 120, 150, 180)


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _error(tr: pytl.TwoStageTrainer, test) -> float:
    return 1.0 - tr.score(*test)


def plot_sweep(rows: list, path: str) -> None:
    """The terms and the bound against the measured target errors, over the rotation (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean(f):
        return [np.mean([f(x) for x in rows if x[0] == r]) for r in ROTATIONS]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, f, style in (("eps_S", lambda x: x[2].source_error.value, ":"),
                            ("1/2 d_HdH", lambda x: x[2].divergence.value, ":"),
                            ("lambda*", lambda x: x[2].joint_error.value, "--"),
                            ("bound", lambda x: x[2].bound.value, "-"),
                            ("measured: source_only", lambda x: x[3], "-o"),
                            ("measured: mmd_only", lambda x: x[4], "-s")):
        ax.plot(ROTATIONS, mean(f), style, label=label)
    ax.set_xlabel("target rotation (degrees)")
    ax.set_ylabel("error")
    ax.set_title("Ben-David's bound term by term vs the target error reached")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def sweep(seeds: int, plot: str | None = None) -> None:
    rows = []
    for r in ROTATIONS:
        for seed in range(seeds):
            d = pytl.make_domain_shift(seed, rotation=float(r), shift=(0.0, 0.0))
            rep = pytl.transfer_feasibility(d.source, d.target_unlabeled, d.target_labeled, seed=seed)
            src = pytl.TwoStageTrainer(lambda_mmd=0.0, align_epochs=100, progress=False, seed=seed)
            src.align(d.source)
            mmd = pytl.TwoStageTrainer(lambda_mmd=0.5, align_epochs=100, progress=False, seed=seed)
            mmd.align(d.source, d.target_unlabeled)
            rows.append((r, seed, rep, _error(src, d.target_test), _error(mmd, d.target_test)))
    print("| rotation | eps_S | 1/2 d_HdH | lambda* | bound | measured: linear source classifier on target | "
          "source_only error | mmd_only error | verdicts |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in ROTATIONS:
        sel = [x for x in rows if x[0] == r]

        def m(values):
            return f"{np.mean(values):.3f}"

        verdicts = sorted({x[2].verdict for x in sel})
        print(f"| {r}° | {m([x[2].source_error.value for x in sel])} | {m([x[2].divergence.value for x in sel])} | "
              f"{m([x[2].joint_error.value for x in sel])} | {m([x[2].bound.value for x in sel])} | "
              f"{m([x[2].target_error.value for x in sel])} | {m([x[3] for x in sel])} | {m([x[4] for x in sel])} | "
              f"{', '.join(verdicts)} |")
    bound = [x[2].bound.value for x in rows]
    lam = [x[2].joint_error.value for x in rows]
    div = [x[2].divergence.value for x in rows]
    print(f"\nSpearman over {len(rows)} runs: bound vs source_only error {spearman(bound, [x[3] for x in rows]):+.2f}, "
          f"bound vs mmd_only error {spearman(bound, [x[4] for x in rows]):+.2f}, lambda* vs mmd_only error "
          f"{spearman(lam, [x[4] for x in rows]):+.2f}, divergence vs source_only error "
          f"{spearman(div, [x[3] for x in rows]):+.2f}; bound >= measured source_only error in "
          f"{sum(x[2].bound.value >= x[3] for x in rows)} of {len(rows)} runs")
    if plot:
        plot_sweep(rows, plot)


def ranking(seeds: int) -> None:
    corr, top = [], 0
    for seed in range(seeds):
        target = pytl.make_domain_shift(seed, rotation=0.0, shift=(0.0, 0.0))
        sources = {f"{r}°": pytl.make_domain_shift(seed + 100, rotation=float(r), shift=(0.0, 0.0),
                                                    n_target_test=1000).target_test for r in ROTATIONS}
        rk = pytl.rank_sources(target.target_unlabeled, sources, target.target_labeled, seed=seed)
        acc = {}
        for name, src in sources.items():
            tr = pytl.TwoStageTrainer(lambda_mmd=0.0, align_epochs=100, progress=False, seed=seed)
            tr.align(src)
            acc[name] = tr.score(*target.target_test)
        position = {n: i for i, n in enumerate(rk.order)}
        corr.append(spearman([-position[n] for n in sources], [acc[n] for n in sources]))
        top += max(acc, key=acc.get) == rk.order[0]
        print(f"seed {seed}: rank_sources {rk.order}; source_only target accuracy "
              + ", ".join(f"{n} {100 * acc[n]:.1f}%" for n in rk.order))
    print(f"\nSpearman(rank_sources order, accuracy reached) per seed: {', '.join(f'{c:+.2f}' for c in corr)}; "
          f"the first-ranked source was the best in {top} of {seeds} seeds")


def real_pairs(seeds: int) -> None:
    """The report on the real pairs of benchmarks/real_pairs.py (needs the [bench] extra): raw pixels with a
    linear H over ``seeds`` seeds; then, seed 0, in the embedding of the outcomes' CNN (features=model.embed)
    after 20 epochs of source training and after 20 epochs of "cmmd_only", next to that CNN's own target error."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from real_pairs import PAIR_NAMES, load_pair, model_for

    print("| pair | eps_S | 1/2 d_HdH | lambda* | bound | measured: linear source classifier on target labels | "
          "scratch (linear) | verdicts |")
    print("|---|---|---|---|---|---|---|---|")
    for name in PAIR_NAMES:
        reps = []
        for seed in range(seeds):
            pair = load_pair(name, seed)
            reps.append(pytl.transfer_feasibility(pair["source"], pair["target_unlabeled"], pair["target_labeled"],
                                                  seed=seed))

        def m(attr):
            return f"{np.mean([getattr(r, attr).value for r in reps]):.3f}"

        print(f"| {name} | {m('source_error')} | {m('divergence')} | {m('joint_error')} | {m('bound')} | "
              f"{m('target_error')} | {m('scratch_error')} | {', '.join(sorted({r.verdict for r in reps}))} |")
    print("\n| pair | embedding | 1/2 d_HdH | lambda* | bound | measured | the CNN's target error | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for name in PAIR_NAMES:
        pair = load_pair(name, 0)
        for label, kw in (("source-trained", dict(lambda_mmd=0.0)), ("cmmd-trained", dict(alignment="cmmd"))):
            tr = pytl.TwoStageTrainer(model_for(name, 0, pair), align_epochs=20, progress=False, seed=0, **kw)
            tr.align(pair["source"], pair["target_unlabeled"] if "alignment" in kw else None)
            r = pytl.transfer_feasibility(pair["source"], pair["target_unlabeled"], pair["target_labeled"],
                                          features=tr.model.embed, seed=0)
            print(f"| {name} | {label} | {r.divergence.value:.2f} | {r.joint_error.value:.2f} | {r.bound.value:.2f} | "
                  f"{r.target_error.value:.2f} | {1 - tr.score(*pair['target_test']):.2f} | {r.verdict} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--real", action="store_true", help="also the real pairs of real_pairs.py (the [bench] extra)")
    p.add_argument("--plot", default=None, help="draw the sweep to this image file (matplotlib)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    sweep(args.seeds, args.plot)
    print()
    ranking(args.seeds)
    if args.real:
        print()
        real_pairs(args.seeds)
    print(f"\n{time.perf_counter() - t0:.0f} s, torch {torch.__version__}, {args.threads} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
