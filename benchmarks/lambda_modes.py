"""Fixed λ against λ chosen from the data ("auto"), on saved comparisons of the same pairs and seeds.

    python benchmarks/vector_regime.py --modes fixed --save runs/ --strategies ...   # both modes, saved
    python benchmarks/vector_regime.py --modes auto --save runs/ --strategies ...
    python benchmarks/lambda_modes.py runs/                                          # markdown on stdout
    python benchmarks/lambda_modes.py runs/ --strategies source_only mmd_only scratch naive mmd ensemble
    python benchmarks/lambda_modes.py runs/ --ssl-at-default   # "auto" as compare_strategies' default runs it

For every saved pair of runs (``<features>_<pair>_fixed_<seed>.pt`` and ``..._auto_<seed>.pt``) it reports,
over the strategies both ran, the test accuracy of each strategy whose λ "auto" chooses (the unsupervised
"<a>_only", the fine-tuned "<a>", the ensemble, and the semi-supervised "ssl_<a>", which takes the λ of its
alignment's search), fixed → auto, the λs "auto" chose (stage 1, fine-tuned), and ``report.best`` under each
mode, rebuilt over the same strategies (selection_rules.py: the pick-one rule, and ``best`` with the weighted
ensemble) against the test set's best of both modes together. The summary: per strategy, the mean and worst
change, and how often each pick is within 2 points of that joint best.

A run saved in parts (the same file name in several folders, e.g. the semi-supervised strategies run on their
own) is merged: the runs of one comparison do not depend on which others ran (same seed, same folds).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from selection_rules import load, rules  # noqa: E402

from pytl.experiments.strategies import ALIGNED, SEMI_SUPERVISED  # noqa: E402

CHOSEN = (*(f"{a}_only" for a in ALIGNED), *ALIGNED, "ensemble", *SEMI_SUPERVISED)


def ssl_from(fixed: dict, auto: dict) -> dict:
    """``auto`` with the fixed run's semi-supervised strategies: what "auto" trains since the seventh session
    (the semi-supervised strategies keep the alignment's default λ; the rest search)."""
    out = dict(auto)
    for key in ("accuracy", "test_proba", "cv_log_proba"):
        out[key] = {**auto[key], **{s: v for s, v in fixed[key].items() if s in SEMI_SUPERVISED}}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="+", help="folders where vector_regime.py --save wrote both modes' runs")
    ap.add_argument("--ssl-at-default", action="store_true",
                    help="the auto column as compare_strategies' default runs it: the semi-supervised strategies at "
                         "their alignment's default λ, i.e. taken from the fixed run (same seed and folds)")
    ap.add_argument("--strategies", nargs="*", default=None,
                    help="compare over these strategies only (e.g. the default six: what a user gets without "
                         "strategies=); default: every strategy both modes ran")
    args = ap.parse_args(argv)
    saved: dict[str, list[str]] = {}
    for p in sorted(p for f in args.folder for p in glob.glob(os.path.join(f, "*.pt"))):
        saved.setdefault(os.path.basename(p), []).append(p)
    changes: dict[str, list[float]] = {}
    # without weighted_ensemble among the strategies (the default six), report.best is the pick-one rule
    shown = ("pick one", "best") if args.strategies is None or "weighted_ensemble" in args.strategies else ("pick one",)
    within: dict[tuple[str, str, str], list[float]] = {}  # (regime, mode, rule) → gaps
    print("| run | " + " | ".join(CHOSEN) + " | λ auto chose (stage 1 / fine-tuned) | "
          + " | ".join(f"{rule} {mode}" for rule in shown for mode in ("fixed", "auto")) + " |")
    print("|---|" + "---|" * (len(CHOSEN) + 1 + 2 * len(shown)))
    for auto_name in (n for n in saved if "_auto_" in n):
        name = auto_name.replace("_auto_", "_fixed_")
        if name not in saved:
            continue
        auto, fix = load(saved[auto_name]), load(saved[name])
        if args.ssl_at_default:
            auto = ssl_from(fix, auto)
        both = set(auto["accuracy"]) & set(fix["accuracy"])
        if args.strategies is not None:
            both &= set(args.strategies)
        seed = int(name.rsplit("_", 1)[1][:-3])
        picks = {}
        for mode, run in (("fixed", fix), ("auto", auto)):
            r = rules(run, both - {"weighted_ensemble"}, seed)
            for rule in shown:  # over the strategies both ran
                picks[mode, rule] = (r["picks"][rule], 100 * r["acc"][r["picks"][rule]])
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
        for key, (_, acc) in picks.items():
            within.setdefault((name.split("_")[0], *key), []).append(acc - top)
        print(f"| {name.replace('_fixed', '')[:-3]} | " + " | ".join(cells) + f" | {lams} | "
              + " | ".join(f"{picks[mode, rule][0]} {picks[mode, rule][1] - top:+.1f}"
                           for rule in shown for mode in ("fixed", "auto")) + " |")
    print("\n| strategy | mean change (points) | worst | best |")
    print("|---|---|---|---|")
    for s, v in changes.items():
        print(f"| {s} | {sum(v) / len(v):+.1f} | {min(v):+.1f} | {max(v):+.1f} |")
    print("\n| regime | rule | λ | within 2 points of the best of both modes | mean gap | worst |")
    print("|---|---|---|---|---|---|")
    for (regime, mode, rule), gaps in sorted(within.items()):
        print(f"| {regime} | {rule} | {mode} | {sum(g >= -2 for g in gaps)}/{len(gaps)} | "
              f"{sum(gaps) / len(gaps):+.1f} | {min(gaps):+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
