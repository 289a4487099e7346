# pytl developer entry points.
#
#   make test         create .venv if missing, install torch + test deps, build pytl (editable), run pytest
#   make demo         same setup, then python -m pytl demo
#   make cmake-test   CMake build of libpytl_ops.so + the C++ test, run by ctest (in build-cmake/)
#   make clean        remove build outputs (keeps .venv); make distclean also removes .venv
#
# Variables: PYTHON (interpreter that creates the venv), VENV, TORCH_SPEC, PYTEST_ARGS, CMAKE_ARGS, MAX_JOBS.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
PYTEST_ARGS ?= -q
CMAKE_ARGS  ?=
BUILD_CMAKE ?= build-cmake
# matplotlib: the optional `plot` extra (pytl.plot, demo --plot, curve --out); scikit-learn: the `sklearn`
# extra (pytl.sklearn); tqdm: the `notebook` extra (progress widgets); scikit-learn, mlxtend, pillow: the
# `bench` extra (benchmarks/real_pairs.py). Installed here so that the plotting, estimator, progress and
# real-pair tests run instead of skipping. scipy: the tests' independent references (the `test` extra).
DEPS        := $(TORCH_SPEC) numpy pytest pytest-benchmark scipy pybind11 ninja setuptools wheel matplotlib \
               scikit-learn mlxtend pillow tqdm

PY    := $(VENV)/bin/python
# The venv's tools first: torch's extension builder and the JIT loader look for `ninja` on PATH, and the
# pip ninja in the venv works where the machine has none.
export PATH := $(abspath $(VENV))/bin:$(PATH)
PIP   := $(PY) -m pip
NPROC := $(shell nproc 2>/dev/null || echo 2)
export MAX_JOBS ?= $(NPROC)

# Everything the built extension depends on: rebuild (pip install -e .) when any of it changes
# (pytl/_toolchain.py holds the sources and flags).
CSRC := $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh) pytl/_toolchain.py

.PHONY: all setup test demo cmake-test clean distclean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# The shared setup step: the venv with its dependencies...
$(VENV)/.deps: $(PY)
	$(PIP) install $(DEPS)
	touch $@

# ...and pytl itself, editable, compiled against that venv's torch.
$(VENV)/.installed: $(VENV)/.deps setup.py pyproject.toml $(CSRC)
	$(PIP) install --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(PY) -m pytl demo

cmake-test: $(VENV)/.deps
	cmake -S . -B $(BUILD_CMAKE) -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_MAKE_PROGRAM="$$(command -v ninja)" \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  -DPYTL_PYTHON="$(abspath $(PY))" $(CMAKE_ARGS)
	cmake --build $(BUILD_CMAKE) -j $(MAX_JOBS)
	cd $(BUILD_CMAKE) && ctest --output-on-failure

clean:
	rm -rf build dist *.egg-info $(BUILD_CMAKE) pytl/_C*.so .pytest_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
