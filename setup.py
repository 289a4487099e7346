"""Build the pytl._C extension: the fused RBF-kernel MMD ops (CPU, plus CUDA when it can be built).

Metadata lives in pyproject.toml; the sources and flags come from pytl/_toolchain.py, the one build
description that the JIT loader (pytl/_loader.py) and CMakeLists.txt use too.

    pip install --no-build-isolation .        # wheel with the prebuilt pytl._C
    pip install --no-build-isolation -e .     # editable: pytl/_C*.so lands next to the sources

Environment switches
  PYTL_WITH_CUDA=0|1     force a CPU-only build (0) or require the CUDA kernels (1). Unset: CUDA is
                         built when torch has CUDA (torch.version.cuda) and a CUDA toolkit is found.
  CUDA_HOME / CUDA_PATH  the toolkit root (the folder whose include/ holds cuda_runtime.h). Unset: torch's
                         guess from the nvcc on PATH, and when that guess is wrong (an nvcc wrapper script)
                         the real toolkit, found by following the wrapper or under /usr/local/cuda*.
  TORCH_CUDA_ARCH_LIST   GPU architectures; defaults to "8.0;9.0" when no GPU is visible.
  MAX_JOBS               parallel compile jobs; defaults from the cores and memory of this machine.
  PYTL_DEBUG=1           -O0 -g instead of -O3.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
# Sources must be given relative to setup.py for setuptools (absolute paths break sdists).
os.chdir(ROOT)


def _log(msg: str) -> None:
    print(f"pytl setup: {msg}", file=sys.stderr, flush=True)


try:
    import torch
except ImportError:  # pragma: no cover - only without torch
    sys.exit(
        "pytl setup: torch must be installed before building pytl (the extension is compiled against it).\n"
        "  pip install torch && pip install --no-build-isolation .\n"
        "(--no-build-isolation makes pip use the torch you have instead of downloading another one.)"
    )


# The build description and toolchain facts shared with pytl's JIT loader (pytl/_toolchain.py), loaded by
# path: importing the pytl package itself would try to load the ops that this file is about to build.
_spec = importlib.util.spec_from_file_location("_pytl_toolchain", ROOT / "pytl" / "_toolchain.py")
toolchain = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = toolchain  # (dataclasses look their module up there)
_spec.loader.exec_module(toolchain)


def _env_flag(name: str) -> bool | None:
    try:
        return toolchain.env_flag(name)
    except ValueError as exc:
        sys.exit(f"pytl setup: {exc}")


WITH_CUDA_REQUEST = _env_flag("PYTL_WITH_CUDA")
cuda = toolchain.decide_cuda(WITH_CUDA_REQUEST, torch.version.cuda, torch.__version__, "csrc")
for note in cuda.notes:
    _log(note)
if WITH_CUDA_REQUEST is True and cuda.problems:
    sys.exit("pytl setup: PYTL_WITH_CUDA=1 but the CUDA kernels cannot be built:\n  - " + "\n  - ".join(cuda.problems))
if WITH_CUDA_REQUEST is None and cuda.problems:
    _log(f"building the CPU kernels only: {cuda.problems[0]}. PYTL_WITH_CUDA=1 makes this an error.")
WITH_CUDA = cuda.with_cuda

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402  (after CUDA_HOME)

if not os.environ.get("MAX_JOBS"):
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cores = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        by_memory = max(1, int(mem_gib // (4 if WITH_CUDA else 2)))  # nvcc jobs peak at a few GiB
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        by_memory = cores
    os.environ["MAX_JOBS"] = str(max(1, min(cores, by_memory)))

# ----------------------------------------------------------------------------------------------------
# The extension
# ----------------------------------------------------------------------------------------------------
debug = _env_flag("PYTL_DEBUG") is True
build = toolchain.describe_build("csrc", with_cuda=WITH_CUDA, python_module=True, debug=debug)
if not (CSRC / toolchain.PYTHON_MODULE_SOURCE).exists():
    _log(f"warning: csrc/{toolchain.PYTHON_MODULE_SOURCE} (the PyInit__C stub) is missing; the module will not import")
sources = build.sources
extra_compile_args = {"cxx": build.cxx_flags}
if WITH_CUDA:
    extra_compile_args["nvcc"] = build.nvcc_flags
Extension = CUDAExtension if WITH_CUDA else CppExtension

_log(
    f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
    f"{'CPU+CUDA' if WITH_CUDA else 'CPU-only'} build"
    + (f", CUDA_HOME={cuda.home}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}" if WITH_CUDA else "")
    + f", MAX_JOBS={os.environ['MAX_JOBS']}, {len(sources)} sources"
)

ext_modules = [
    Extension(
        name="pytl._C",
        sources=sources,
        include_dirs=[str(ROOT / d) for d in build.include_dirs],
        define_macros=[(macro, None) for macro in build.macros],
        extra_compile_args=extra_compile_args,
        extra_link_args=build.link_flags,
    )
]

SOURCE_PATTERNS = ("*.cpp", "*.cu", "*.h", "*.cuh", "*.hpp")


class build_py_with_csrc(build_py):
    """Ship csrc/ inside regular wheels as pytl/csrc/, so that pytl's JIT fallback can rebuild the ops
    if the prebuilt _C does not load (e.g. after torch was upgraded). Editable installs use ./csrc."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for pattern in SOURCE_PATTERNS:
            for src in CSRC.rglob(pattern):
                dst = Path(self.build_lib) / "pytl" / "csrc" / src.relative_to(CSRC)
                dst.parent.mkdir(parents=True, exist_ok=True)
                self.copy_file(str(src), str(dst))


setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension, "build_py": build_py_with_csrc},
)
