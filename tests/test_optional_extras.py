"""The optional extras stay optional: with none of scikit-learn, matplotlib, tqdm, scipy, mlxtend, pillow or
IPython importable, ``import pytl`` works, a comparison trains and prints its progress line, and what needs an
extra says which one."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ("sklearn", "matplotlib", "tqdm", "scipy", "mlxtend", "PIL", "IPython")

SCRIPT = textwrap.dedent(f"""
    import sys

    for name in {BLOCKED!r}:  # None in sys.modules: import raises ImportError, find_spec answers None (absent)
        sys.modules[name] = None
    import torch
    import pytl
    from pytl import plot
    from pytl.projection import project

    d = pytl.make_domain_shift(0, n_source=60, n_target_unlabeled=60, n_target_labeled=10, n_target_test=20)
    r = pytl.compare_strategies(**d.as_dict(), align_epochs=2, finetune_epochs=2, folds=None, num_threads=1,
                                progress=True)
    assert "mmd" in r.accuracy and "<table>" in r._repr_html_()
    assert float(pytl.mmd2(torch.randn(10, 2), torch.randn(12, 2))) >= 0
    assert project(torch.randn(10, 3).numpy()).shape == (10, 2)
    for call, extra in ((lambda: __import__("pytl.sklearn"), "pytl[sklearn]"),
                        (lambda: plot.plot_embeddings(r, d.source, d.target_test), "pytl[plot]"),
                        (lambda: project(torch.randn(10, 3).numpy(), "tsne"), "pytl[sklearn]")):
        try:
            call()
        except ImportError as e:
            assert extra in str(e), str(e)
        else:
            raise AssertionError(f"no ImportError naming {{extra}}")
    print("OK", sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in {BLOCKED!r}))
""")


def test_pytl_works_without_any_optional_extra():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "OK []"
    assert "align 2/2" in out.stderr  # the dependency-free progress line, in a log
