"""pytl.data.make_domain_shift: sizes, stratification, geometry (exact with noise=0), seeds, bad input."""

import inspect
import math

import numpy as np
import pytest

from pytl.experiments import compare_strategies
from pytl.data import make_domain_shift


def test_default_sizes_types_and_stratification():
    d = make_domain_shift()
    xs, ys = d.source
    assert xs.shape == (1000, 2) and xs.dtype == np.float32 and ys.dtype == np.int64
    assert d.target_unlabeled.shape == (1000, 2)
    assert d.target_labeled[0].shape == (50, 2) and d.target_test[0].shape == (1000, 2)
    assert np.bincount(d.target_labeled[1]).tolist() == [25, 25]
    assert np.bincount(ys).tolist() == [500, 500]
    small = make_domain_shift(n_target_labeled=5)
    assert np.bincount(small.target_labeled[1]).tolist() == [3, 2]


def test_same_seed_same_arrays_other_seed_other_arrays():
    a, b, c = make_domain_shift(3), make_domain_shift(3), make_domain_shift(4)
    for key in ("source", "target_labeled", "target_test"):
        assert np.array_equal(getattr(a, key)[0], getattr(b, key)[0])
        assert np.array_equal(getattr(a, key)[1], getattr(b, key)[1])
    assert np.array_equal(a.target_unlabeled, b.target_unlabeled)
    assert not np.array_equal(a.source[0], c.source[0])


def test_noise_free_moons_lie_exactly_on_the_rotated_and_shifted_arcs():
    rotation, shift = 90.0, (3.0, -1.0)
    d = make_domain_shift(rotation=rotation, shift=shift, noise=0.0)
    # source: class 0 on the unit upper arc centred at (-0.5, -0.25), class 1 on the lower arc centred at (0.5, 0.25)
    xs, ys = d.source
    centres = np.array([[-0.5, -0.25], [0.5, 0.25]])
    radius = np.linalg.norm(xs - centres[ys], axis=1)
    assert np.allclose(radius, 1.0, atol=1e-6)
    assert (xs[ys == 0, 1] >= -0.25 - 1e-6).all() and (xs[ys == 1, 1] <= 0.25 + 1e-6).all()
    # target: undo "rotate 90° about the origin, then shift" by hand: R^-1 = [[0, 1], [-1, 0]]
    xt, yt = d.target_test
    back = (xt - np.array(shift)) @ np.array([[0.0, 1.0], [-1.0, 0.0]]).T
    assert np.allclose(np.linalg.norm(back - centres[yt], axis=1), 1.0, atol=1e-5)


def test_blobs_with_three_classes_move_their_means():
    d = make_domain_shift(shape="blobs", num_classes=3, n_source=3000, n_target_test=3000, noise=0.5,
                          rotation=0.0, shift=(10.0, 0.0))
    xs, ys = d.source
    xt, yt = d.target_test
    for c in range(3):
        angle = 2 * math.pi * c / 3
        centre = 1.5 * np.array([math.cos(angle), math.sin(angle)])
        assert np.allclose(xs[ys == c].mean(0), centre, atol=0.06)
        assert np.allclose(xt[yt == c].mean(0), centre + [10.0, 0.0], atol=0.06)


def test_as_dict_feeds_compare_strategies():
    d = make_domain_shift()
    params = inspect.signature(compare_strategies).parameters
    assert set(d.as_dict()) <= set(params)
    assert "target_labeled=50" in repr(d)


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(n_target_labeled=-1), ValueError, "n_target_labeled"),
    (dict(n_source=1), ValueError, "n_source"),
    (dict(shape="spirals"), ValueError, "shape"),
    (dict(num_classes=3), ValueError, "moons"),
    (dict(shift=(1.0, 2.0, 3.0)), ValueError, "shift"),
    (dict(shift=(1.0, float("inf"))), ValueError, "shift must be two finite numbers"),
    (dict(shift="up"), TypeError, "shift"),  # text is a wrong type (was ValueError before pytl._checks)
    (dict(shift=("a", "b")), TypeError, "shift must be two numbers"),
    (dict(shift=3.0), TypeError, "shift must be two numbers"),
    (dict(noise=-0.1), ValueError, "noise"),
    (dict(noise="0.1"), TypeError, "noise must be a finite number"),
    (dict(rotation=float("nan")), ValueError, "rotation"),
    (dict(rotation="30"), TypeError, r"rotation \(degrees\) must be a finite number"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.0), TypeError, "seed must be an int"),
    (dict(n_source=100.0), TypeError, "n_source must be an int"),
    (dict(shape="blobs", num_classes=True), TypeError, "num_classes must be an int"),
])
def test_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        make_domain_shift(**kwargs)


def test_numpy_numbers_and_arrays_are_accepted():
    a = make_domain_shift(np.int64(3), n_source=np.int32(20), rotation=np.float32(45.0), shift=np.array([1.0, -1.0]))
    b = make_domain_shift(3, n_source=20, rotation=45.0, shift=(1.0, -1.0))
    assert np.array_equal(a.source[0], b.source[0]) and np.array_equal(a.target_test[0], b.target_test[0])
    assert type(a.rotation) is float and a.shift == (1.0, -1.0)
