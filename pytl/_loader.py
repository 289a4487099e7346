"""Loads pytl's compiled ops (torch.ops.pytl.*): the prebuilt extension, else a JIT build.

Order: ``pytl._C`` built by ``pip install`` (skipped when ``PYTL_JIT=1``); otherwise the same
sources under ``csrc/`` are compiled with ``torch.utils.cpp_extension.load`` (CUDA kernels too when
torch has CUDA and a toolkit is found, unless ``PYTL_WITH_CUDA=0``). A failure says what is missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

_CSRC = Path(__file__).resolve().parent.parent / "csrc"
_JIT_NAME = "pytl_jit_ops"

# How the ops were loaded: "prebuilt" or "jit" (set by load_ops()).
backend: str | None = None


def _ops_registered() -> bool:
    return hasattr(torch.ops, "pytl") and hasattr(torch.ops.pytl, "mmd2_terms")


def _jit_sources() -> tuple[list[str], bool]:
    if not (_CSRC / "ops.cpp").is_file():
        raise ImportError(
            f"pytl: no prebuilt extension (pytl._C) and no C++ sources to build at {_CSRC}. "
            "Install pytl with `pip install --no-build-isolation .` from a source checkout, "
            "or run from the checkout so that csrc/ is found."
        )
    from torch.utils import cpp_extension

    sources = [str(p) for p in sorted(_CSRC.glob("*.cpp")) if p.name != "python_module.cpp"]
    sources += [str(p) for p in sorted((_CSRC / "cpu").glob("*.cpp"))]
    want_cuda = os.environ.get("PYTL_WITH_CUDA")
    cuda_ok = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if want_cuda == "1" and not cuda_ok:
        raise ImportError(
            "pytl: PYTL_WITH_CUDA=1 but this torch has no CUDA "
            f"(torch.version.cuda={torch.version.cuda}) or no CUDA toolkit was found "
            f"(CUDA_HOME={cpp_extension.CUDA_HOME}); set CUDA_HOME to the toolkit root."
        )
    with_cuda = cuda_ok and want_cuda != "0"
    if with_cuda:
        sources += [str(p) for p in sorted((_CSRC / "cuda").glob("*.cu"))]
    return sources, with_cuda


def _jit_build() -> None:
    from torch.utils import cpp_extension

    sources, with_cuda = _jit_sources()
    print(
        f"pytl: building the {'CPU+CUDA' if with_cuda else 'CPU'} ops with torch.utils.cpp_extension.load "
        "(no prebuilt pytl._C found or PYTL_JIT=1; the first build takes a minute or two, then it is cached)",
        file=sys.stderr,
    )
    try:
        cpp_extension.load(
            name=_JIT_NAME + ("_cuda" if with_cuda else ""),
            sources=sources,
            extra_cflags=["-O3", "-Wno-psabi"] + (["-DPYTL_WITH_CUDA"] if with_cuda else []),
            extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr"],
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=os.environ.get("PYTL_JIT_VERBOSE") == "1",
        )
    except Exception as exc:  # the compiler's output is in the exception text
        raise ImportError(
            "pytl: the JIT build of the C++ ops failed. It needs a C++17 compiler, ninja "
            "(pip install ninja) and, for CUDA, nvcc with CUDA_HOME set to the toolkit root. "
            f"Underlying error: {exc}"
        ) from exc


def load_ops() -> str:
    """Make torch.ops.pytl.* available; return how ("prebuilt" or "jit")."""
    global backend
    if backend is not None:
        return backend
    if os.environ.get("PYTL_JIT") != "1":
        try:
            from pytl import _C  # noqa: F401  (importing registers the ops)

            backend = "prebuilt"
        except ImportError:
            pass
    if backend is None:
        _jit_build()
        backend = "jit"
    if not _ops_registered():
        raise ImportError("pytl: the compiled library loaded but torch.ops.pytl.mmd2_terms is not registered")
    return backend
