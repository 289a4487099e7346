"""The build of pytl's C++/CUDA ops, described once: setup.py, the JIT loader (pytl/_loader.py) and
CMakeLists.txt build the same sources with the same flags. No pytl imports here: setup.py loads this
file by path, before the ops exist.

- The build description: the source globs under csrc/ and the compiler flags, as one-line tuples of
  string literals that CMakeLists.txt reads too; describe_build() turns them into the lists that
  setup.py and torch.utils.cpp_extension.load take.
- The CUDA toolkit root. torch guesses CUDA_HOME as the parent of the `nvcc` on PATH; where that nvcc
  is a wrapper script (as on the team's machines) the guess is wrong, so the real toolkit is found by
  reading the wrapper or under /usr/local/cuda*.
- OpenMP: at::parallel_for is a header template, and with torch's OpenMP backend it only runs in
  parallel when the extension itself is compiled with -fopenmp (otherwise ParallelOpenMP.h falls back
  to a serial loop). The libgomp that torch loads is the one used at run time.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

# ----------------------------------------------------------------------------------------------------
# The build description. CMakeLists.txt parses the assignments from here to CUDA_MACRO: keep each on one
# line, with double-quoted string literals only (a trailing comment is fine).
SOURCE_GLOBS = ("*.cpp", "cpu/*.cpp")  # under csrc/: the op registrations and the CPU kernels
CUDA_SOURCE_GLOBS = ("cuda/*.cu",)
PYTHON_MODULE_SOURCE = "python_module.cpp"  # the PyInit__C stub: only setup.py's importable pytl._C needs it
CXX_FLAGS = ("-Wall", "-Wno-unknown-pragmas", "-Wno-psabi")
CXX_RELEASE_FLAGS = ("-O3", "-g0", "-DNDEBUG")  # -g0: Python's own CFLAGS (setup.py) carry -g
NVCC_FLAGS = ("-lineinfo", "--expt-relaxed-constexpr")
NVCC_RELEASE_FLAGS = ("-O3", "-DNDEBUG")
DEBUG_FLAGS = ("-O0", "-g")  # PYTL_DEBUG=1 (CMake: CMAKE_BUILD_TYPE=Debug), for both compilers
CUDA_MACRO = "PYTL_WITH_CUDA"  # defined when the CUDA kernels are built


@dataclass(frozen=True)
class Build:
    """What to compile and how; macros are defined for both compilers."""

    with_cuda: bool
    sources: list[str]
    include_dirs: list[str]
    macros: list[str]
    cxx_flags: list[str]
    nvcc_flags: list[str]
    link_flags: list[str]


def source_files(csrc: str | Path, patterns: tuple[str, ...]) -> list[str]:
    """The files matching the globs under csrc, each glob's matches sorted, as paths starting with csrc."""
    return [str(path) for pattern in patterns for path in sorted(Path(csrc).glob(pattern))]


def describe_build(csrc: str | Path, *, with_cuda: bool, python_module: bool, debug: bool) -> Build:
    """The build of the ops from the sources under csrc (a path as the builder wants it: setup.py
    needs it relative to itself). python_module: include the PyInit__C stub."""
    cpu = [s for s in source_files(csrc, SOURCE_GLOBS) if python_module or Path(s).name != PYTHON_MODULE_SOURCE]
    openmp = openmp_flags()
    return Build(
        with_cuda=with_cuda,
        sources=cpu + (source_files(csrc, CUDA_SOURCE_GLOBS) if with_cuda else []),
        include_dirs=[str(csrc)],
        macros=[CUDA_MACRO] if with_cuda else [],
        cxx_flags=list(DEBUG_FLAGS if debug else CXX_RELEASE_FLAGS) + list(CXX_FLAGS) + openmp,
        nvcc_flags=list(DEBUG_FLAGS if debug else NVCC_RELEASE_FLAGS) + list(NVCC_FLAGS),
        link_flags=openmp,
    )


def env_flag(name: str) -> bool | None:
    """Tri-state environment switch: None when unset or empty, else True/False; ValueError otherwise."""
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={os.environ[name]!r} is not understood; use {name}=0 or {name}=1")


def use_cuda_home(home: str) -> None:
    """Make torch.utils.cpp_extension build with the toolkit at home. It reads CUDA_HOME when it is first
    imported, so both the environment (for child processes) and its module global are set."""
    from torch.utils import cpp_extension

    os.environ["CUDA_HOME"] = home
    cpp_extension.CUDA_HOME = home


# ----------------------------------------------------------------------------------------------------
# The toolchain


def _is_toolkit(root: str | None) -> bool:
    return bool(root) and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))


