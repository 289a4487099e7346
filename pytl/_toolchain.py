"""Facts about the build toolchain, shared by setup.py and the JIT loader (no pytl imports here:
setup.py loads this file by path before the ops exist).

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


def openmp_flags() -> list[str]:
    """-fopenmp when torch's ATen parallel backend is OpenMP (the flag is for compiling and linking)."""
    import torch

    backend = torch.__config__.parallel_info().split("ATen parallel backend:")[-1]
    return ["-fopenmp"] if "OpenMP" in backend and sys.platform != "darwin" else []
