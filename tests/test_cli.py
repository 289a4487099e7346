"""python -m pytl demo: the table, the seeds, the plot, the device, and argument errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytl.cli import exit_status as cli_exit_code
from pytl.cli import main

ROOT = Path(__file__).absolute().parent.parent
FAST = ["demo", "--align-epochs", "2", "--finetune-epochs", "2"]


def test_demo_prints_the_comparison_table(capsys):
    assert main(FAST) == 0
    out = capsys.readouterr().out
    for s in ("source_only", "mmd_only", "scratch", "naive", "mmd", "ensemble", "negative transfer:"):
        assert s in out
    assert "λ = auto" in out and "50 target labels" in out
    assert "(λ chosen from the data: lambda_mmd: " in out  # the table names the λ the search chose


def test_demo_takes_a_fixed_lambda(capsys):
    assert main(FAST + ["--lambda", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "λ = 0.3" in out and "CE + 0.3·MMD²" in out and "λ chosen from the data" not in out


def test_demo_averages_several_seeds(capsys):
    assert main(FAST + ["--seeds", "2", "--seed", "5", "--labels", "20"]) == 0
    out = capsys.readouterr().out
    assert "seed 5 (" in out and "seed 6 (" in out and "mean ± std over seeds 5, 6" in out
    assert "20 target labels" in out


def test_demo_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "demo.png"
    assert main(FAST + ["--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    embeddings = tmp_path / "demo_embeddings.png"  # source_only beside mmd_only
    assert embeddings.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and embeddings.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert f"written to {path}" in out and f"written to {embeddings}" in out


def test_demo_plot_without_matplotlib_fails_before_training(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("pytl.plot.matplotlib_available", lambda: False)
    monkeypatch.setattr("pytl.cli.demo.compare_strategies", lambda *a, **k: pytest.fail("training started"))
    assert main(FAST + ["--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["demo", "--seeds", "0"], "positive integer"),
    (["demo", "--lambda", "-1"], "'auto' or a finite number >= 0"),
    (["demo", "--lambda", "often"], "'auto' or a finite number >= 0"),
    (["demo", "--align-epochs", "x"], "integer >= 0"),
    (["demo", "--plot", "figure.txt"], ".png"),
])
def test_demo_argument_errors(argv, words, capsys):
    assert cli_exit_code(argv) == 2
    assert words in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_demo_cuda_without_gpu_is_a_clear_error(capsys):
    assert main(FAST + ["--device", "cuda"]) == 2
    assert "is_available() is False" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_demo_on_cuda(capsys):
    assert main(FAST + ["--device", "cuda"]) == 0
    assert "device cuda" in capsys.readouterr().out


def test_python_dash_m_pytl_runs_as_a_module():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "pytl", "--version"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pytl ")
    done = subprocess.run([sys.executable, "-m", "pytl"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 2 and "demo" in done.stdout


def test_divergence_on_user_arrays(tmp_path, capsys):
    import numpy as np

    g = np.random.default_rng(0)
    np.save(tmp_path / "src.npy", g.normal(size=(300, 4)))
    np.savetxt(tmp_path / "tgt.csv", g.normal(size=(250, 4)) + 2.0, delimiter=",")
    assert main(["divergence", str(tmp_path / "src.npy"), str(tmp_path / "tgt.csv"), "--permutations", "99"]) == 0
    out = capsys.readouterr().out
    assert "verdict: high" in out and "p-value 0.0100" in out  # (0 + 1) / (99 + 1): no permutation beats a shift of 2


def test_divergence_npz_and_bad_files(tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "two.npz", a=np.zeros((10, 2)), b=np.ones((10, 2)))
    np.save(tmp_path / "ok.npy", np.zeros((10, 2)))
    assert main(["divergence", str(tmp_path / "two.npz"), str(tmp_path / "ok.npy")]) == 2
    assert "choose one with --key" in capsys.readouterr().err
    assert main(["divergence", str(tmp_path / "missing.npy"), str(tmp_path / "ok.npy")]) == 2
    assert "no such file" in capsys.readouterr().err
    np.save(tmp_path / "wide.npy", np.zeros((10, 3)))
    assert main(["divergence", str(tmp_path / "wide.npy"), str(tmp_path / "ok.npy")]) == 2
    assert "pytl divergence:" in capsys.readouterr().err


def test_divergence_skips_a_csv_header_row_and_says_so(tmp_path, capsys):
    import numpy as np

    g = np.random.default_rng(0)
    path = tmp_path / "src.csv"
    np.savetxt(path, g.normal(size=(20, 3)), delimiter=",", header="f0,f1,f2", comments="")
    np.save(tmp_path / "tgt.npy", g.normal(size=(20, 3)))
    assert main(["divergence", str(path), str(tmp_path / "tgt.npy"), "--permutations", "9"]) == 0
    captured = capsys.readouterr()
    assert "verdict:" in captured.out
    note = captured.err.strip()
    assert "\n" not in note and str(path) in note and "'f0,f1,f2'" in note and "header" in note
    # a cell missing from the first row is a missing value, not a header: an error at that cell
    (tmp_path / "gap.csv").write_text("1,,2\n3,4,5\n6,7,8\n9,1,2\n")
    assert main(["divergence", str(tmp_path / "gap.csv"), str(tmp_path / "tgt.npy")]) == 2
    assert "line 1, column 2: '' is not a number" in capsys.readouterr().err


def _write_bad_files(tmp_path):
    import numpy as np

    (tmp_path / "cell.csv").write_text("f0,f1\n1,2\n3,x\n")
    (tmp_path / "ragged.csv").write_text("1,2\n3,4\n5\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "only-header.csv").write_text("a,b\n")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81")
    np.savez(tmp_path / "words.npz", np.array([["a", "b"]] * 5))
    np.savez(tmp_path / "no-arrays.npz")
    np.save(tmp_path / "no-rows.npy", np.zeros((0, 2)))
    np.save(tmp_path / "nan.npy", np.array([[1.0, 2.0], [np.nan, 1.0]] * 5))
    (tmp_path / "junk.npz").write_text("not a zip")
    (tmp_path / "junk.npy").write_text("not an array")
    np.save(tmp_path / "ok.npy", np.zeros((10, 2)))


@pytest.mark.parametrize("name, words", [
    ("cell.csv", "line 3, column 2: 'x' is not a number"),
    ("ragged.csv", "line 3 has 1 value, line 1 has 2"),
    ("empty.csv", "the file is empty"),
    ("only-header.csv", "a header row and no samples"),
    ("binary.csv", "not a text file"),
    ("words.npz", "expected real numbers, the array holds text"),
    ("no-arrays.npz", "holds no arrays"),
    ("no-rows.npy", "no samples"),
    ("nan.npy", "NaN or infinite values in 5 of 10 samples"),
    ("junk.npz", "not a readable .npz file"),
    ("junk.npy", "not a readable .npy file"),
])
@pytest.mark.parametrize("side", ["source", "target"])
def test_divergence_load_errors_name_the_file(tmp_path, capsys, name, words, side):
    import warnings

    _write_bad_files(tmp_path)
    bad, ok = str(tmp_path / name), str(tmp_path / "ok.npy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warning may leak (an empty .csv)
        assert cli_exit_code(["divergence", *([bad, ok] if side == "source" else [ok, bad])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pytl divergence: error: ") and err.count("\n") == 1, err
    assert f"{side} {bad}: " in err and words in err, err
