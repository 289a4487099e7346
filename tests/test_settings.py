"""TrainSettings (the trainer's options, declared once) and the alignment registry the strategy tables derive from."""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
import pytest
import torch

import pytl
from pytl.experiments import strategies
from pytl.freezing import FreezeFirst
from pytl.train import ALIGNMENTS, Alignment, TrainSettings, TwoStageTrainer, register
from pytl.train.checkpoint import RESUME_SETTINGS


@pytest.fixture(scope="module")
def shift():
    return pytl.make_domain_shift(0, n_source=120, n_target_unlabeled=120, n_target_test=60)


def test_settings_stay_as_given_and_round_trip():
    policy = FreezeFirst(1)
    lr = np.float32(3e-3)  # a grid search's value: kept as the very object given
    t = TwoStageTrainer(None, lambda_mmd=2, lr=lr, finetune_lr=None, finetune_policy=policy, seed=4)
    params = t.get_params()
    assert params["lambda_align"] == 2 and params["lr"] is lr and params["finetune_policy"] is policy
    assert params["finetune_lr"] is None and params["target_batch_size"] is None  # not rewritten to lr / batch_size
    assert t.settings.finetune_lr_value == pytest.approx(3e-3) and t.settings.target_batch_size_value == 64
    assert set(params) == {"model"} | set(TrainSettings.names())
    again = TwoStageTrainer(**params)
    assert again.settings == t.settings and again.get_params() == params
    # attributes read through to the settings and the run's state; the former name reads λ too
    assert t.lambda_mmd == t.lambda_align == 2 and t.lr is lr and t.history == {"align": [], "finetune": []}


def test_sklearn_clone_keeps_every_parameter():
    base = pytest.importorskip("sklearn.base")
    t = TwoStageTrainer(None, lambda_align=0.25, alignment="coral", finetune_validation=0.2, patience=2)
    c = base.clone(t)  # clone checks that the constructor stores each parameter as the same object
    assert c is not t and c.settings == t.settings and c.model is None


def test_set_params_checks_and_changes_only_what_it_names():
    t = TwoStageTrainer(None, align_epochs=3)
    assert t.set_params(lambda_mmd=1.5, seed=2) is t
    assert (t.lambda_align, t.seed, t.align_epochs) == (1.5, 2, 3)
    with pytest.raises(ValueError, match="lambda_mmd must be a finite number >= 0"):
        t.set_params(lambda_mmd=-1)  # named as written
    with pytest.raises(TypeError, match="unexpected setting 'lamda'"):
        t.set_params(lamda=1)
    with pytest.raises(AttributeError, match="use trainer.set_params"):
        t.lr = 0.1
    assert t.lambda_align == 1.5  # the failed calls changed nothing


def test_unknown_and_duplicated_settings_are_type_errors():
    with pytest.raises(TypeError, match=r"unexpected setting 'epochs'.*valid settings: \[.*'align_epochs'"):
        TwoStageTrainer(None, epochs=3)
    with pytest.raises(TypeError, match="'lambda_align' twice"):
        TwoStageTrainer(None, lambda_mmd=1.0, lambda_align=2.0)
    with pytest.raises(TypeError, match="settings must be a pytl.train.TrainSettings"):
        TwoStageTrainer(None, {"lr": 0.1})


def test_a_settings_object_and_overrides_compose(shift):
    s = TrainSettings(align_epochs=2, finetune_epochs=1, progress=False, lambda_align=0.3)
    a = TwoStageTrainer(None, s, seed=1).fit(shift.source, shift.target_unlabeled, shift.target_labeled)
    b = TwoStageTrainer(None, align_epochs=2, finetune_epochs=1, progress=False, lambda_mmd=0.3, seed=1)
    b.fit(shift.source, shift.target_unlabeled, shift.target_labeled)
    assert s.seed == 0  # the settings object itself is frozen: overrides make a copy
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_resume_settings_are_the_fields_that_decide_the_result():
    where = {"device", "progress", "num_threads", "distributed", "checkpoint", "num_classes"}
    assert set(RESUME_SETTINGS) == set(TrainSettings.names()) - where
    assert "lambda_align" in RESUME_SETTINGS and "alignment" in RESUME_SETTINGS


