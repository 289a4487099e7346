"""pytl/_toolchain.py: the one build description that setup.py, the JIT loader and CMake use."""

import ast
import re
from pathlib import Path

from pytl import _toolchain

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
# The assignments CMakeLists.txt parses (pytl_toolchain_list): one line each, string literals only.
CMAKE_READS = ("SOURCE_GLOBS", "CUDA_SOURCE_GLOBS", "PYTHON_MODULE_SOURCE", "CXX_FLAGS", "CXX_RELEASE_FLAGS",
               "NVCC_FLAGS", "NVCC_RELEASE_FLAGS", "DEBUG_FLAGS", "CUDA_MACRO")


def test_every_source_file_is_built():
    # a .cpp or .cu added where no glob looks (say csrc/common/x.cpp) would silently not be compiled
    on_disk = {str(p.relative_to(ROOT)) for ext in ("*.cpp", "*.cu") for p in CSRC.rglob(ext)}
    full = _toolchain.describe_build(CSRC.relative_to(ROOT), with_cuda=True, python_module=True, debug=False)
    assert set(full.sources) == on_disk and len(full.sources) == len(on_disk)
    jit = _toolchain.describe_build(CSRC, with_cuda=False, python_module=False, debug=False)
    assert not any(s.endswith(_toolchain.PYTHON_MODULE_SOURCE) or s.endswith(".cu") for s in jit.sources)
    assert jit.include_dirs == [str(CSRC)] and jit.macros == [] and full.macros == [_toolchain.CUDA_MACRO]


def test_release_and_debug_flags():
    release = _toolchain.describe_build(CSRC, with_cuda=True, python_module=False, debug=False)
    debug = _toolchain.describe_build(CSRC, with_cuda=True, python_module=False, debug=True)
    assert release.cxx_flags[:3] == ["-O3", "-g0", "-DNDEBUG"] and "-lineinfo" in release.nvcc_flags
    assert debug.cxx_flags[:2] == ["-O0", "-g"] and debug.nvcc_flags[:2] == ["-O0", "-g"]
    assert set(_toolchain.CXX_FLAGS) <= set(debug.cxx_flags) and set(_toolchain.NVCC_FLAGS) <= set(debug.nvcc_flags)


def test_cmake_reads_the_same_values():
    """CMake takes the double-quoted strings of the line `NAME = ...`: that must be the whole value."""
    lines = (ROOT / "pytl" / "_toolchain.py").read_text().splitlines()
    for name in CMAKE_READS:
        found = [line for line in lines if line.startswith(f"{name} = ")]
        assert len(found) == 1, name
        code = found[0].split(" = ", 1)[1].split("#")[0]  # as CMake reads it: up to the first '#'
        value = getattr(_toolchain, name)
        assert ast.literal_eval(code) == value, name
        as_cmake = re.findall(r'"([^"]*)"', code)
        assert as_cmake == ([value] if isinstance(value, str) else list(value)), name
    cmake = (ROOT / "CMakeLists.txt").read_text()
    read = re.search(r"foreach\(_name ([^)]*)\)\s*pytl_toolchain_list\(", cmake)
    assert read and set(read.group(1).split()) == set(CMAKE_READS)
