"""pytl.experiments' curves: the tables, the crossover, the three curves on tiny problems, grid checks, and `python -m pytl curve`."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

import pytl
from pytl import experiments as cv
from pytl.experiments.splits import stratified_order
from pytl.cli import exit_status as cli_exit_code
from pytl.cli import main
from pytl.experiments import compare_strategies
from pytl.data import make_domain_shift
from pytl.experiments import layers
from pytl.train import TwoStageTrainer

TINY = dict(align_epochs=2, finetune_epochs=2)


def small(seed, rotation=30.0, shift=(3.0, 3.0), labels=24):
    return make_domain_shift(seed, n_source=128, n_target_unlabeled=128, n_target_labeled=labels, n_target_test=200,
                             rotation=rotation, shift=shift)


@pytest.fixture
def no_training(monkeypatch):
    """Any training step (any TwoStageTrainer stage, including inside compare_strategies) fails the test."""
    def fail(*args, **kwargs):
        raise AssertionError("training started before the arguments were checked")

    monkeypatch.setattr(TwoStageTrainer, "align", fail)
    monkeypatch.setattr(TwoStageTrainer, "finetune", fail)


# ------------------------------------------------------------------------------------------ tables


def test_row_mean_and_std_are_numpy_s():
    row = cv.CurveRow(10, "mmd", (0.81, 0.86, 0.9, 0.77), (0, 1, 2, 3))
    assert row.mean == pytest.approx(np.mean(row.values), abs=1e-15)
    assert row.std == pytest.approx(np.std(row.values, ddof=1), abs=1e-15)
    assert row.n_seeds == 4
    assert cv.CurveRow(1, "s", (0.5,), (0,)).std == 0.0
    d = row.to_dict("num_labels")
    assert d["num_labels"] == 10 and d["values"] == [0.81, 0.86, 0.9, 0.77] and d["seeds"] == [0, 1, 2, 3]


@pytest.mark.parametrize("xs, gaps, expected", [
    ([0, 40, 80], [0.2, 0.04, -0.12], 50.0),          # g(x) = 0.2 - 0.004 x: zero at x = 50 exactly
    ([0, 30, 60], [0.10, 0.03, -0.01], 52.5),         # 30 + 30 * 0.03 / (0.03 + 0.01)
    ([10, 20, 30, 40], [0.1, 0.0, -0.2, 0.05], 20.0),  # a gap of exactly 0 is where it stops paying
    ([0, 90], [0.3, -0.3], 45.0),
])
def test_crossover_is_the_linear_interpolation_of_the_first_sign_change(xs, gaps, expected):
    c = cv.find_crossover(xs, gaps)
    assert c.x == pytest.approx(expected, abs=1e-12)
    assert "stops paying" in c.reason


def test_crossover_none_says_why():
    c = cv.find_crossover([0, 30, 60], [-0.01, 0.2, 0.3])
    assert c.x is None and "already below scratch" in c.reason and "-1.0 points" in c.reason
    c = cv.find_crossover([0, 30, 60], [0.2, 0.05, 0.1])
    assert c.x is None and "stays at or above" in c.reason and "+5.0 points, at 30" in c.reason
    c = cv.find_crossover([0, 30, 60, 90], [0.1, -0.1, 0.2, -0.1])
    assert c.x == pytest.approx(15.0) and "ahead again at 60" in c.reason
    with pytest.raises(ValueError, match="strictly increasing"):
        cv.find_crossover([0, 30, 30], [0.1, 0.0, -0.1])
    with pytest.raises(ValueError, match="same length"):
        cv.find_crossover([0, 30], [0.1])


def test_stratified_order_gives_nested_balanced_prefixes():
    y = torch.tensor([0] * 13 + [1] * 11)
    order = stratified_order(y, seed=3)
    assert sorted(order.tolist()) == list(range(24))
    for n in range(1, 23):
        counts = torch.bincount(y[order[:n]], minlength=2)
        assert int(counts.max() - counts.min()) <= 1, (n, counts)
    assert torch.equal(order, stratified_order(y, seed=3))
    assert not torch.equal(order, stratified_order(y, seed=4))


# ------------------------------------------------------------------------------------------ curves


def test_data_efficiency_points_are_compare_strategies_results():
    """Stage 1 is trained once per seed and reused: each point must still be exactly what
    compare_strategies gives with those labels (same initial weights, same budgets)."""
    table = cv.data_efficiency_curve((4, 12), (0, 1), data=small, **TINY)
    assert table.kind == "data_efficiency" and table.xs == [4, 12] and table.series == ["scratch", "naive", "mmd"]
    assert len(table.rows) == 6 and all(r.seeds == (0, 1) for r in table.rows)
    for d in table.to_dicts():
        assert d["mean"] == pytest.approx(np.mean(d["values"])) and d["std"] == pytest.approx(np.std(d["values"], ddof=1))
    data = small(1)
    order = stratified_order(torch.as_tensor(data.target_labeled[1]), 1)
    xl, yl = data.target_labeled
    idx = order[:12].numpy()
    # the curve's stage 1 sees no label, so its "mmd" aligns at the default λ (0.5) instead of searching
    ref = compare_strategies(data.source, data.target_unlabeled, data.target_test, (xl[idx], yl[idx]), seed=1,
                             strategies=["scratch", "naive", "mmd"], num_threads=1, lambda_mmd=0.5, **TINY)
    for s in ("scratch", "naive", "mmd"):
        assert table.select(s)[1].values[1] == ref.accuracy[s], s
    text = table.table()
    assert "target labels" in text and "mean ± std over seeds 0, 1" in text
    assert f"{100 * table.select('mmd')[0].mean:.1f} ± {100 * table.select('mmd')[0].std:.1f}" in text


def test_layer_transferability_copies_and_freezes_exactly_the_first_k_layers(monkeypatch):
    runs = []

    class Recording(TwoStageTrainer):
        def align(self, *args, **kwargs):
            out = super().align(*args, **kwargs)
            runs.append(("source", None, copy_state(self.model)))
            return out

        def finetune(self, *args, **kwargs):
            start = copy_state(self.model)
            out = super().finetune(*args, **kwargs)
            runs.append(("target", self.finetune_policy, start, copy_state(self.model)))
            return out

    def copy_state(model):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    monkeypatch.setattr(layers, "TwoStageTrainer", Recording)
    table = cv.layer_transferability(None, (0,), data=small, hidden_sizes=(8, 8, 8), source_epochs=2,
                                     target_epochs=2)
    assert table.xs == [0, 1, 2, 3] and table.series == ["frozen", "fine-tuned"]
    assert table.select("frozen")[0].values == table.select("fine-tuned")[0].values  # k = 0: the scratch run
    source = runs[0][2]
    targets = runs[1:]
    assert len(targets) == 1 + 2 * 3  # k = 0 once, then frozen and fine-tuned for k = 1..3
    first_start = targets[0][2]

    def layer(state, i):
        return [k for k in state if k.startswith(f"encoder.blocks.{i}.")]

    ks = [0, 1, 1, 2, 2, 3, 3]  # the order of the runs: k = 0, then per k frozen, fine-tuned
    for (_, policy, start, end), k, frozen in zip(targets, ks, [True] + [True, False] * 3):
        assert (policy is not None and policy.k == k) if frozen and k > 0 else policy is None
        # at the start: the first k layers are the source network's, the others the shared initial weights
        for i in range(3):
            want = source if i < k else first_start
            assert all(torch.equal(start[n], want[n]) for n in layer(start, i))
        assert torch.equal(start["head.layers.0.weight"], first_start["head.layers.0.weight"])
        if policy is not None:  # frozen: the copied layers do not move, the rest trains
            for i in range(k):
                assert all(torch.equal(end[n], source[n]) for n in layer(end, i))
            assert not torch.equal(end["head.layers.0.weight"], start["head.layers.0.weight"])
    for _, _, _, end in targets[2::2]:  # fine-tuned, k >= 1: the copied first layer trains too
        assert not torch.equal(end["encoder.blocks.0.0.weight"], source["encoder.blocks.0.0.weight"])


def test_copied_layers_pay_when_target_and_source_agree():
    """Target = source distribution: a frozen source-trained encoder with a new head (k = L) beats the
    from-scratch network (k = 0) given the same tiny target budget."""
    same = lambda s: small(s, rotation=0.0, shift=(0.0, 0.0))  # noqa: E731
    table = cv.layer_transferability((0, 2), (0, 1), data=same, hidden_sizes=(16, 16), source_epochs=60,
                                     target_epochs=3)
    frozen = table.means("frozen")
    assert frozen[1] >= frozen[0] + 0.1, table.table()  # seeds 0-5 in pairs: +24 to +46 points
    assert "L = 2 layers" in table.table()


def test_divergence_sweep_transfer_pays_at_zero_and_crosses_over():
    data = lambda s, a: small(s, rotation=a, shift=(0.0, 0.0), labels=10)  # noqa: E731
    table = cv.divergence_sweep((0, 90, 180), (0,), data=data, align_epochs=3, finetune_epochs=3)
    assert table.series == ["source_only", "scratch", "naive", "mmd"] and table.xs == [0.0, 90.0, 180.0]
    gaps = table.gaps
    assert gaps[0] >= 0.0, table.table()  # no shift: the source-trained model is a head start
    # 180°: the moons are point-symmetric, so the target is the source with its labels swapped
    assert gaps[2] < 0.0, table.table()
    want = cv.find_crossover(table.xs, gaps, "the best transfer strategy")
    assert table.crossover == want.x and table.crossover_reason == want.reason and 0 < table.crossover < 180
    assert set(table.crossovers) == {"naive", "mmd"}
    # the input MMD² column: pytl.mmd2 of the raw source and target inputs at each angle
    d90 = data(0, 90.0)
    m90 = float(pytl.mmd2(torch.as_tensor(d90.source[0]).double(), torch.as_tensor(d90.target_unlabeled).double()))
    assert table.mmd2[1].mean == pytest.approx(m90, rel=1e-12)
    assert table.mmd2[1].mean > 5 * max(table.mmd2[0].mean, table.mmd2[2].mean)  # rotation by 180° moves no mass
    assert all(d["input_mmd2"] == table.mmd2[table.xs.index(d["angle"])].mean for d in table.to_dicts())
    text = table.table()
    assert "input MMD²" in text and "best − scratch" in text and "crossover:" in text


# ------------------------------------------------------------------------------------------ bad input

LABELED_50 = small(0, labels=50)
BAD = [
    ("empty counts", cv.data_efficiency_curve, dict(label_counts=[]), ValueError, "label_counts is empty"),
    ("zero count", cv.data_efficiency_curve, dict(label_counts=[0, 10]), ValueError, "label_counts must hold ints >= 1"),
    ("float count", cv.data_efficiency_curve, dict(label_counts=[10.5]), TypeError, "label_counts must hold ints"),
    ("count below classes", cv.data_efficiency_curve, dict(label_counts=[1, 10]), ValueError, "number of classes"),
    ("count above pool", cv.data_efficiency_curve, dict(label_counts=[10, 60], data=LABELED_50), ValueError,
     "only 50 labelled"),
    ("no seeds", cv.data_efficiency_curve, dict(seeds=[]), ValueError, "seeds is empty"),
    ("int seeds", cv.data_efficiency_curve, dict(seeds=3), TypeError, "seeds must be a sequence"),
    ("duplicate seeds", cv.data_efficiency_curve, dict(seeds=[0, 0]), ValueError, "duplicates"),
    ("negative seed", cv.data_efficiency_curve, dict(seeds=[-1]), ValueError, "seeds must hold ints >= 0"),
    ("bad strategy", cv.data_efficiency_curve, dict(strategies=["dann"]), ValueError, "strategies"),
    ("unknown option", cv.data_efficiency_curve, dict(epochs=3), TypeError, "unknown option"),
    ("seed option", cv.data_efficiency_curve, dict(seed=1), TypeError, "seeds="),
    ("bad epochs", cv.data_efficiency_curve, dict(label_counts=[4], seeds=[0], finetune_epochs=-1), ValueError,
     "finetune_epochs"),
    ("bad data", cv.data_efficiency_curve, dict(data={"source": 1}), TypeError, "target_unlabeled"),
    ("layer above L", cv.layer_transferability, dict(layers=[0, 3], hidden_sizes=(8, 8)), ValueError, r"0\.\.2"),
    ("negative layer", cv.layer_transferability, dict(layers=[-1]), ValueError, "layers must hold ints >= 0"),
    ("float layer", cv.layer_transferability, dict(layers=[1.5]), TypeError, "layers must hold ints"),
    ("no target epochs", cv.layer_transferability, dict(target_epochs=0), ValueError, "target_epochs"),
    ("bad lr", cv.layer_transferability, dict(lr=-1.0), ValueError, "lr"),
    ("bad hidden sizes", cv.layer_transferability, dict(hidden_sizes=()), ValueError, "hidden_sizes"),
    ("model without layers", cv.layer_transferability, dict(model=torch.nn.Linear(2, 2)), ValueError,
     "no layer below its head"),
    ("nan angle", cv.divergence_sweep, dict(angles=[0, float("nan")]), ValueError, "angles must be finite"),
    ("inf angle", cv.divergence_sweep, dict(angles=[0, math.inf]), ValueError, "angles must be finite"),
    ("no angles", cv.divergence_sweep, dict(angles=[]), ValueError, "angles is empty"),
    ("text angle", cv.divergence_sweep, dict(angles=["30"]), TypeError, "angles must hold numbers"),
    ("duplicate angles", cv.divergence_sweep, dict(angles=[0, 30, 0]), ValueError, "duplicates"),
    ("no scratch", cv.divergence_sweep, dict(strategies=["naive", "mmd"]), ValueError, "'scratch'"),
    ("no transfer", cv.divergence_sweep, dict(strategies=["scratch", "source_only"]), ValueError, "at least one of"),
    ("data not callable", cv.divergence_sweep, dict(data=LABELED_50), TypeError, "callable"),
    ("bad shift", cv.divergence_sweep, dict(shift=(1.0,)), ValueError, "shift"),
    ("bad model", cv.divergence_sweep, dict(model="mlp"), TypeError, "model must be"),
    ("float seed", cv.divergence_sweep, dict(seeds=[0, 1.0]), TypeError, "seeds must hold ints"),
    ("float n_target_labeled", cv.divergence_sweep, dict(n_target_labeled=10.0), TypeError, "n_target_labeled"),
    ("one n_target_labeled", cv.divergence_sweep, dict(n_target_labeled=1), ValueError,
     "n_target_labeled must be an int >= 2"),
    ("strategies not names", cv.divergence_sweep, dict(strategies=None), TypeError, "strategies must be a sequence"),
    ("negative source epochs", cv.layer_transferability, dict(source_epochs=-1), ValueError,
     "source_epochs must be an int >= 0"),
    ("float target epochs", cv.layer_transferability, dict(target_epochs=5.0), TypeError, "target_epochs"),
]


@pytest.mark.parametrize("case, func, kwargs, exc, words", BAD, ids=[b[0] for b in BAD])
def test_grids_and_options_are_checked_before_any_training(no_training, case, func, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        func(**kwargs)


# ------------------------------------------------------------------------------------------ CLI

CLI_TINY = ["--seeds", "1", "--quiet"]


def test_cli_divergence_curve_writes_the_table_figure_csv_and_json(tmp_path, capsys):
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None  # CSV and JSON are checked without it
    out, csv_path, json_path = tmp_path / "div.png", tmp_path / "div.csv", tmp_path / "div.json"
    argv = ["curve", "divergence", "--angles", "0,180", "--labels", "10", "--align-epochs", "2",
            "--finetune-epochs", "2", "--csv", str(csv_path), "--json", str(json_path)] + CLI_TINY
    assert main(argv + (["--out", str(out)] if has_matplotlib else [])) == 0
    text = capsys.readouterr().out
    assert "divergence sweep" in text and "crossover:" in text
    if has_matplotlib:
        assert f"figure written to {out}" in text
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("angle,series,mean,std,n_seeds,values,seeds,input_mmd2")
    assert len(lines) == 1 + 2 * 4  # two angles x four strategies
    payload = json.loads(json_path.read_text())
    assert payload["kind"] == "divergence_sweep" and len(payload["rows"]) == 8


def test_cli_layers_and_data_efficiency_curves(capsys):
    assert main(["curve", "layers", "--depth", "2", "--width", "8", "--source-epochs", "1", "--target-epochs", "1",
                 "--labels", "10"] + CLI_TINY) == 0
    text = capsys.readouterr().out
    assert "layers copied (k)" in text and "L = 2 layers" in text
    assert main(["curve", "data-efficiency", "--labels", "4,8", "--align-epochs", "1", "--finetune-epochs", "1"]
                + CLI_TINY) == 0
    text = capsys.readouterr().out
    assert "data-efficiency curve" in text and "seed 0" in text


@pytest.mark.parametrize("argv, words", [
    (["curve"], "required"),
    (["curve", "histogram"], "invalid choice"),
    (["curve", "layers", "--layers", "0,x"], "comma-separated integers"),
    (["curve", "data-efficiency", "--labels", "0,10"], "integers >= 1"),
    (["curve", "data-efficiency", "--labels", "10,10"], "distinct"),
    (["curve", "divergence", "--angles", "0,nan"], "finite angles"),
    (["curve", "divergence", "--seeds", "0"], "positive integer"),
    (["curve", "layers", "--depth", "2", "--layers", "0,3"], "0..2"),
    (["curve", "data-efficiency", "--labels", "1,10"], "number of classes"),
    (["curve", "divergence", "--out", "figure.txt"], ".png"),
    (["curve", "divergence", "--csv", "/no/such/folder/t.csv"], "does not exist"),
])
def test_cli_curve_argument_errors_exit_2_before_training(no_training, argv, words, capsys):
    assert cli_exit_code(argv) == 2
    assert words in capsys.readouterr().err


def test_cli_curve_out_without_matplotlib_fails_before_training(no_training, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("pytl.plot.matplotlib_available", lambda: False)
    assert main(["curve", "layers", "--out", str(tmp_path / "x.png")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def test_curve_functions_are_exported():
    for name in ("data_efficiency_curve", "layer_transferability", "divergence_sweep"):
        assert getattr(pytl, name) is getattr(cv, name)
