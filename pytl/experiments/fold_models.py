"""ship="folds": what a comparison ships when each label-using strategy is the mean of its cross-validation fold
models. The held-out predictions that estimate a strategy, and that weigh it in "weighted_ensemble", are then
predictions of the models that ship; with ship="refit" they are predictions of fold models trained on (k−1)/k of
the labels, while the model that ships saw them all (benchmarks/OUTCOMES.md measures both).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence

from torch import nn

from pytl.experiments.ensemble import EnsembleModel
from pytl.experiments.lambda_search import LambdaSearch

__all__ = ["FoldModels", "Trained"]

#: one training run: its model, its history and its seconds
Trained = tuple[nn.Module, dict[str, list], float]


class FoldModels:
    """Each strategy's cross-validation runs, in fold order, kept when ``keep`` (ship="folds"), and their seconds
    (a fine-tuned strategy whose λ is searched: every λ's fold runs)."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.runs: dict[str, list[tuple[nn.Module, dict[str, list]]]] = {}
        self.seconds: dict[str, float] = {}

    def add(self, name: str, trained: Trained) -> None:
        """A fold's run of ``name`` (kept when ``keep``)."""
        model, history, seconds = trained
        if self.keep:
            self.runs.setdefault(name, []).append((model, history))
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def add_chosen(self, name: str, search: LambdaSearch, trained: Mapping[float, list[Trained]],
                   stage1: Mapping[float, dict[str, list]]) -> None:
        """A fine-tuned strategy whose λ each fold chose from the other folds' labels: fold k's model is the one
        trained from its own choice's stage-1 model (``trained``: λ → its run per fold; ``stage1``: λ → that
        stage 1's history); the seconds are every λ's runs."""
        if self.keep:
            self.runs[name] = [(trained[lam][k][0], {"align": stage1[lam]["align"],
                                                     "finetune": trained[lam][k][1]["finetune"]})
                               for k, lam in enumerate(search.finetune_fold_choices)]
            self.seconds[name] = sum(run[2] for runs in trained.values() for run in runs)

    def add_ensembles(self) -> None:
        """Each fold's "ensemble": the mean of its "mmd" and its "scratch", once both are kept (a searched "mmd"
        only after the folds chose its λ)."""
        if self.keep:
            self.runs["ensemble"] = [(EnsembleModel([mmd, plain]), {"align": [], "finetune": []})
                                     for (mmd, _), (plain, _) in zip(self.runs["mmd"], self.runs["scratch"])]

    def ship(self, wanted: Sequence[str], models: MutableMapping[str, nn.Module],
             histories: MutableMapping[str, dict], seconds: MutableMapping[str, float],
             starts: Mapping[str, str], searches: Mapping[str, LambdaSearch]) -> None:
        """Each wanted label-using strategy's model becomes the mean of its fold models (history: fold 1's;
        seconds: its fold runs' and those of the stage 1 it starts from, ``starts``: strategy → that stage 1's
        name). A "<alignment>_only" whose λ each fold chose from the other folds' labels becomes the mean of
        those choices' stage-1 models, weighted by how many folds chose each (where all agree: that model)."""
        def cost(s: str) -> float:
            return self.seconds.get(s, 0.0) + seconds.get(starts.get(s, ""), 0.0)
        for s in wanted:
            if s in self.runs:
                models[s], histories[s] = EnsembleModel([m for m, _ in self.runs[s]]), self.runs[s][0][1]
                seconds[s] = cost("mmd") + cost("scratch") if s == "ensemble" else cost(s)
        for a, search in searches.items():
            chosen = Counter(search.fold_choices)  # λ → how many folds chose it
            if f"{a}_only" in wanted and len(chosen) > 1:
                models[f"{a}_only"] = EnsembleModel([search.models[lam] for lam in chosen],
                                                    weights=[n / len(search.fold_choices) for n in chosen.values()])