def _version_key(path: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", os.path.basename(path)))


def _toolkit_candidates(nvcc: str | None):
    """Places a toolkit may be, most specific first."""
    if nvcc:
        real = os.path.realpath(nvcc)
        yield os.path.dirname(os.path.dirname(real))  # nvcc reached through a symlink
        # nvcc may be a wrapper script ("exec /usr/local/cuda-13.0/bin/nvcc "$@""): read it.
        try:
            with open(real, "rb") as fh:
                head = fh.read(65536)
            if b"\0" not in head:  # a script, not the real (binary) nvcc
                for match in re.finditer(rb"(/[^\s'\"$;:]+)/bin/nvcc\b", head):
                    yield match.group(1).decode(errors="replace")
        except OSError:
            pass
    yield "/usr/local/cuda"
    yield from sorted(glob.glob("/usr/local/cuda-*"), key=_version_key, reverse=True)
    yield "/opt/cuda"


def resolve_cuda_home() -> tuple[str | None, str | None]:
    """(toolkit root or None, a note to show the user or None)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value:
            note = None if _is_toolkit(value) else f"warning: {var}={value} has no include/cuda_runtime.h"
            return value, note
    nvcc = shutil.which("nvcc")
    guess = os.path.dirname(os.path.dirname(nvcc)) if nvcc else None  # torch's own guess
    if _is_toolkit(guess):
        return guess, None
    for candidate in _toolkit_candidates(nvcc):
        if _is_toolkit(candidate):
            why = (
                f"torch would guess CUDA_HOME={guess} from the nvcc at {nvcc}, but {guess}/include has no "
                "cuda_runtime.h (nvcc there is a wrapper)"
                if nvcc
                else "no nvcc on PATH"
            )
            return candidate, f"CUDA_HOME is unset; {why}. Using the toolkit at {candidate} (set CUDA_HOME to override)."
    return None, None


def ensure_cuda_arch_list(default: str = "8.0;9.0") -> str | None:
    """With no GPU visible, torch cannot detect an architecture to compile for: set
    TORCH_CUDA_ARCH_LIST (when unset) to the Ampere and Hopper default. Returns a note, or None."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return None
    import torch

    try:
        gpu_visible = torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception:  # broken driver setups count as no GPU
        gpu_visible = False
    if gpu_visible:
        return None
    os.environ["TORCH_CUDA_ARCH_LIST"] = default
    return f"no GPU visible and TORCH_CUDA_ARCH_LIST unset: compiling for TORCH_CUDA_ARCH_LIST={default}"


@dataclass(frozen=True)
class CudaDecision:
    """Whether to build the CUDA kernels, and why; setup.py and the JIT loader report it each in its way."""

    with_cuda: bool
    home: str | None
    notes: list[str]  # informational: which toolkit, which arch list
    problems: list[str]  # why the CUDA kernels cannot be built (an error when PYTL_WITH_CUDA=1 asked for them)


def decide_cuda(request: bool | None, torch_cuda: str | None, torch_version: str, csrc: str | Path) -> CudaDecision:
    """request: PYTL_WITH_CUDA (None: build them when torch has CUDA, a toolkit is found and there are CUDA
    sources; False: never). A found toolkit becomes torch's CUDA_HOME; TORCH_CUDA_ARCH_LIST gets a default."""
    if request is False:
        return CudaDecision(False, None, [], [])
    notes: list[str] = []
    home = None
    if torch_cuda is not None:
        home, note = resolve_cuda_home()
        notes += [note] if note else []
        if home:
            use_cuda_home(home)
    problems = []
    if torch_cuda is None:
        problems.append(f"the installed torch {torch_version} was built without CUDA (torch.version.cuda is None); "
                        "install a CUDA build of torch")
    elif not home:
        problems.append("no CUDA toolkit was found: set CUDA_HOME to the toolkit root (the folder whose include/ "
                        "holds cuda_runtime.h and whose bin/ holds nvcc)")
    if not source_files(csrc, CUDA_SOURCE_GLOBS):
        problems.append("there are no CUDA sources under csrc/cuda/")
    with_cuda = not problems
    if with_cuda:
        note = ensure_cuda_arch_list()
        notes += [note] if note else []
    return CudaDecision(with_cuda, home, notes, problems)


def openmp_flags() -> list[str]:
    """-fopenmp when torch's ATen parallel backend is OpenMP (the flag is for compiling and linking)."""
    import torch

    backend = torch.__config__.parallel_info().split("ATen parallel backend:")[-1]
    return ["-fopenmp"] if "OpenMP" in backend and sys.platform != "darwin" else []
