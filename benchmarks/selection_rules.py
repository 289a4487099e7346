"""What ships: report.best's rules compared on saved comparisons, without training again.

    python benchmarks/vector_regime.py --features pixels --modes fixed --save runs/   # every strategy, saved
    python benchmarks/selection_rules.py runs/                                        # markdown on stdout
    python benchmarks/selection_rules.py runs/ --strategies source_only mmd_only scratch naive mmd ensemble
    python benchmarks/selection_rules.py runs/ ssl_runs/                              # a run saved in parts, merged

For each saved run (its held-out cross-validated predictions and test-set probabilities of every strategy) it
rebuilds the estimates as compare_strategies does and reports, against the test set's best strategy:

- "pick one": ``report.best`` without "top_ensemble" (the lowest calibrated held-out cross-entropy);
- "weighted_ensemble": every strategy's calibrated probabilities, stacked (the mixture weights with the highest
  held-out likelihood, Yao et al. 2018), bagged (those weights averaged over Bayesian-bootstrap reweightings of
  the labels, since the eleventh session), always;
- "one fit": the same with the weights of one stacking fit (no bagging: the tenth session's rule), always;
- "best": ``report.best`` with "weighted_ensemble" among the strategies (since the eleventh session: the stacked
  ensemble, always);
- "guarded": ``report.best``'s rule until the eleventh session: the stacked ensemble where its nested estimate
  beats picking one's (nested the same way), else what picking one picks;
- "top-3 mean": the equal mean of the 3 best-estimated strategies (calibrated), the rule measured first;
- "pseudo-BMA": "best" with the weights the weighted ensemble had until the tenth session, w ∝ exp(Σ_i log
  p_s(y_i)) (the same paper's pseudo-Bayesian model averaging); nested the same way;
- "BMA+": "best" with the weights of pseudo-BMA+ (Yao et al. 2018), the same paper's correction of pseudo-BMA
  for the noise of n held-out log-likelihoods: each strategy's weight averaged over Bayesian-bootstrap draws of
  the labels (Dirichlet(1) row weights α, w ∝ exp(n Σ_i α_i log p_s(y_i)), 1,000 draws), so strategies within
  noise of each other share more of the weight; nested the same way (measured in the ninth session, not adopted);

and whether each pick is significantly below the test set's best (paired sign test on the test rows, 5%):
with 700-1,000 test rows, 2 points is about one standard error, so the best of 19 strategies on the test
set is itself a few points lucky. Also per run: source_only, the best unsupervised gain over it, scratch,
naive, the best semi-supervised strategy.

``--labels-per-class K`` asks what the rules do with fewer labels: K labelled rows per class drawn from each run's
(``--draws`` times), the same held-out predictions and models (so the models are as good as with every label,
only the choosing is noisier), K folds; it prints each regime's share of draws within 2 points of the test set's
best and the mean and worst gap, for the stacked ensemble always, "guarded", "one fit" and "pick one".

"fresh labels" is the noise floor of any rule that chooses from that many labels: as many labelled rows per
class as the run had, drawn afresh from the test set (200 draws), scored with the final models themselves (no
cross-validation: no fold trained on fewer labels), the strategy with the lowest calibrated cross-entropy on
them picked; the column is the fraction of draws whose pick is within 2 points of the test set's best, and its
sum over a regime's runs the number of runs such a rule is expected to get within 2 points.
``--fresh-ensemble-draws N``: the first N of those draws also weigh the stacked ensemble (bagged, as shipped) on
the fresh labels, "fresh labels, ensemble": what the shipped rule would get from 50 labels if it needed no
cross-validation (the models it weighs are the shipped ones, not fold models trained on 4/5 of the labels); the
summary adds the chance that a regime's runs reach the issue's 8 of 9 within 2 points if each run is within 2 with
that probability, independently (Poisson binomial). "test labels, ensemble" is the ceiling of weighing by
log-likelihood: one stacking fit on every test label (its accuracy is measured on the rows that fitted it).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pytl.experiments import ComparisonReport  # noqa: E402
from pytl.experiments.estimate import Estimate, sign_test_p_value  # noqa: E402
from pytl.experiments.folds import stratified_folds, training_rows  # noqa: E402
from pytl.experiments.strategies import ALIGNED, SEMI_SUPERVISED, STRATEGIES  # noqa: E402
from pytl.experiments.estimate import calibrated_cross_entropy  # noqa: E402
from pytl.experiments.weighted_ensemble import (  # noqa: E402
    WEIGHTED_ENSEMBLE,
    fits,
    keep_members,
    mixture,
    stacking_weights,
    weigh,
    weigh_members,
)

UNSUPERVISED = tuple(f"{a}_only" for a in ALIGNED)
FOLDS = 5  # vector_regime.py's


def pseudo_bma(log_proba: dict, y: torch.Tensor, rows: torch.Tensor):
    """Members, weights and temperatures of pseudo-BMA from ``rows`` of the labels: w ∝ exp(−n · calibrated
    cross-entropy), the weighted ensemble's rule until the tenth session."""
    fitted = fits(log_proba, y, STRATEGIES, rows)
    return keep_members(fitted, torch.softmax(-int(rows.sum()) * torch.tensor([f.loss for f in fitted],
                                                                              dtype=torch.float64), 0))


