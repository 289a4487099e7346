"""pytl.diagnostics.estimate_label_shift / label_shift_from_predictions: BBSE (Lipton et al. 2018) against
exact constructions (a known confusion matrix and target counts that it explains exactly), a perfect
classifier (the target's predicted histogram), and a simulated label shift with a fixed classifier."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pytl.diagnostics import estimate_label_shift, label_shift_from_predictions

pytestmark = pytest.mark.usefixtures("one_thread")

# counts of (predicted i, true j) on 100 source samples per class: columns sum to 100
CONFUSION_COUNTS = np.array([[80, 10, 5], [15, 85, 10], [5, 5, 85]])


def _source_from_counts(counts):
    pred, y = [], []
    for j in range(counts.shape[1]):
        for i in range(counts.shape[0]):
            pred += [i] * int(counts[i, j])
            y += [j] * int(counts[i, j])
    return np.array(pred), np.array(y)


def test_exact_when_the_target_counts_are_explained_by_the_confusion():
    pred, y = _source_from_counts(CONFUSION_COUNTS)
    q = np.array([0.6, 0.3, 0.1])
    mu = (CONFUSION_COUNTS / 300) @ (q / (1 / 3))  # P_t(yhat = i) = sum_j C(i, j) q(j) / p(j)
    counts = np.round(mu * 1000).astype(int)
    assert counts.sum() == 1000 and np.allclose(counts / 1000, mu, atol=1e-12)  # exact by construction
    target = np.repeat(np.arange(3), counts)
    est = label_shift_from_predictions(pred, y, target)
    np.testing.assert_allclose(est.target_proportions.numpy(), q, atol=1e-12)
    np.testing.assert_allclose(est.source_proportions.numpy(), [1 / 3] * 3, atol=1e-15)
    np.testing.assert_allclose(est.weights.numpy(), q * 3, atol=1e-12)
    np.testing.assert_allclose(est.confusion.numpy(), CONFUSION_COUNTS / 300, atol=1e-15)
    np.testing.assert_allclose(est.condition_number, np.linalg.cond(CONFUSION_COUNTS / 300), rtol=1e-10)
    assert est.reliable and not est.clipped and not est.soft
    assert "total variation between the proportions: 0.267" in est.explain()


def test_soft_predictions_use_the_soft_confusion():
    # probabilities: the soft confusion sum_k p_k(i) [y_k = j] / n; one-hot probabilities = hard BBSE
    pred, y = _source_from_counts(CONFUSION_COUNTS)
    target = np.repeat(np.arange(3), [515, 355, 130])
    hard = label_shift_from_predictions(pred, y, target)
    soft = label_shift_from_predictions(np.eye(3)[pred], y, np.eye(3)[target])
    assert soft.soft and torch.allclose(soft.target_proportions, hard.target_proportions, atol=1e-12)
    # a genuinely soft case against numpy's solve
    rng = np.random.default_rng(0)
    ys = rng.integers(0, 4, 400)
    ps = 0.7 * np.eye(4)[ys] + 0.3 * rng.dirichlet(np.ones(4), size=400)  # an informative, imperfect classifier
    yt = rng.choice(4, size=300, p=[0.1, 0.2, 0.3, 0.4])
    pt = 0.7 * np.eye(4)[yt] + 0.3 * rng.dirichlet(np.ones(4), size=300)
    conf = ps.T @ np.eye(4)[ys] / 400
    w = np.linalg.solve(conf, pt.mean(0))
    assert (w > 0).all()  # so no clipping: the estimate is q = w p normalised
    q = w * np.bincount(ys, minlength=4) / 400
    est = label_shift_from_predictions(torch.tensor(ps), ys, torch.tensor(pt))
    np.testing.assert_allclose(est.target_proportions.numpy(), q / q.sum(), rtol=1e-9)


def test_perfect_classifier_gives_the_target_histogram():
    y = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    target = np.array([2, 2, 0, 1, 2, 2, 2, 2])
    est = label_shift_from_predictions(y, y, target)
    np.testing.assert_allclose(est.target_proportions.numpy(), [1 / 8, 1 / 8, 6 / 8], atol=1e-12)
    np.testing.assert_allclose(est.weights.numpy(), [(1 / 8) / 0.2, (1 / 8) / 0.3, (6 / 8) / 0.5], atol=1e-12)


def _blobs(proportions, n, rng):
    means = np.array([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]])
    y = rng.choice(3, size=n, p=proportions)
    return (means[y] + rng.standard_normal((n, 2))).astype(np.float32), y


class NearestMean(nn.Module):
    """A fixed classifier (logits = -squared distance to each class mean): it confuses the blobs a little."""

    def __init__(self):
        super().__init__()
        self.means = nn.Parameter(torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]]), requires_grad=False)

    def forward(self, x):
        return -torch.cdist(x, self.means) ** 2


def test_recovers_a_simulated_label_shift_with_a_model():
    rng = np.random.default_rng(1)
    xs, ys = _blobs([1 / 3, 1 / 3, 1 / 3], 6000, rng)
    q = np.array([0.6, 0.3, 0.1])
    xt, _ = _blobs(q, 20000, rng)  # p(x|y) unchanged: pure label shift
    model = NearestMean()
    for soft in (False, True):
        est = estimate_label_shift(model, (xs, ys), xt, soft=soft)
        assert est.reliable
        np.testing.assert_allclose(est.target_proportions.numpy(), q, atol=0.02)
        np.testing.assert_allclose(est.weights.numpy(), q / est.source_proportions.numpy(), rtol=0.1)
    # the model path is the predictions path on the model's argmax
    with torch.no_grad():
        pred_s = model(torch.from_numpy(xs)).argmax(1)
        pred_t = model(torch.from_numpy(xt)).argmax(1)
    direct = label_shift_from_predictions(pred_s, ys, pred_t, num_classes=3)
    assert torch.equal(direct.target_proportions, estimate_label_shift(model, (xs, ys), xt).target_proportions)


def test_singular_confusion_is_flagged_and_negative_solutions_clipped():
    # class 2 never appears among the source labels: the confusion matrix is singular
    pred = np.array([0, 0, 1, 1, 0, 1])
    y = np.array([0, 0, 1, 1, 0, 1])
    est = label_shift_from_predictions(pred, y, np.array([0, 1, 2, 2]), num_classes=3)
    assert math.isinf(est.condition_number) and not est.reliable
    assert est.weights[2].item() == 0.0 and abs(est.target_proportions.sum().item() - 1) < 1e-12
    assert "unreliable" in est.explain()
    # a target that no label-shift mixture explains: a negative raw weight, clipped and reported
    pred, y = _source_from_counts(CONFUSION_COUNTS)
    est = label_shift_from_predictions(pred, y, np.repeat([0, 1, 2], [10, 10, 980]))
    assert est.clipped and (est.target_proportions >= 0).all() and "set to 0" in est.explain()


@pytest.mark.parametrize("args,kwargs,exc,fragment", [
    (([0, 1], [0, 1, 1], [0]), {}, ValueError, "source_labels has 3 labels for 2 source_predictions"),
    (([0, 1], [0, 5], [0]), {"num_classes": 3}, ValueError, "source_labels has label 5"),
    (([0, 1], [0, 1], [[0.5, 0.5]]), {}, ValueError, "same kind"),
    (([[0.5, 0.7]], [0], [[0.5, 0.5]]), {}, ValueError, "rows must sum to 1"),
    (([[1.5, -0.5]], [0], [[0.5, 0.5]]), {}, ValueError, "non-negative probabilities"),
    (([[1, 0]], [0], [[1, 0]]), {}, TypeError, "must hold probabilities"),
    (("abc", [0], [0]), {}, TypeError, "source_predictions must be a numpy array"),
    (([0, 1], [0, 1], [0, 1]), {"num_classes": 1}, ValueError, "num_classes must be"),
    (([0, -1], [0, 1], [0]), {}, ValueError, "source_predictions must be class indices >= 0"),
])
def test_bad_input_names_the_argument(args, kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        label_shift_from_predictions(*args, **kwargs)


def test_model_path_checks_its_inputs():
    model = NearestMean()
    xs = np.zeros((4, 2), np.float32)
    with pytest.raises(TypeError, match="soft must be"):
        estimate_label_shift(model, (xs, [0, 1, 2, 0]), xs, soft="yes")
    with pytest.raises(ValueError, match="feature shape mismatch"):
        estimate_label_shift(model, (xs, [0, 1, 2, 0]), np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        estimate_label_shift("model", (xs, [0, 1, 2, 0]), xs)
