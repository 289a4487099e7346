"""scikit-learn estimators for feature vectors (tabular data, embeddings exported from a backbone): pytl's
strategies behind ``fit``/``predict``, so they drop into ``Pipeline``, ``GridSearchCV``, ``cross_val_score``
and ``clone``. Needs scikit-learn (``pip install 'pytl[sklearn]'``), imported by this module only.

Domains follow skada's convention: ``fit(X, y, sample_domain=...)`` with positive domain ids for source rows
and negative ids for target rows, and ``y = -1`` for the target rows without a label.
``pack_domains(X_source, y_source, X_target, y_target)`` builds the three arrays from separate sets. Without
``sample_domain`` every row is a labelled source row and the estimator is a plain classifier (-1 is then a
label like any other: skada reads it as "unlabelled target" there too, but scikit-learn's own checks, and
users' binary {-1, 1} labels, use it as a class).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.model_selection import StratifiedKFold
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
except ImportError as e:  # scikit-learn missing, or older than 1.6 (validate_data, __sklearn_tags__)
    raise ImportError("pytl.sklearn needs scikit-learn >= 1.6: pip install -U scikit-learn (or pip install "
                      "'pytl[sklearn]')") from e

from pytl._checks import DataWarning, warn_user
from pytl.experiments import compare_strategies
from pytl.experiments.weighted_ensemble import WEIGHTED_ENSEMBLE
from pytl.experiments.strategies import ALIGNED, DEFAULT_STRATEGIES, NEEDS_TARGET_LABELS, SEMI_SUPERVISED, STRATEGIES
from pytl.inference import EVAL_BATCH, eval_mode

__all__ = ["UNLABELLED", "DomainAwareSplit", "TransferClassifier", "pack_domains"]

#: the label of a target row without one (skada's convention)
UNLABELLED = -1


def pack_domains(X_source: Any, y_source: Any, X_target: Any, y_target: Any = None) -> tuple[np.ndarray, np.ndarray,
                                                                                                np.ndarray]:
    """(X, y, sample_domain) for ``fit`` from separate sets: source rows get domain 1, target rows domain -1;
    ``y_target`` None (no target label) or with -1 where a target row has none."""
    Xs, Xt = np.asarray(X_source), np.asarray(X_target)
    ys = np.asarray(y_source)
    yt = np.full(len(Xt), UNLABELLED, dtype=ys.dtype if ys.dtype.kind in "iu" else np.int64) \
        if y_target is None else np.asarray(y_target)
    if len(ys) != len(Xs) or len(yt) != len(Xt):
        raise ValueError(f"pack_domains: X_source has {len(Xs)} rows and y_source {len(ys)}; X_target has {len(Xt)} "
                         f"rows and y_target {len(yt)}: each X and its y need one row per sample")
    domain = np.concatenate([np.ones(len(Xs), dtype=np.int64), -np.ones(len(Xt), dtype=np.int64)])
    return np.concatenate([Xs, Xt]), np.concatenate([ys, yt]), domain


def _unlabelled(y: np.ndarray) -> np.ndarray:
    """Which rows carry the unlabelled marker (-1); string labels cannot mark one."""
    return y == UNLABELLED if y.dtype.kind in "iuf" else np.zeros(len(y), dtype=bool)


def _domains(y: np.ndarray, sample_domain: Any) -> np.ndarray:
    """sample_domain checked: one non-zero integer per row."""
    d = column_or_1d(np.asarray(sample_domain))
    if len(d) != len(y):
        raise ValueError(f"sample_domain has {len(d)} entries for {len(y)} rows: one domain id per row")
    if d.dtype.kind not in "iu" and not (d.dtype.kind == "f" and np.all(d == np.round(d))):
        raise TypeError(f"sample_domain must hold integer domain ids (positive: source, negative: target), got "
                        f"dtype {d.dtype}")
    d = d.astype(np.int64)
    if np.any(d == 0):
        raise ValueError("sample_domain holds 0: domain ids are positive for source rows and negative for target rows")
    return d


class TransferClassifier(ClassifierMixin, BaseEstimator):
    """A pytl transfer strategy as a scikit-learn classifier (the default MLP, over feature vectors).

    strategy: "auto" (default) runs ``compare_strategies`` inside ``fit`` and keeps its choice: with target
    labels the cross-validated best of its default strategies, without them the label-free ranking's best,
    and without any target row a source-trained model; or a strategy's name ("mmd", "ssl_cmmd", ...)
    trains just that one. ``report_`` keeps the comparison, ``best_`` the strategy the model comes from.
    lambda_align: the weight of the strategy's alignment (its ``lambda_<alignment>`` option; with "auto",
    every alignment's), a number, "auto" or a grid; None: pytl's default ("auto": chosen by the target labels
    where there are some, else the alignment's default).
    hidden_sizes, align_epochs, finetune_epochs, lr, batch_size, folds, criterion, device, num_threads:
    ``compare_strategies``' options of the same names (None: pytl's defaults). settings: any other option
    of ``compare_strategies`` as a dict. random_state: an int, a RandomState or None (a seed drawn from
    numpy's global generator), as everywhere in scikit-learn.

    Fitted attributes: ``classes_``, ``n_features_in_``, ``model_`` (the torch module), ``best_``,
    ``report_`` (the ComparisonReport; None when no target row was given).
    """

    def __init__(self, strategy: str = "auto", lambda_align: Any = None, hidden_sizes: Any = None,
                 align_epochs: int | None = None, finetune_epochs: int | None = None, lr: float | None = None,
                 batch_size: int | None = None, folds: int | None = 5, criterion: str | None = None,
                 device: str | None = None, num_threads: Any = "auto", random_state: Any = None,
                 progress: bool = False, settings: dict | None = None) -> None:
        self.strategy = strategy
        self.lambda_align = lambda_align
        self.hidden_sizes = hidden_sizes
        self.align_epochs = align_epochs
        self.finetune_epochs = finetune_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.folds = folds
        self.criterion = criterion
        self.device = device
        self.num_threads = num_threads
        self.random_state = random_state
        self.progress = progress
        self.settings = settings

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any, sample_domain: Any = None) -> TransferClassifier:
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), y_numeric=False)
        X = np.array(X, dtype=np.float32)  # a writable copy: torch refuses read-only memory maps
        if sample_domain is None:  # a plain classifier: every row a labelled source row
            domain, unlabelled = np.ones(len(y), dtype=np.int64), np.zeros(len(y), dtype=bool)
        else:
            domain, unlabelled = _domains(y, sample_domain), _unlabelled(y)
        source, target = domain > 0, domain < 0
        if np.any(source & unlabelled):
            raise ValueError("a source row (positive sample_domain) has y = -1, which marks a target row without a "
                             "label; with sample_domain, class labels must not be -1 (relabel that class)")
        labelled_y = y[~unlabelled]
        check_classification_targets(labelled_y)
        self.classes_ = np.unique(labelled_y)
        if len(self.classes_) < 2:
            raise ValueError(f"the labelled rows hold 1 class ({self.classes_[0]}); a classifier needs at least 2")
        index = np.searchsorted(self.classes_, np.where(unlabelled, self.classes_[0], y))
        y_idx = np.where(unlabelled, -1, index).astype(np.int64)
        target_labelled = target & ~unlabelled
        strategy = self._check_strategy(target.any(), target_labelled.any())
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        data = {"source": (X[source], y_idx[source]),
                "target_unlabeled": X[target] if target.any() else X[source],
                "target_labeled": (X[target_labelled], y_idx[target_labelled]) if target_labelled.any() else None}
        strategies, folds = self._plan(strategy, y_idx[target_labelled])
        report = compare_strategies(**data, strategies=strategies, folds=folds, seed=seed, **self._config(strategies))
        self.best_ = strategy if strategy != "auto" else report.best
        if self.best_ is None:  # "auto" with labels too few to cross-validate: nothing ranked the strategies
            self.best_ = "mmd" if "mmd" in report.models else next(iter(report.models))
            warn_user(f"strategy='auto': too few target labels per class to cross-validate (folds={self.folds}), so "
                      f"nothing ranked the strategies; the model is the tutorial's recipe, {self.best_!r}. Give each "
                      "class at least 2 labels, or name a strategy", DataWarning)
        self.model_ = report.models[self.best_]
        self.report_ = report if target.any() else None
        return self

    def _check_strategy(self, has_target: bool, has_labels: bool) -> str:
        allowed = ("auto", *(s for s in STRATEGIES if s != WEIGHTED_ENSEMBLE))  # it averages the others: none alone
        if self.strategy not in allowed:
            raise ValueError(f"strategy={self.strategy!r}; expected one of {allowed}")
        if self.strategy == "auto":
            return "auto" if has_target else "source_only"
        if not has_target and self.strategy != "source_only":
            raise ValueError(f"strategy={self.strategy!r} needs target rows: pass sample_domain, with negative ids for "
                             "the target rows")
        if self.strategy in NEEDS_TARGET_LABELS and not has_labels:
            raise ValueError(f"strategy={self.strategy!r} needs target labels: target rows (negative sample_domain) "
                             "with y != -1")
        return self.strategy

    def _plan(self, strategy: str, target_labels: np.ndarray) -> tuple[Any, int | None]:
        """The strategies compare_strategies runs and its folds (cross-validation only where "auto" chooses)."""
        if strategy != "auto":
            return [strategy], None
        if len(target_labels) == 0:
            return [s for s in DEFAULT_STRATEGIES if s not in NEEDS_TARGET_LABELS], None
        fewest = int(np.bincount(target_labels).min()) if len(np.unique(target_labels)) == len(self.classes_) else 0
        folds = None if not self.folds else min(int(self.folds), fewest)
        return list(DEFAULT_STRATEGIES), folds if folds and folds >= 2 else None

    def _config(self, strategies: list[str]) -> dict[str, Any]:
        cfg: dict[str, Any] = dict(self.settings or {})
        for name in ("hidden_sizes", "align_epochs", "finetune_epochs", "lr", "batch_size", "criterion", "device"):
            value = getattr(self, name)
            if value is not None:
                cfg[name] = tuple(value) if name == "hidden_sizes" else value
        cfg.update(num_threads=self.num_threads, progress=self.progress, num_classes=len(self.classes_))
        if self.lambda_align is not None:
            aligned = {SEMI_SUPERVISED.get(s, s.removesuffix("_only")) for s in strategies} & set(ALIGNED)
            cfg.update({ALIGNED[a]: self.lambda_align for a in aligned})
        return cfg

    # -------------------------------------------------------------------------------------- predict
    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        x = torch.from_numpy(np.array(X, dtype=np.float32))
        p = next(self.model_.parameters())
        with torch.no_grad(), eval_mode(self.model_):
            out = [torch.softmax(self.model_(b.to(p.device, p.dtype)).double(), 1).cpu() for b in x.split(EVAL_BATCH)]
        return torch.cat(out).numpy()

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)  # checks first that the estimator is fitted
        return self.classes_[proba.argmax(1)]

    def score(self, X: Any, y: Any, sample_weight: Any = None, sample_domain: Any = None) -> float:
        """Accuracy; with ``sample_domain``, on the labelled target rows only (negative domain, y != -1)."""
        if sample_domain is None:
            return super().score(X, y, sample_weight=sample_weight)
        y = column_or_1d(np.asarray(y))
        keep = (_domains(y, sample_domain) < 0) & ~_unlabelled(y)
        if not keep.any():
            raise ValueError("score: no labelled target row (negative sample_domain, y != -1) to score")
        w = None if sample_weight is None else np.asarray(sample_weight)[keep]
        return super().score(np.asarray(X)[keep], y[keep], sample_weight=w)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class DomainAwareSplit:
    """Cross-validation that scores target rows: each split tests on a stratified fold of the *labelled target*
    rows and trains on every source row and every other target row (the unlabelled ones included). Pass the
    domains as ``groups`` (``GridSearchCV(...).fit(X, y, groups=sample_domain, ...)``)."""

    def __init__(self, n_splits: int = 5, shuffle: bool = True, random_state: Any = 0) -> None:
        if not isinstance(n_splits, numbers.Integral) or isinstance(n_splits, bool) or n_splits < 2:
            raise ValueError(f"n_splits={n_splits!r}; expected an integer >= 2")
        self.n_splits, self.shuffle, self.random_state = int(n_splits), shuffle, random_state

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        return self.n_splits

    def split(self, X: Any, y: Any, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if y is None:
            raise ValueError("DomainAwareSplit.split needs y: its folds are stratified over the target labels")
        if groups is None:
            raise ValueError("DomainAwareSplit.split needs groups=sample_domain (positive: source, negative: target)")
        y = column_or_1d(np.asarray(y))
        domain = _domains(y, groups)
        scored = np.flatnonzero((domain < 0) & ~_unlabelled(y))
        if len(scored) < self.n_splits:
            raise ValueError(f"DomainAwareSplit: {len(scored)} labelled target row(s) for n_splits={self.n_splits}; "
                             "each split tests on a fold of them (pass the domains as groups=sample_domain)")
        folds = StratifiedKFold(self.n_splits, shuffle=self.shuffle,
                                random_state=self.random_state if self.shuffle else None)
        everything = np.arange(len(y))
        for _, test in folds.split(scored, y[scored]):
            held_out = scored[test]
            yield np.setdiff1d(everything, held_out), held_out