def bma_plus(log_proba: dict, y: torch.Tensor, rows: torch.Tensor, draws: int = 1000, seed: int = 0):
    """Members, weights and temperatures of pseudo-BMA+ from ``rows`` of the labels (see the docstring)."""
    fitted = fits(log_proba, y, STRATEGIES, rows)  # the weighted ensemble's candidates and temperatures
    n = int(rows.sum())
    e = -torch.rand(draws, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).log()
    alpha = e / e.sum(1, keepdim=True)                     # Dirichlet(1, ..., 1): the Bayesian bootstrap
    w = torch.softmax(n * alpha @ torch.stack([f.label_proba.clamp_min(1e-300).log() for f in fitted]).T, 1).mean(0)
    return keep_members(fitted, w)


def predictions(run: dict, keep: set[str] | None = None) -> tuple[list[str], dict, dict]:
    """A saved run's strategies (those in ``keep``, all: None), their held-out log probabilities of the labels and
    their test-set log probabilities."""
    names = [s for s in STRATEGIES if s in run["accuracy"] and s not in (WEIGHTED_ENSEMBLE, "top_ensemble")
             and (keep is None or s in keep)]
    log_proba = {s: run["cv_log_proba"][s].double() for s in names if run["cv_log_proba"].get(s) is not None}
    test_log_proba = {s: run["test_proba"][s].double().clamp_min(1e-30).log() for s in names}
    return names, log_proba, test_log_proba


def one_fit_correct(fitted: list, test_log_proba: dict, ty: torch.Tensor) -> torch.Tensor:
    """Which test rows the "one fit" rule gets right: ``fitted``'s candidates mixed with one stacking fit's
    weights (no bagging)."""
    m, w, t = keep_members(fitted, stacking_weights(torch.stack([f.label_proba for f in fitted], 1)))
    return mixture([test_log_proba[s] for s in m], w, t).argmax(1) == ty


