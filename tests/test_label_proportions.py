"""label_proportion_test (the few target labels' class proportions against the source's) and the trainer's
warning before a marginal alignment under a label shift."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from pytl import TwoStageTrainer
from pytl._checks import DataWarning
from pytl.diagnostics import label_proportion_test


def exact_binomial_p(p: float, m: int, k: int) -> float:
    """P(chi-square of Binomial(m, p) counts >= that of k): the test's p-value by enumeration, two classes."""
    def chi2(j: int) -> float:
        e0, e1 = m * (1 - p), m * p
        return (m - j - e0) ** 2 / e0 + (j - e1) ** 2 / e1
    observed = chi2(k)
    return sum(math.comb(m, j) * p**j * (1 - p) ** (m - j) for j in range(m + 1) if chi2(j) >= observed - 1e-12)


@pytest.mark.parametrize("ones_in_target", [2, 4, 6, 8])
def test_p_value_matches_the_exact_binomial_test(ones_in_target):
    source = [0] * 16 + [1] * 84  # p(1) = 0.84
    target = [0] * (10 - ones_in_target) + [1] * ones_in_target
    got = label_proportion_test(source, target, draws=20000, seed=1)
    want = exact_binomial_p(0.84, 10, ones_in_target)
    assert abs(got.p_value - want) <= 4 * math.sqrt(want * (1 - want) / 20000) + 1e-4, (got.p_value, want)
    assert got.total_variation == pytest.approx(abs(0.84 - ones_in_target / 10))
    assert got.class_weights() == [round((10 - ones_in_target) / 10 / 0.16, 3), round(ones_in_target / 10 / 0.84, 3)]


def test_many_labels_use_the_chi_square_distribution_which_agrees_with_the_simulation():
    g = torch.Generator().manual_seed(3)
    source = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), 5000, replacement=True, generator=g)
    target = torch.multinomial(torch.tensor([0.49, 0.31, 0.20]), 2000, replacement=True, generator=g)
    asymptotic = label_proportion_test(source, target)             # 2000 × 9999 labels: beyond the simulation
    simulated = label_proportion_test(source, target, draws=2000)  # 4·10^6 labels: simulated
    assert 0.001 < asymptotic.p_value < 0.999
    assert abs(asymptotic.p_value - simulated.p_value) <= 4 * math.sqrt(0.25 / 2000)
    assert asymptotic.statistic == simulated.statistic


def test_a_class_the_source_lacks_is_a_shift_and_bad_labels_are_named():
    got = label_proportion_test([0, 0, 1, 1], [0, 2, 1], num_classes=3)
    assert got.statistic == math.inf and got.p_value == pytest.approx(1 / 10000) and got.class_weights()[2] == 0.0
    with pytest.raises(ValueError, match="target_labels is empty"):
        label_proportion_test([0, 1], [])
    with pytest.raises(ValueError, match="target_labels"):
        label_proportion_test([0, 1], [0, 5], num_classes=2)


def imbalanced(seed=0):
    """Source 85% class 1, the target's few labels mostly class 0 (drawn at random, not per class)."""
    g = np.random.default_rng(seed)
    ys = (g.random(400) < 0.85).astype(np.int64)
    xs = g.normal(size=(400, 3)).astype(np.float32) + ys[:, None]
    yt = np.array([0] * 9 + [1] * 3)
    xt = g.normal(size=(12, 3)).astype(np.float32) + yt[:, None]
    return (xs, ys), g.normal(size=(50, 3)).astype(np.float32), (xt, yt)


def fit_warnings(**options):
    src, xu, tl = imbalanced()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TwoStageTrainer(align_epochs=1, finetune_epochs=1, progress=False, **options).fit(src, xu, tl)
    return [str(w.message) for w in caught if issubclass(w.category, DataWarning) and "class proportions" in str(w.message)]


def test_the_trainer_warns_before_a_marginal_alignment_under_a_label_shift():
    shown = fit_warnings()
    assert len(shown) == 1 and "alignment='cmmd'" in shown[0] and "class_weights=[" in shown[0]
    assert fit_warnings(alignment="coral") and fit_warnings(alignment="dann")
    assert not fit_warnings(alignment="cmmd")               # class-conditional: what the warning recommends
    assert not fit_warnings(class_weights=[3.0, 0.5])       # the user corrects for it already
    assert not fit_warnings(lambda_align=0.0)               # no alignment


def test_labels_sampled_per_class_say_nothing_and_do_not_warn():
    src, xu, _ = imbalanced()
    g = np.random.default_rng(1)
    yt = np.array([0] * 8 + [1] * 8)
    tl = (g.normal(size=(16, 3)).astype(np.float32), yt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TwoStageTrainer(align_epochs=1, finetune_epochs=1, progress=False).fit(src, xu, tl)
    assert not [w for w in caught if "class proportions" in str(w.message)]
    assert label_proportion_test(src[1], torch.as_tensor(yt)).shifted  # the test alone would call it a shift
