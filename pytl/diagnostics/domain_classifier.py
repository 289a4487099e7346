"""Ben-David et al.'s proxy A-distance: how well a domain classifier tells the source from the target."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pytl._samples import as_matrix, check_same_features
from pytl._checks import check_choice, check_int, check_optional_int

__all__ = ["CLASSIFIERS", "MIN_PAD_SAMPLES", "pad_held_out_errors", "proxy_a_distance", "train_domain_classifier"]

CLASSIFIERS = ("linear", "mlp")
MIN_PAD_SAMPLES = 4  # per domain: 2 to train on and 2 held out


def as_domains(xs: Any, xt: Any) -> tuple[Tensor, Tensor]:
    """Source and target features (numpy arrays, lists or tensors) as checked matrices of one width."""
    xs, xt = as_matrix(xs, "xs"), as_matrix(xt, "xt")
    check_same_features(xs, xt, ("xs", "xt"))
    return xs, xt


def train_domain_classifier(X: Tensor, labels: Tensor, classifier: str, seed: int) -> nn.Module:
    """Full-batch training of a linear (logistic regression, L-BFGS) or one-hidden-layer MLP (Adam)
    domain classifier on standardised float64 features; returns a module producing logits."""
    d = X.shape[1]
    # Small problems train on one thread: faster than two (OpenMP barriers dominate tiny ops, badly so
    # on a busy machine). The global setting is restored afterwards.
    threads = torch.get_num_threads()
    single = X.numel() <= 1 << 20
    if single:
        torch.set_num_threads(1)
    try:
        return _fit(X, labels, classifier, seed, d)
    finally:
        if single:
            torch.set_num_threads(threads)


def _fit(X: Tensor, labels: Tensor, classifier: str, seed: int, d: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if classifier == "linear":
            model = nn.Linear(d, 1).double()
            opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, history_size=20,
                                    line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = F.binary_cross_entropy_with_logits(model(X)[:, 0], labels) + 1e-3 * model.weight.pow(2).sum()
                loss.backward()
                return loss

            opt.step(closure)
        else:
            model = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 1)).double()
            opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
            for _ in range(200):
                opt.zero_grad()
                F.binary_cross_entropy_with_logits(model(X)[:, 0], labels).backward()
                opt.step()
    return model


def proxy_a_distance(
    xs: Any,
    xt: Any,
    seed: int = 0,
    classifier: str = "linear",
    *,
    max_samples: int | None = 10_000,
) -> float:
    """Proxy A-distance 2 (1 - 2 eps) of Ben-David et al. (2007, 2010), clipped to [0, 2].

    xs (n_s, d), xt (n_t, d): source and target features, numpy arrays, nested lists or tensors.
    A domain classifier ("linear": logistic regression; "mlp": one hidden layer of 64) is trained to
    tell source (xs) from target (xt) rows on a balanced split (the same number k of rows from each
    domain, at most max_samples, half of them for training) and eps is its error on the held-out half.
    0: the domains are indistinguishable to the classifier; 2: perfectly separable. Seeded.
    """
    wrong = pad_held_out_errors(xs, xt, seed, classifier, max_samples=max_samples)
    eps = float(wrong.double().mean())
    return float(min(2.0, max(0.0, 2.0 * (1.0 - 2.0 * eps))))


def pad_held_out_errors(xs: Any, xt: Any, seed: int = 0, classifier: str = "linear", *,
                        max_samples: int | None = 10_000) -> Tensor:
    """The domain classifier of :func:`proxy_a_distance`: whether it errs on each held-out row (bool, source
    rows then target rows), from which the PAD and its bootstrap interval (pytl.diagnostics.feasibility) follow."""
    xs, xt = as_domains(xs, xt)
    seed = check_int(seed, "seed", 0)
    check_choice(classifier, "classifier", CLASSIFIERS)
    max_samples = check_optional_int(max_samples, "max_samples", MIN_PAD_SAMPLES)
    k = min(xs.shape[0], xt.shape[0])
    if k < MIN_PAD_SAMPLES:
        raise ValueError(
            f"proxy_a_distance needs at least {MIN_PAD_SAMPLES} samples in each domain (half to train the "
            f"domain classifier, half to evaluate it), got {xs.shape[0]} source and {xt.shape[0]} target samples"
        )
    if max_samples is not None:
        k = min(k, max_samples)
    g = torch.Generator().manual_seed(seed)
    s_idx = torch.randperm(xs.shape[0], generator=g)[:k]
    t_idx = torch.randperm(xt.shape[0], generator=g)[:k]
    a = xs.detach().cpu().double()[s_idx]
    b = xt.detach().cpu().double()[t_idx]
    k_train = k // 2
    X_train = torch.cat([a[:k_train], b[:k_train]])
    X_test = torch.cat([a[k_train:], b[k_train:]])
    y_train = torch.cat([torch.zeros(k_train), torch.ones(k_train)]).double()
    y_test = torch.cat([torch.zeros(k - k_train), torch.ones(k - k_train)]).double()
    mean = X_train.mean(0, keepdim=True)
    std = X_train.std(0, keepdim=True).nan_to_num(1.0).clamp_min(1e-12)
    X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
    if not bool(torch.isfinite(X_train).all()) or not bool(torch.isfinite(X_test).all()):
        raise ValueError("xs and xt must be finite (found NaN or inf)")
    model = train_domain_classifier(X_train, y_train, classifier, seed)
    with torch.no_grad():
        pred = (model(X_test)[:, 0] > 0).double()
    return pred != y_test