def test_a_checkpoint_from_before_the_rename_resumes_without_a_warning(shift, tmp_path):
    path = tmp_path / "c.pt"
    kw = dict(align_epochs=2, finetune_epochs=0, progress=False, lambda_align=0.4)
    TwoStageTrainer(None, checkpoint=path, **kw).align(shift.source, shift.target_unlabeled)
    ckpt = torch.load(path, weights_only=True)
    ckpt["settings"]["lambda_mmd"] = ckpt["settings"].pop("lambda_align")  # as written before the rename
    torch.save(ckpt, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TwoStageTrainer(None, **kw).align(shift.source, shift.target_unlabeled, resume_from=os.fspath(path))


# ------------------------------------------------------------------------------------ the registry

#: the tables as they were written by hand before they were derived from the registry
HAND_WRITTEN_STRATEGIES = ("source_only", "mmd_only", "scratch", "naive", "mmd", "ensemble", "cmmd_only", "cmmd",
                           "coral_only", "coral", "dann_only", "dann", "mme_only", "mme", "ssl_mmd", "ssl_cmmd",
                           "ssl_coral", "ssl_dann", "ssl_mme", "weighted_ensemble")
HAND_WRITTEN_NEEDS = {"scratch", "naive", "mmd", "ensemble", "cmmd", "coral", "dann", "mme", "ssl_mmd", "ssl_cmmd",
                      "ssl_coral", "ssl_dann", "ssl_mme", "weighted_ensemble"}
HAND_WRITTEN_DESCRIPTIONS = {
    "mmd_only": "+ unlabelled target: CE + {lambda_mmd:g}·MMD², {align_epochs} epochs",
    "cmmd_only": "+ unlabelled target: CE + {lambda_cmmd:g}·class-conditional MMD², {align_epochs} epochs",
    "coral_only": "+ unlabelled target: CE + {lambda_coral:g}·CORAL, {align_epochs} epochs",
    "dann_only": "+ unlabelled target: CE + domain discriminator, gradient reversed ×{lambda_dann:g}, {align_epochs} epochs",
    "cmmd": "cmmd_only, then {finetune_epochs} epochs on target labels",
}


def test_strategy_tables_derive_from_the_registry():
    assert strategies.STRATEGIES == HAND_WRITTEN_STRATEGIES
    assert strategies.NEEDS_TARGET_LABELS == HAND_WRITTEN_NEEDS
    assert strategies.TRANSFER_STRATEGIES == ("naive", "mmd", "cmmd", "coral", "dann", "mme", "ssl_mmd", "ssl_cmmd",
                                              "ssl_coral", "ssl_dann", "ssl_mme")
    assert strategies.ALIGNED == {"mmd": "lambda_mmd", "cmmd": "lambda_cmmd", "coral": "lambda_coral",
                                  "dann": "lambda_dann", "mme": "lambda_mme"}
    for name, text in HAND_WRITTEN_DESCRIPTIONS.items():
        assert strategies.DESCRIPTIONS[name] == text
    cfg = strategies.DEFAULT_CONFIG
    # every λ chosen from the data by default, from a grid around each alignment's own default
    assert all(cfg[option] == "auto" for option in strategies.ALIGNED.values())
    assert tuple(ALIGNMENTS[a].lambda_default for a in ("mmd", "cmmd", "coral", "dann", "mme")) == \
        (0.5, 0.5, 1000.0, 1.0, 0.1)
    # the trainer's defaults, except where a comparison differs on purpose
    defaults = TrainSettings.defaults()
    for name in strategies.TRAINER_OPTIONS:
        if name not in ("device", "progress"):
            assert cfg[name] == defaults[name], name


class MeanGap(Alignment):
    """A test alignment: the squared distance between the two batches' mean embeddings."""

    key, record_key = "meangap", "mean_gap"
    lambda_option, lambda_default = "lambda_meangap", 1.0
    description = "CE + {lambda_meangap:g}·mean gap"

    def term(self, zs, zt, ys, ns, nt, lam, active, source_weights):
        return (zs.mean(0) - zt.mean(0)).pow(2).sum()


@pytest.fixture
def registered():
    register(MeanGap)
    try:
        yield MeanGap
    finally:
        ALIGNMENTS.pop(MeanGap.key)


def test_a_registered_alignment_trains_and_records_its_term(shift, registered):
    t = TwoStageTrainer(None, alignment="meangap", align_epochs=2, progress=False, lambda_align=1.0)
    history = t.align(shift.source, shift.target_unlabeled)
    assert all(rec["mean_gap"] is not None and rec["mean_gap"] >= 0 for rec in history)
    # λ weighs it like any term: with λ = 0 the same seed trains the source-only model
    z = TwoStageTrainer(None, alignment="meangap", align_epochs=2, progress=False, lambda_align=0.0)
    z.align(shift.source, None)
    assert all(rec["mean_gap"] is None for rec in z.history["align"])


def test_register_refuses_incomplete_or_duplicate_declarations(registered):
    with pytest.raises(ValueError, match="already registered"):
        register(MeanGap)

    class NoLambda(Alignment):
        key, description = "nolambda", "x"

    with pytest.raises(TypeError, match="must declare lambda_option"):
        register(NoLambda)

    class Needy(MeanGap):
        key, needs = "needy", frozenset({"a telescope"})

    with pytest.raises(ValueError, match="unknown entries"):
        register(Needy)
    assert "nolambda" not in ALIGNMENTS and "needy" not in ALIGNMENTS


def test_every_registered_alignment_declares_what_the_tables_need():
    for key, cls in ALIGNMENTS.items():
        assert cls.key == key and cls.lambda_option.startswith("lambda_") and cls.lambda_default > 0
        assert "{" + cls.lambda_option + ":g}" in cls.description
        assert dataclasses.is_dataclass(TrainSettings) and cls.lambda_option not in TrainSettings.names()
