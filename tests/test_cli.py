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
    assert "λ = 0.5" in out and "50 target labels" in out


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
    assert f"written to {path}" in capsys.readouterr().out


def test_demo_plot_without_matplotlib_fails_before_training(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("pytl.plot.matplotlib_available", lambda: False)
    monkeypatch.setattr("pytl.cli.demo.compare_strategies", lambda *a, **k: pytest.fail("training started"))
    assert main(FAST + ["--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["demo", "--seeds", "0"], "positive integer"),
    (["demo", "--lambda", "-1"], "number >= 0"),
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
