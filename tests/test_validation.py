"""Label-free model selection: the criteria of pytl.validation against float64 hand computations, and
select_lambda (pytl.experiments.lambda_selection)."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pytl
import pytl.validation as pv
from pytl.models import TransferModel
from pytl.validation import ratios

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------------------ a tiny fixed case

W1 = np.array([[0.5, -1.0], [1.5, 0.25], [-0.75, 0.5]])  # encoder: 2 → 3
B1 = np.array([0.1, -0.2, 0.3])
W2 = np.array([[1.0, -0.5, 0.25], [-0.3, 0.8, 0.6]])  # head: 3 → 2
B2 = np.array([0.05, -0.1])
XS = np.array([[0.2, -1.0], [1.0, 0.5], [-0.7, 0.3], [0.4, 0.9], [-1.2, -0.4], [0.8, -0.6], [0.1, 0.1], [-0.3, 1.4]])
YS = np.array([0, 1, 0, 1, 1, 0, 1, 0])
XT = np.array([[1.5, 0.2], [0.9, 1.1], [-0.4, 0.8], [2.0, -0.3], [0.6, 0.6], [1.2, 1.6], [-0.1, -0.9]])


def linear_model() -> TransferModel:
    enc, head = nn.Linear(2, 3).double(), nn.Linear(3, 2).double()
    with torch.no_grad():
        enc.weight.copy_(torch.tensor(W1))
        enc.bias.copy_(torch.tensor(B1))
        head.weight.copy_(torch.tensor(W2))
        head.bias.copy_(torch.tensor(B2))
    return TransferModel(enc, head)


def np_logits(x):
    return (x @ W1.T + B1) @ W2.T + B2


def np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_entropy(p):
    return -(p * np.log(p)).sum(-1)


def np_ce(x, y):
    p = np_softmax(np_logits(x))
    return -np.log(p[np.arange(len(y)), y])


def naive_snd(probs, tau=0.05):
    """The full n × n float64 reference: normalise, similarity, diagonal out, row softmax, mean entropy."""
    p = probs / np.linalg.norm(probs, axis=1, keepdims=True)
    s = p @ p.T / tau
    n = len(p)
    total = 0.0
    for i in range(n):
        row = np.delete(s[i], i)
        q = np.exp(row - row.max())
        q /= q.sum()
        total += -(q * np.log(q)).sum()
    return total / n


# ------------------------------------------------------------------------------------ target-only criteria


def test_entropy_and_im_match_hand_computation():
    m = linear_model()
    p = np_softmax(np_logits(XT))
    assert pv.prediction_entropy(m, None, XT) == pytest.approx(-np_entropy(p).mean(), rel=1e-12)
    im = np_entropy(p.mean(0)) - np_entropy(p).mean()
    assert pv.information_maximization(m, (XS, YS), XT) == pytest.approx(im, rel=1e-12)
    assert pv.score("entropy", m, (XS, YS), XT) == pv.prediction_entropy(m, (XS, YS), XT)
    assert pv.score("im", m, None, XT) == pv.information_maximization(m, None, XT)


def test_snd_matches_naive_full_matrix():
    m = linear_model()
    ref = naive_snd(np_softmax(np_logits(XT)))
    assert pv.soft_neighborhood_density(m, None, XT) == pytest.approx(ref, rel=1e-12)
    assert pv.score("snd", m, (XS, YS), XT, temperature=0.05) == pytest.approx(ref, rel=1e-12)
    ref2 = naive_snd(np_softmax(np_logits(XT)), tau=0.5)
    assert pv.soft_neighborhood_density(m, None, XT, temperature=0.5) == pytest.approx(ref2, rel=1e-12)


def test_snd_chunking_gives_the_same_value():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(257, 4, generator=g, dtype=torch.float64) * 3, 1)
    full = pv.snd_from_probabilities(probs, chunk_size=257)
    assert full == pytest.approx(naive_snd(probs.numpy()), rel=1e-12)
    for c in (1, 7, 64, 1000, None):
        assert pv.snd_from_probabilities(probs, chunk_size=c) == pytest.approx(full, rel=1e-13, abs=0)


def test_snd_default_chunk_bounds_memory(monkeypatch):
    """With the default chunk, no similarity block is larger than CHUNK_ELEMENTS entries."""
    from pytl.validation import snd
    probs = torch.softmax(torch.randn(50, 3, dtype=torch.float64), 1)
    monkeypatch.setattr(snd, "CHUNK_ELEMENTS", 100)
    seen = []
    real_softmax = torch.softmax

    def spy(t, dim):
        seen.append(t.numel())
        return real_softmax(t, dim)

    monkeypatch.setattr(snd.torch, "softmax", spy)
    snd.snd_from_probabilities(probs)
    assert max(seen) <= 100 and len(seen) == 25


# ------------------------------------------------------------------------------------ IWV and DEV: the formulas

KNOWN_W = np.array([0.5, 1.5, 2.0, 0.25, 1.0, 3.0, 0.75, 0.1])


@pytest.fixture
def known_ratios(monkeypatch):
    """Replaces the density-ratio estimate by KNOWN_W (the documented hook of pytl.validation.ratios)."""
    calls = []

    def fake(source, target, **kw):
        calls.append((source.shape, target.shape, kw))
        return torch.tensor(KNOWN_W)

    monkeypatch.setattr(ratios, "density_ratios", fake)
    return calls


@pytest.mark.parametrize("loss", ["cross_entropy", "zero_one"])
def test_iwv_formula_with_known_ratios(known_ratios, loss):
    m = linear_model()
    ell = np_ce(XS, YS) if loss == "cross_entropy" else (np_logits(XS).argmax(1) != YS).astype(float)
    expected = -(KNOWN_W * ell).mean()
    assert pv.importance_weighted(m, (XS, YS), XT, loss=loss) == pytest.approx(expected, rel=1e-12)
    # embeddings by default (3 features), the raw inputs with features="input" (2)
    assert known_ratios[0][0] == (8, 3) and known_ratios[0][1] == (7, 3)
    pv.importance_weighted(m, (XS, YS), XT, features="input")
    assert known_ratios[-1][0] == (8, 2)


def test_dev_formula_with_known_ratios(known_ratios):
    m = linear_model()
    L = KNOWN_W * np_ce(XS, YS)
    eta = -np.cov(L, KNOWN_W, ddof=1)[0, 1] / np.var(KNOWN_W, ddof=1)
    expected = -(L.mean() + eta * KNOWN_W.mean() - eta)
    assert pv.deep_embedded(m, (XS, YS), XT) == pytest.approx(expected, rel=1e-12)
    assert pv.score("dev", m, (XS, YS), XT) == pytest.approx(expected, rel=1e-12)
    assert known_ratios[0][2]["folds"] == 2  # held-out (cross-fitted) ratios by default


def test_dev_risk_edge_cases():
    ell = torch.tensor([0.3, 0.9, 0.1, 0.5], dtype=torch.float64)
    # constant weights: no control variate (η = 0), the weighted mean
    w = torch.full((4,), 0.7, dtype=torch.float64)
    assert pv.dev_risk(ell, w) == pytest.approx(0.7 * float(ell.mean()), rel=1e-14)
    # weights proportional to nothing the loss depends on, mean 1: DEV = IWV
    assert pv.iwv_risk(ell, torch.ones(4)) == pytest.approx(float(ell.mean()))
    with pytest.raises(ValueError, match="at least 2"):
        pv.dev_risk(ell[:1], w[:1])
    with pytest.raises(ValueError, match="one length"):
        pv.iwv_risk(ell, w[:3])
    with pytest.raises(TypeError, match="tensors"):
        pv.dev_risk([0.1, 0.2], w)


# ------------------------------------------------------------------------------------ the density-ratio path


def test_identical_domains_give_ratios_near_one_and_iwv_near_source_ce():
    g = np.random.default_rng(0)
    x = g.normal(size=(1200, 2))
    y = (x[:, 0] + 0.3 * g.normal(size=1200) > 0).astype(np.int64)
    m = linear_model()
    xs, ys, xt = x[:600], y[:600], x[600:]
    feats = torch.tensor(xs)
    for folds in (1, 2):
        w = pv.density_ratios(feats, torch.tensor(xt), folds=folds)
        assert w.dtype == torch.float64 and w.shape == (600,)
        assert abs(float(w.mean()) - 1) < 0.1 and float(w.max()) < 2 and float(w.min()) > 0.5
    ce = np_ce(xs, ys).mean()
    assert -pv.importance_weighted(m, (xs, ys), xt) == pytest.approx(ce, rel=0.05)
    assert -pv.deep_embedded(m, (xs, ys), xt) == pytest.approx(ce, rel=0.05)


def test_separated_domains_give_ratios_that_follow_the_target():
    """A source spread over [-3, 3] and a target around +2: source samples near the target weigh more."""
    g = np.random.default_rng(1)
    xs = g.uniform(-3, 3, size=(400, 1))
    xt = g.normal(2.0, 0.5, size=(400, 1))
    w = pv.density_ratios(torch.tensor(xs), torch.tensor(xt))
    near, far = w[torch.tensor(np.abs(xs[:, 0] - 2) < 0.5)], w[torch.tensor(xs[:, 0] < -1)]
    assert float(near.mean()) > 5 * float(far.mean())


def test_density_ratios_are_seeded_and_leave_the_rng_alone():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(50, 3, generator=g), torch.randn(60, 3, generator=g) + 0.5
    state = torch.get_rng_state()
    w1 = pv.density_ratios(a, b, folds=2, classifier="mlp", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(w1, pv.density_ratios(a, b, folds=2, classifier="mlp", seed=4))


# ------------------------------------------------------------------------------------ the model and the inputs


def test_eval_mode_no_grad_and_modes_restored():
    torch.manual_seed(0)
    model = pytl.models.default_model(2, 2, dropout=0.5)
    model.train()
    model.head.eval()  # a mixed state, restored as it was
    before = pv.score("dev", model, (XS, YS), XT)
    assert model.training and model.encoder.training and not model.head.training
    assert all(p.grad is None for p in model.parameters())
    assert pv.score("dev", model, (XS, YS), XT) == before  # dropout off: deterministic


@pytest.mark.parametrize("name", sorted(pv.CRITERIA))
def test_dataloaders_and_batches_give_the_same_scores(name):
    m = linear_model()
    ref = pv.score(name, m, (XS, YS), XT)
    src = DataLoader(TensorDataset(torch.tensor(XS), torch.tensor(YS)), batch_size=3)
    tgt = DataLoader(TensorDataset(torch.tensor(XT)), batch_size=2)
    assert pv.score(name, m, src, tgt) == pytest.approx(ref, rel=1e-12)
    assert pv.score(name, m, (XS.tolist(), YS.tolist()), XT.tolist(), batch_size=1) == pytest.approx(ref, rel=1e-12)


def test_float32_model_and_inputs():
    m = linear_model().float()
    ref = pv.score("snd", linear_model(), None, XT)
    assert pv.score("snd", m, None, XT.astype(np.float32)) == pytest.approx(ref, rel=1e-5)


# ------------------------------------------------------------------------------------ bad inputs


def test_unknown_criterion_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"criterion must be one of \('iwv', 'dev', 'snd', 'entropy', 'im'\)"):
        pv.score("accuracy", linear_model(), (XS, YS), XT)
    with pytest.raises(TypeError, match="criterion"):
        pv.score(pv.deep_embedded, linear_model(), (XS, YS), XT)
    assert set(pv.CRITERIA) == {"iwv", "dev", "snd", "entropy", "im"}


@pytest.mark.parametrize("name", sorted(pv.CRITERIA))
def test_mismatched_feature_shapes(name):
    with pytest.raises(ValueError, match="feature shape mismatch.*source_val.*target_unlabeled"):
        pv.score(name, linear_model(), (XS, YS), np.zeros((5, 3)))


@pytest.mark.parametrize("name", sorted(pv.CRITERIA))
def test_empty_data(name):
    with pytest.raises(ValueError, match="target_unlabeled is empty"):
        pv.score(name, linear_model(), (XS, YS), np.zeros((0, 2)))
    empty = DataLoader(TensorDataset(torch.zeros(0, 2)), batch_size=2)
    with pytest.raises(ValueError, match="target_unlabeled is empty"):
        pv.score(name, linear_model(), (XS, YS), empty)


def test_bad_source_val():
    m = linear_model()
    with pytest.raises(ValueError, match="needs source_val"):
        pv.score("iwv", m, None, XT)
    with pytest.raises(ValueError, match=r"source_val\[0\] \(X\) is empty"):
        pv.score("dev", m, (np.zeros((0, 2)), np.zeros(0)), XT)
    with pytest.raises(ValueError, match="3 labels for 8 samples"):
        pv.score("dev", m, (XS, YS[:3]), XT)
    with pytest.raises(ValueError, match="label 2.*2 logits"):
        pv.score("iwv", m, (XS, YS + 1), XT)
    with pytest.raises(TypeError, match="pair"):
        pv.score("dev", m, XS, XT)
    with pytest.raises(ValueError, match="NaN"):
        pv.score("snd", m, None, np.full((3, 2), np.nan))


@pytest.mark.parametrize("name", ["iwv", "dev"])
def test_model_without_embed(name):
    plain = nn.Sequential(nn.Linear(2, 2)).double()
    with pytest.raises(TypeError, match=r"needs a model with embed\(x\).*features='input'"):
        pv.score(name, plain, (XS, YS), XT)
    assert np.isfinite(pv.score(name, plain, (XS, YS), XT, features="input"))
    assert np.isfinite(pv.score("snd", plain, None, XT))  # target-only criteria need no embed
    with pytest.raises(TypeError, match="nn.Module"):
        pv.score(name, lambda x: x, (XS, YS), XT)


def test_bad_options():
    m = linear_model()
    with pytest.raises(ValueError, match="loss must be one of"):
        pv.score("iwv", m, (XS, YS), XT, loss="mse")
    with pytest.raises(ValueError, match="features must be one of"):
        pv.score("dev", m, (XS, YS), XT, features="logits")
    with pytest.raises(ValueError, match="folds must be"):
        pv.score("dev", m, (XS, YS), XT, folds=0)
    with pytest.raises(ValueError, match="at least folds=9"):
        pv.score("dev", m, (XS, YS), XT, folds=9)
    with pytest.raises(ValueError, match="classifier must be one of"):
        pv.score("dev", m, (XS, YS), XT, classifier="svm")
    with pytest.raises(ValueError, match="temperature"):
        pv.score("snd", m, None, XT, temperature=0.0)
    with pytest.raises(TypeError, match="chunk_size"):
        pv.score("snd", m, None, XT, chunk_size=2.5)
    with pytest.raises(ValueError, match="at least 2 target samples"):
        pv.score("snd", m, None, XT[:1])
    with pytest.raises(TypeError, match="unexpected keyword"):
        pv.score("entropy", m, None, XT, temperature=0.1)
    with pytest.raises(ValueError, match="batch_size"):
        pv.score("entropy", m, None, XT, batch_size=0)


# ------------------------------------------------------------------------------------ select_lambda

FAST = {"align_epochs": 2, "batch_size": 32}


@pytest.fixture(scope="module")
def shift():
    d = pytl.make_domain_shift(0, n_source=120, n_target_unlabeled=100, n_target_labeled=0, n_target_test=10)
    return d.source, d.target_unlabeled


@pytest.fixture(scope="module")
def selection(shift):
    torch.set_num_threads(1)
    return pytl.select_lambda(*shift, lambdas=(0, 0.5, 2), criterion="dev", seed=1, **FAST)


def test_select_lambda_scores_are_the_criterion_on_the_held_out_split(selection, shift):
    (xs, ys), xu = shift
    val = selection.validation_indices.numpy()
    assert selection.criterion == "dev" and selection.lambdas == (0.0, 0.5, 2.0)
    assert list(selection.scores) == [0.0, 0.5, 2.0] and set(selection.models) == {0.0, 0.5, 2.0}
    for lam, m in selection.models.items():
        assert selection.scores[lam] == pv.score("dev", m, (xs[val], ys[val]), xu)
    best = max(selection.scores.values())
    assert selection.best == min(lam for lam, s in selection.scores.items() if s == best)
    # the held-out split: stratified 20 %, disjoint from the training rows, together all rows
    tr = selection.train_indices.numpy()
    assert len(val) == 24 and np.bincount(ys[val]).tolist() == [12, 12]
    assert sorted(np.concatenate([tr, val]).tolist()) == list(range(120))


def test_select_lambda_never_trains_on_the_held_out_rows(shift):
    """The model of each λ is bit-for-bit the one a TwoStageTrainer trains by hand on the remaining rows."""
    (xs, ys), xu = shift
    torch.manual_seed(5)
    init = pytl.models.default_model(2, 2)
    sel = pytl.select_lambda((xs, ys), xu, lambdas=(0.0, 1.0), criterion="entropy", seed=3, model=init, **FAST)
    tr = sel.train_indices.numpy()
    for lam in (0.0, 1.0):
        t = pytl.TwoStageTrainer(copy.deepcopy(init), lambda_mmd=lam, seed=3, num_classes=2, progress=False, **FAST)
        t.align((xs[tr], ys[tr]), xu if lam > 0 else None)
        for a, b in zip(t.model.state_dict().values(), sel.models[lam].state_dict().values()):
            assert torch.equal(a, b)
    # and the held-out rows change nothing: replacing their features by garbage gives the same models
    xs2 = xs.copy()
    xs2[sel.validation_indices.numpy()] = 1e3
    sel2 = pytl.select_lambda((xs2, ys), xu, lambdas=(0.0, 1.0), criterion="entropy", seed=3, model=init, **FAST)
    assert torch.equal(sel2.validation_indices, sel.validation_indices)
    for lam in (0.0, 1.0):
        assert all(torch.equal(a, b) for a, b in zip(sel2.models[lam].state_dict().values(),
                                                     sel.models[lam].state_dict().values()))


def test_select_lambda_ties_go_to_the_smaller_lambda(shift, monkeypatch):
    from pytl.experiments import lambda_selection as ls
    fixed = {"snd": lambda *a, **k: 1.0}
    monkeypatch.setattr(ls, "CRITERIA", fixed)
    sel = pytl.select_lambda(*shift, lambdas=(2, 0.5, 1), criterion="snd", align_epochs=0)
    assert sel.best == 0.5 and sel.ranking() == [0.5, 1.0, 2.0]


def test_select_lambda_table_and_explain(selection):
    table, text = selection.table(), selection.explain()
    assert "not an accuracy" in table and "<- chosen" in table
    assert "rank models; they do not measure accuracy" in text and f"λ = {selection.best:g}" in text
    assert "LambdaSelection(best=" in repr(selection)


def test_select_lambda_is_reproducible_and_leaves_the_rng_alone(shift, selection):
    state = torch.get_rng_state()
    again = pytl.select_lambda(*shift, lambdas=(0, 0.5, 2), criterion="dev", seed=1, **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    assert again.scores == selection.scores and again.best == selection.best


@pytest.mark.parametrize("kwargs, error, match", [
    ({"lambdas": ()}, ValueError, "lambdas is empty"),
    ({"lambdas": (0, -1)}, ValueError, r"lambdas\[1\] must be a finite number >= 0"),
    ({"lambdas": (0, float("inf"))}, ValueError, r"lambdas\[1\]"),
    ({"lambdas": (0, 0.5, 0.5)}, ValueError, "unique"),
    ({"lambdas": 0.5}, TypeError, "lambdas must be a sequence"),
    ({"lambdas": ("a",)}, TypeError, r"lambdas\[0\]"),
    ({"criterion": "acc"}, ValueError, r"criterion must be one of \('iwv', 'dev'"),
    ({"source_validation": 0.0}, ValueError, "source_validation must be"),
    ({"source_validation": 1}, ValueError, "source_validation must be"),
    ({"lambda_mmd": 0.5}, TypeError, "lambdas="),
    ({"epochs": 3}, TypeError, "unknown option"),
    ({"lr": -1.0}, ValueError, "lr must be"),
    ({"criterion": "dev", "criterion_options": {"folds": 0}}, ValueError, "folds must be"),
    ({"criterion_options": {"bogus": 1}}, TypeError, "bogus"),
    ({"model": nn.Sequential(nn.Linear(2, 2)), "lambdas": (0,), "criterion": "dev"}, TypeError, r"embed\(x\)"),
    ({"seed": -1}, ValueError, "seed"),
])
def test_select_lambda_checks_every_argument_before_training(shift, monkeypatch, kwargs, error, match):
    def no_training(*a, **k):
        raise AssertionError("trained before checking")

    monkeypatch.setattr(pytl.TwoStageTrainer, "align", no_training)
    with pytest.raises(error, match=match):
        pytl.select_lambda(*shift, **{**FAST, **kwargs})


def test_select_lambda_bad_data(shift):
    (xs, ys), xu = shift
    with pytest.raises(ValueError, match="feature size mismatch"):
        pytl.select_lambda((xs, ys), np.zeros((5, 3)), **FAST)
    with pytest.raises(TypeError, match="DataLoader"):
        pytl.select_lambda(DataLoader(TensorDataset(torch.tensor(xs), torch.tensor(ys))), xu, **FAST)
    with pytest.raises(ValueError, match="holds out 0 of the 1 source samples of class 1"):
        pytl.select_lambda((xs[:3], np.array([0, 0, 1])), xu, source_validation=0.5, **FAST)


def test_select_lambda_needs_every_class_on_both_sides_of_the_source_split(shift):
    (xs, ys), xu = shift
    lone = ys.copy()
    lone[0] = 2  # a class with one source sample cannot be both trained on and held out
    with pytest.raises(ValueError, match="holds out 0 of the 1 source samples of class 2"):
        pytl.select_lambda((xs, lone), xu, lambdas=(0.0, 1.0), criterion="entropy", **FAST)
    # tiny and huge fractions still hold out one sample per class and keep one (the trainer's split rule)
    sel = pytl.select_lambda((xs, ys), xu, lambdas=(0.0,), criterion="entropy", source_validation=0.001, **FAST)
    assert np.bincount(ys[sel.validation_indices.numpy()]).tolist() == [1, 1]