def rules(run: dict, keep: set[str] | None, seed: int, fresh_draws: int = 200, fresh_ensemble_draws: int = 0) -> dict:
    y, ty = run["labeled_y"], run["test_y"]
    folds = stratified_folds(y, FOLDS, seed)
    names, log_proba, test_log_proba = predictions(run, keep)
    estimate = {s: Estimate.from_predictions(lp, y, folds) for s, lp in log_proba.items()}
    correct = {s: lp.argmax(1) == ty for s, lp in test_log_proba.items()}

    def report(weighted=None) -> str:
        return ComparisonReport(accuracy={}, embedding_mmd2={}, seconds={}, skipped={}, models={}, histories={},
                                config={}, estimate=estimate, weighted_ensemble=weighted).best

    we = weigh(log_proba, y, folds, STRATEGIES)
    correct[WEIGHTED_ENSEMBLE] = mixture([test_log_proba[s] for s in we.members], we.weights,
                                         we.temperatures).argmax(1) == ty
    fitted = fits(log_proba, y, STRATEGIES, None)
    correct["one fit"] = one_fit_correct(fitted, test_log_proba, ty)
    top3 = sorted(fitted, key=lambda f: f.loss)[:3]  # the candidates' own fits
    correct["top-3 mean"] = mixture([test_log_proba[f.strategy] for f in top3], [1 / 3] * 3,
                                    [f.temperature for f in top3]).argmax(1) == ty
    for rule, weights in (("pseudo-BMA", pseudo_bma), ("BMA+", bma_plus)):
        nested = torch.zeros_like(next(iter(log_proba.values())))
        for held in folds:
            m, w, t = weights(log_proba, y, training_rows(y.shape[0], held))
            nested[held] = mixture([log_proba[s][held] for s in m], w, t)
        if Estimate.from_predictions(nested, y, folds).loss < we.pick_one.loss:
            m, w, t = weights(log_proba, y, torch.ones_like(y, dtype=torch.bool))
            correct[rule] = mixture([test_log_proba[s] for s in m], w, t).argmax(1) == ty
        else:
            correct[rule] = correct[we.one]
    correct["guarded"] = correct[WEIGHTED_ENSEMBLE if we.better else we.one]
    correct["test labels, ensemble"] = ceiling_correct(test_log_proba, ty)
    acc = {s: float(c.double().mean()) for s, c in correct.items()}
    best = max(names, key=acc.get)
    picks = {"pick one": report(), "weighted_ensemble": WEIGHTED_ENSEMBLE, "best": report(we), "guarded": "guarded",
             "one fit": "one fit",
             "top-3 mean": "top-3 mean", "pseudo-BMA": "pseudo-BMA", "BMA+": "BMA+"}
    out = {"acc": acc, "test_best": best, "picks": picks, "weights": we.describe(),
           "fresh": (fresh_labels(test_log_proba, acc, y, ty, fresh_draws, ensemble_draws=fresh_ensemble_draws)
                     if fresh_draws else {"pick one": float("nan"), "ensemble": float("nan")})}
    for rule, s in {**picks, "test labels, ensemble": "test labels, ensemble"}.items():
        wins = int((correct[s] & ~correct[best]).sum())
        losses = int((~correct[s] & correct[best]).sum())
        out[rule] = (100 * (acc[s] - acc[best]), sign_test_p_value(wins, losses) < 0.05 and losses > wins)
    return out


def fewer_labels(run: dict, per_class: int, draws: int, seed: int = 0) -> dict[str, list[float]]:
    """Gaps to the test set's best (points) of the stacked ensemble always, "guarded", "one fit" and "pick one",
    each chosen from ``per_class`` labelled rows per class drawn from the run's, ``draws`` times (see the
    docstring)."""
    y, ty = run["labeled_y"], run["test_y"]
    _, log_proba, test_log_proba = predictions(run)
    acc = {s: float((lp.argmax(1) == ty).double().mean()) for s, lp in test_log_proba.items()}
    top = max(acc.values())
    g = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(y == c)[:, 0] for c in range(int(y.max()) + 1)]
    gaps: dict[str, list[float]] = {"weighted_ensemble": [], "guarded": [], "one fit": [], "pick one": []}
    for _ in range(draws):
        rows = torch.cat([r[torch.randperm(len(r), generator=g)[:per_class]] for r in by_class])
        we = weigh({s: lp[rows] for s, lp in log_proba.items()}, y[rows], stratified_folds(y[rows], per_class, seed),
                   STRATEGIES)
        mixed = float((mixture([test_log_proba[s] for s in we.members], we.weights, we.temperatures).argmax(1)
                       == ty).double().mean())
        gaps["weighted_ensemble"].append(100 * (mixed - top))
        gaps["guarded"].append(100 * ((mixed if we.better else acc[we.one]) - top))
        gaps["pick one"].append(100 * (acc[we.one] - top))
        fitted = fits({s: lp[rows] for s, lp in log_proba.items()}, y[rows], STRATEGIES, None)
        gaps["one fit"].append(100 * (float(one_fit_correct(fitted, test_log_proba, ty).double().mean()) - top))
    return gaps


