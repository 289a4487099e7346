"""Loads pytl's compiled ops (torch.ops.pytl.*): the prebuilt extension, else a JIT build.

Order: ``pytl._C`` built by ``pip install`` (skipped when ``PYTL_JIT=1``); otherwise the same
sources (``csrc/`` of a checkout, or ``pytl/csrc/`` shipped in a wheel) are compiled with
``torch.utils.cpp_extension.load`` (CUDA kernels too when torch has CUDA and a toolkit is found,
unless ``PYTL_WITH_CUDA=0``), from the build description that setup.py uses (pytl/_toolchain.py:
the same sources and flags; ``PYTL_DEBUG=1`` too). A failure says what is missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from pytl import _toolchain

_PACKAGE = Path(__file__).resolve().parent
_SOURCE_DIRS = (_PACKAGE.parent / "csrc", _PACKAGE / "csrc")  # a checkout, then a wheel
_JIT_NAME = "pytl_jit_ops"

# How the ops were loaded: "prebuilt" or "jit" (set by load_ops()).
backend: str | None = None


def _ops_registered() -> bool:
    return hasattr(torch.ops, "pytl") and hasattr(torch.ops.pytl, "mmd2_terms")


def _env_flag(name: str) -> bool | None:
    try:
        return _toolchain.env_flag(name)
    except ValueError as exc:
        raise ImportError(f"pytl: {exc}") from None


def _jit_build_description() -> _toolchain.Build:
    """setup.py's build, less the PyInit__C stub (the JIT build is a plain library that registers the ops)."""
    csrc = next((d for d in _SOURCE_DIRS if (d / "ops.cpp").is_file()), None)
    if csrc is None:
        raise ImportError(
            "pytl: no prebuilt extension (pytl._C) and no C++ sources to build at "
            f"{' or '.join(map(str, _SOURCE_DIRS))}. Install pytl with `pip install --no-build-isolation .` "
            "from a source checkout."
        )
    want_cuda = _env_flag("PYTL_WITH_CUDA")
    cuda = _toolchain.decide_cuda(want_cuda, torch.version.cuda, torch.__version__, csrc)
    for note in cuda.notes:
        print(f"pytl: {note}", file=sys.stderr)
    if want_cuda is True and cuda.problems:
        raise ImportError("pytl: PYTL_WITH_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(cuda.problems))
    with_cuda = cuda.with_cuda
    return _toolchain.describe_build(csrc, with_cuda=with_cuda, python_module=False,
                                     debug=_env_flag("PYTL_DEBUG") is True)


def _jit_build(reason: str) -> None:
    from torch.utils import cpp_extension

    build = _jit_build_description()
    with_cuda = build.with_cuda
    print(
        f"pytl: building the {'CPU+CUDA' if with_cuda else 'CPU'} ops with torch.utils.cpp_extension.load "
        f"({reason}; the first build takes a few minutes, then it is cached)",
        file=sys.stderr,
    )
    defines = [f"-D{macro}" for macro in build.macros]
    try:
        cpp_extension.load(
            name=_JIT_NAME + ("_cuda" if with_cuda else ""),
            sources=build.sources,
            extra_include_paths=build.include_dirs,
            extra_cflags=build.cxx_flags + defines,
            extra_cuda_cflags=build.nvcc_flags + defines,
            extra_ldflags=build.link_flags,
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=os.environ.get("PYTL_JIT_VERBOSE") == "1",
        )
    except Exception as exc:  # the compiler's output is in the exception text
        raise ImportError(
            "pytl: the JIT build of the C++ ops failed. It needs a C++ compiler, ninja "
            "(pip install ninja) and, for CUDA, nvcc with CUDA_HOME set to the toolkit root. "
            f"Underlying error: {exc}"
        ) from exc


def load_ops() -> str:
    """Make torch.ops.pytl.* available; return how ("prebuilt" or "jit")."""
    global backend
    if backend is not None:
        return backend
    reason = "PYTL_JIT=1"
    if os.environ.get("PYTL_JIT") != "1":
        try:
            from pytl import _C  # noqa: F401  (importing registers the ops)

            backend = "prebuilt"
        except ImportError as exc:  # absent, or built against another torch
            reason = f"no usable prebuilt pytl._C: {exc}"
    if backend is None:
        _jit_build(reason)
        backend = "jit"
    if not _ops_registered():
        raise ImportError("pytl: the compiled library loaded but torch.ops.pytl.mmd2_terms is not registered")
    return backend
