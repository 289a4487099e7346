"""Fixed λ against λ chosen from the data ("auto"), on saved comparisons of the same pairs and seeds.

    python benchmarks/vector_regime.py --modes fixed --save runs/ --strategies ...   # both modes, saved
    python benchmarks/vector_regime.py --modes auto --save runs/ --strategies ...
    python benchmarks/lambda_modes.py runs/                                          # markdown on stdout

For every saved pair of runs (``<features>_<pair>_fixed_<seed>.pt`` and ``..._auto_<seed>.pt``) it reports,
over the strategies both ran, the test accuracy of each strategy whose λ "auto" chooses (the unsupervised
"<a>_only", the fine-tuned "<a>", the ensemble), fixed → auto, the λs "auto" chose (stage 1, fine-tuned),
and ``report.best`` under each mode, rebuilt over the same strategies (selection_rules.py) against the test
set's best of both modes together. The summary: per strategy, the mean and worst change, and how often
``best`` is within 2 points of that joint best.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from selection_rules import rules  # noqa: E402

from pytl.experiments.strategies import ALIGNED  # noqa: E402

CHOSEN = (*(f"{a}_only" for a in ALIGNED), *ALIGNED, "ensemble")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="+", help="folders where vector_regime.py --save wrote both modes' runs")
    args = ap.parse_args(argv)
    autos = sorted(p for f in args.folder for p in glob.glob(os.path.join(f, "*_auto_*.pt")))
    fixed = {os.path.basename(p): p for f in args.folder for p in glob.glob(os.path.join(f, "*_fixed_*.pt"))}
    changes: dict[str, list[float]] = {}
    within = {"fixed": [], "auto": []}
    print("| run | " + " | ".join(CHOSEN) + " | λ auto chose (stage 1 / fine-tuned) | best fixed | best auto |")
    print("|---|" + "---|" * (len(CHOSEN) + 3))
    for path in autos:
        name = os.path.basename(path).replace("_auto_", "_fixed_")
        if name not in fixed:
            continue
        auto, fix = torch.load(path, weights_only=False), torch.load(fixed[name], weights_only=False)
        both = set(auto["accuracy"]) & set(fix["accuracy"])
        seed = int(name.rsplit("_", 1)[1][:-3])
        picks = {}
        for mode, run in (("fixed", fix), ("auto", auto)):
            r = rules(run, both - {"weighted_ensemble"}, seed)
            picks[mode] = (r["picks"]["pick one"], 100 * r["acc"][r["picks"]["pick one"]])  # the strategies ran
        top = max(100 * run["accuracy"][s] for run in (fix, auto) for s in both if s != "weighted_ensemble")
        cells = []
        for s in CHOSEN:
            if s in both:
                a, b = 100 * fix["accuracy"][s], 100 * auto["accuracy"][s]
                changes.setdefault(s, []).append(b - a)
                cells.append(f"{a:.1f} → {b:.1f}")
            else:
                cells.append("-")
        lams = ", ".join(f"{a} {c[0]:g}/{'-' if c[1] is None else f'{c[1]:g}'}"
                         for a, c in auto.get("lambdas", {}).items())
        for mode in ("fixed", "auto"):
            within[mode].append(picks[mode][1] - top)
        print(f"| {name.replace('_fixed', '')[:-3]} | " + " | ".join(cells) + f" | {lams} | "
              f"{picks['fixed'][0]} {picks['fixed'][1] - top:+.1f} | "
              f"{picks['auto'][0]} {picks['auto'][1] - top:+.1f} |")
    print("\n| strategy | mean change (points) | worst | best |")
    print("|---|---|---|---|")
    for s, v in changes.items():
        print(f"| {s} | {sum(v) / len(v):+.1f} | {min(v):+.1f} | {max(v):+.1f} |")
    for mode, gaps in within.items():
        if gaps:
            print(f"\nreport.best, λ {mode}: within 2 points of the best of both modes in "
                  f"{sum(g >= -2 for g in gaps)}/{len(gaps)} runs, mean gap {sum(gaps) / len(gaps):+.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