def fresh_labels(log_proba: dict, acc: dict, y: torch.Tensor, ty: torch.Tensor, draws: int = 200,
                 seed: int = 0, ensemble_draws: int = 0) -> dict[str, float]:
    """The fraction of ``draws`` of fresh labelled test rows (as many per class as the labels ``y``) on which the
    strategy with the lowest calibrated cross-entropy is within 2 points of the test set's best ("pick one"; see the
    docstring), and of the first ``ensemble_draws`` of them on which the bagged stacked ensemble of the final models,
    weighed on those rows, is ("ensemble"; NaN without draws); log_proba: each strategy's test-set log
    probabilities, acc: its test accuracy."""
    per_class = torch.bincount(y, minlength=int(ty.max()) + 1)
    top = max(acc[s] for s in log_proba)
    g = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(ty == c)[:, 0] for c in range(len(per_class))]
    hits, mixed = 0, []
    for d in range(draws):
        rows = torch.cat([r[torch.randperm(len(r), generator=g)[:int(k)]] for r, k in zip(by_class, per_class)])
        loss = {s: calibrated_cross_entropy(lp[rows], ty[rows])[0] for s, lp in log_proba.items()}
        hits += acc[min(loss, key=loss.get)] >= top - 0.02
        if d < ensemble_draws:
            m, w, t = weigh_members(log_proba, ty, STRATEGIES, rows)  # as shipped: bagged stacking
            right = mixture([log_proba[s] for s in m], w, t).argmax(1) == ty
            mixed.append(float(right.double().mean()) >= top - 0.02)
    return {"pick one": hits / draws, "ensemble": sum(mixed) / len(mixed) if mixed else float("nan")}


def ceiling_correct(log_proba: dict, ty: torch.Tensor) -> torch.Tensor:
    """Which test rows the stacked ensemble gets right whose weights and temperatures are fitted on every test label
    (one stacking fit): what weighing by log-likelihood could reach with unlimited labels; log_proba: each
    strategy's test-set log probabilities."""
    return one_fit_correct(fits(log_proba, ty, STRATEGIES, None), log_proba, ty)


def at_least(p: list[float], k: int) -> float:
    """The probability that at least k of independent events with probabilities ``p`` happen (Poisson binomial)."""
    dist = torch.zeros(len(p) + 1, dtype=torch.float64)
    dist[0] = 1.0
    for q in p:
        dist[1:] = dist[1:] * (1 - q) + dist[:-1] * q
        dist[0] *= 1 - q
    return float(dist[k:].sum())


PER_STRATEGY = ("accuracy", "test_proba", "cv_log_proba", "seconds", "lambdas")


def load(paths: list[str]) -> dict:
    """One saved run from its parts: the per-strategy tables merged (the first part's entry where two have one:
    a part with only the semi-supervised strategies searched λ without fine-tuning every λ), the rest from the
    first part. Parts that chose different stage-1 λs for one alignment would not be one comparison: refused."""
    parts = [torch.load(p, weights_only=False) for p in paths]
    run = dict(parts[0])
    for key in PER_STRATEGY:
        run[key] = {}
        for part in parts:
            for k, v in (part.get(key) or {}).items():
                if key == "lambdas" and k in run[key] and run[key][k][0] != v[0]:
                    raise ValueError(f"{paths}: the parts chose different λ for {k}: {run[key][k][0]} and {v[0]}")
                run[key].setdefault(k, v)
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="+", help="where vector_regime.py --save wrote its runs (a run saved in parts, "
                                              "the same file name in several folders, is merged)")
    ap.add_argument("--strategies", nargs="*", default=None, help="only these (default: every saved one)")
    ap.add_argument("--fresh-draws", type=int, default=200, help="draws of the fresh-label floor (0: skip it)")
    ap.add_argument("--fresh-ensemble-draws", type=int, default=0,
                    help="of those, how many also weigh the stacked ensemble on the fresh labels (0: none; ~1 s each)")
    ap.add_argument("--labels-per-class", type=int, default=None, help="fewer labels: choose from this many per "
                                                                       "class, drawn from each run's (see above)")
    ap.add_argument("--draws", type=int, default=10, help="--labels-per-class: draws per run")
    args = ap.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # a row per run as it ends, also into a file (a run can take minutes)
        sys.stdout.reconfigure(line_buffering=True)
    keep = set(args.strategies) if args.strategies else None
    if args.labels_per_class is not None:
        return main_fewer(args.folder, args.labels_per_class, args.draws)
    print("| run | source_only | best unsupervised (gain) | scratch | naive | best ssl | test set's best | "
          "pick one | weighted_ensemble | best (which) | guarded | one fit | top-3 mean | pseudo-BMA | BMA+ | "
          "fresh labels | fresh labels, ensemble | test labels, ensemble |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    tally: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    fresh: dict[str, list[dict[str, float]]] = {}
    saved: dict[str, list[str]] = {}
    for p in sorted(p for f in args.folder for p in glob.glob(os.path.join(f, "*.pt"))):
        saved.setdefault(os.path.basename(p), []).append(p)
    for base, paths in sorted(saved.items()):
        run = load(paths)
        if run["labeled_y"] is None:
            continue
        if not {"source_only", "scratch", "naive"} <= set(run["accuracy"]):  # a part whose main run is elsewhere
            print(f"{base}: skipped, it holds only {sorted(run['accuracy'])} (give the folder of its other part)",
                  file=sys.stderr)
            continue
        name = base[:-3]
        regime, seed = name.split("_")[0], int(name.rsplit("_", 1)[1])
        r = rules(run, keep, seed, args.fresh_draws, args.fresh_ensemble_draws)
        a = {s: 100 * v for s, v in r["acc"].items()}
        unsup = max((s for s in UNSUPERVISED if s in a), key=a.get, default=None)
        ssl = max((s for s in SEMI_SUPERVISED if s in a), key=a.get, default=None)

        def cell(rule):
            gap, significant = r[rule]
            return f"{gap:+.1f}{' (sig.)' if significant else ''}"
        unsup_cell = f"{unsup} {a[unsup]:.1f} ({a[unsup] - a['source_only']:+.1f})" if unsup else "-"
        ssl_cell = f"{ssl} {a[ssl]:.1f}" if ssl else "-"
        print(f"| {name} | {a['source_only']:.1f} | {unsup_cell} | {a['scratch']:.1f} | {a['naive']:.1f} | {ssl_cell} | "
              f"{r['test_best']} {a[r['test_best']]:.1f} | {cell('pick one')} ({r['picks']['pick one']}) | "
              f"{cell('weighted_ensemble')} | {cell('best')} ({r['picks']['best']}) | {cell('guarded')} | "
              f"{cell('one fit')} | {cell('top-3 mean')} | "
              f"{cell('pseudo-BMA')} | {cell('BMA+')} | {r['fresh']['pick one']:.2f} | {r['fresh']['ensemble']:.2f} | "
              f"{cell('test labels, ensemble')} |")
        fresh.setdefault(regime, []).append(r["fresh"])
        for rule in ("pick one", "weighted_ensemble", "best", "guarded", "one fit", "top-3 mean", "pseudo-BMA",
                     "BMA+", "test labels, ensemble"):
            tally.setdefault((regime, rule), []).append(r[rule])
    print("\n| regime | rule | within 2 points of the test set's best | not significantly below it | mean gap | worst |")
    print("|---|---|---|---|---|---|")
    for (regime, rule), v in sorted(tally.items()):
        gaps = [g for g, _ in v]
        print(f"| {regime} | {rule} | {sum(g >= -2 for g in gaps)}/{len(v)} | {sum(not s for _, s in v)}/{len(v)} | "
              f"{sum(gaps) / len(gaps):+.1f} | {min(gaps):+.1f} |")
    for regime, f in sorted(fresh.items()):
        for rule in ("pick one", "ensemble"):
            p = [x[rule] for x in f]
            if any(q != q for q in p):  # not measured (--fresh-draws 0, or no --fresh-ensemble-draws)
                continue
            need = -(-8 * len(p) // 9)  # the 8 of 9, as a share of the regime's runs
            print(f"| {regime} | fresh labels, {rule} (expected) | {sum(p):.1f}/{len(p)} | - | - | "
                  f"P(at least {need}): {at_least(p, need):.2f} |")
    return 0


def main_fewer(folders: list[str], per_class: int, draws: int) -> int:
    """The --labels-per-class table: per regime and rule, the share of draws within 2 points, mean and worst gap."""
    gaps: dict[tuple[str, str], list[float]] = {}
    for p in sorted(p for f in folders for p in glob.glob(os.path.join(f, "*.pt"))):
        run = load([p])
        if run["labeled_y"] is None:
            continue
        name = os.path.basename(p)[:-3]
        regime = f"{name.split('_')[0]} ({name.split('_')[-2]})"  # e.g. "embeddings (default)"
        for rule, g in fewer_labels(run, per_class, draws, int(name.rsplit("_", 1)[1])).items():
            gaps.setdefault((regime, rule), []).extend(g)
    print(f"| regime, {per_class} labels per class | rule | draws within 2 points of the test set's best | mean gap "
          "| worst |")
    print("|---|---|---|---|---|")
    for (regime, rule), g in sorted(gaps.items()):
        within = sum(x >= -2 for x in g) / len(g)
        print(f"| {regime} | {rule} | {within:.2f} | {sum(g) / len(g):+.2f} | {min(g):+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
