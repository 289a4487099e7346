#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU and its own torch (no package registry needed):
# builds pytl there against that torch, runs the CUDA tests, benchmarks/gpu_timing.py, then compute-sanitizer
# (memcheck, racecheck) on benchmarks/gpu_sanitize.py.
#
#   bash benchmarks/gpu_check.sh            # from the repo root; OUT=/some/dir to keep the logs
#
# Expects python (>= 3.10) with torch (CUDA build), nvcc, ninja, pytest and pytest-benchmark installed.
# Each step has its own timeout; the whole script stays under 9 minutes (about 8 without the CMake step). Exit status: non-zero when the
# build or the CUDA tests fail (a missing gpu_timing.py is not a failure).
# Knobs: PYTHON, MAX_JOBS (16), TORCH_CUDA_ARCH_LIST (default: the visible GPU's), PYTL_GPU_CMAKE=1 (also
# build and run the CMake C++ test with CUDA when cmake is installed and time is left).
set -uo pipefail
exec </dev/null

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export MAX_JOBS="${MAX_JOBS:-16}"
export PYTHONUNBUFFERED=1
LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/pytl-gpu.XXXXXX")"
T0=$SECONDS
STATUS=0

section() { printf '\n===== %s (t=%ss) =====\n' "$*" "$((SECONDS - T0))"; }

save_logs() {
  if [[ -n "${OUT:-}" ]]; then
    # one archive: the device tool brings back at most 8 files
    mkdir -p "$OUT" && tar -czf "$OUT/gpu_check_logs.tgz" -C "$LOG_DIR" . 2>/dev/null || true
  fi
}
trap save_logs EXIT

# step NAME TIMEOUT_S COMMAND...: runs with a timeout, tees to $LOG_DIR/NAME.log, returns the status.
step() {
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
  rc=${PIPESTATUS[0]}
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "!! $name timed out after ${limit}s" | tee -a "$LOG_DIR/$name.log"
  fi
  echo "-- $name: exit $rc in $((SECONDS - start))s" | tee -a "$LOG_DIR/summary.log"
  return "$rc"
}

section "machine"
{
  nvidia-smi || echo "nvidia-smi failed"
  nvcc --version 2>&1 | tail -n 2 || echo "no nvcc on PATH"
  "$PYTHON" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")
EOF
} 2>&1 | tee "$LOG_DIR/machine.log"

if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  TORCH_CUDA_ARCH_LIST="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' 2>/dev/null || echo "8.0;9.0")"
fi
export TORCH_CUDA_ARCH_LIST
echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"

rm -f pytl/_C*.so
export PYTL_WITH_CUDA=1
if "$PYTHON" -c 'import setuptools, wheel' 2>/dev/null; then
  section "build (pip install --no-build-isolation -e ., PYTL_WITH_CUDA=1)"
  build_cmd=("$PYTHON" -m pip install -v --no-build-isolation --no-deps --no-index -e .)
else
  # No setuptools/wheel in this environment (and no registry to get them): the loader's JIT build instead.
  section "build (no setuptools here: JIT build through pytl's loader, PYTL_WITH_CUDA=1)"
  export TORCH_EXTENSIONS_DIR="$PWD/build/torch_extensions"
  build_cmd=("$PYTHON" -c 'import pytl; from pytl import _loader; print("pytl ops loaded:", _loader.load_ops())')
fi
if ! step build 300 "${build_cmd[@]}"; then
  echo "!! the build failed; skipping the tests" | tee -a "$LOG_DIR/summary.log"
  exit 1
fi
step dispatch 60 "$PYTHON" -c '
import torch, pytl
from pytl import _loader
print("pytl ops loaded:", _loader.load_ops())
for op in ("pytl::mmd2_terms", "pytl::mmd2_terms_backward"):
    print(op, {k: torch._C._dispatch_has_kernel_for_dispatch_key(op, k) for k in ("CPU", "CUDA", "Meta", "Autograd")})
x = torch.randn(4096, 64, device="cuda"); y = torch.randn(4096, 64, device="cuda") + 0.1
print("mmd2 on", x.device, "=", float(pytl.mmd2(x, y)))
' || STATUS=1

section "CUDA tests (pytest -k cuda)"
step pytest_cuda 240 "$PYTHON" -m pytest tests -q -rs -k cuda -p no:cacheprovider
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "!! pytest selected no test with -k cuda" | tee -a "$LOG_DIR/summary.log"
  STATUS=1
elif [[ $rc -ne 0 ]]; then
  STATUS=1
fi

section "benchmarks/gpu_timing.py"
remaining=$((250 - (SECONDS - T0)))
if [[ $remaining -gt 30 ]]; then
  step gpu_timing "$remaining" "$PYTHON" benchmarks/gpu_timing.py || echo "!! gpu_timing.py failed (not counted)"
else
  echo "!! skipped: not enough time left"
fi

# The training regime on the GPU (issue 15): the mini-batch grid, pytl vs the usual torch code, default
# and fixed bandwidths, each call timed to a synchronize.
section "benchmarks/compare.py --minibatch --device cuda"
remaining=$((290 - (SECONDS - T0)))
if [[ $remaining -gt 30 ]]; then
  step minibatch_cuda "$remaining" "$PYTHON" benchmarks/compare.py --minibatch --device cuda \
    || echo "!! the mini-batch grid failed (not counted)"
else
  echo "!! skipped: not enough time left"
fi

# The class-conditional MMD on the GPU (issue 16): the ATen tile sweep against DSAN's n x m formulation.
section "benchmarks/class_conditional.py --device cuda"
remaining=$((310 - (SECONDS - T0)))
if [[ $remaining -gt 20 ]]; then
  step class_conditional_cuda "$remaining" "$PYTHON" benchmarks/class_conditional.py --device cuda \
    || echo "!! the class-conditional benchmark failed (not counted)"
else
  echo "!! skipped: not enough time left"
fi

# Nsight Compute on one forward and one gradient sweep (clocks left as they are: --clock-control none)
if command -v ncu >/dev/null; then
  section "ncu: forward and gradient sweep at n = m = 8192, d = 64"
  remaining=$((340 - (SECONDS - T0)))
  if [[ $remaining -gt 30 ]]; then
    step ncu "$remaining" ncu --clock-control none -k regex:'mmd_(forward|sweep)_kernel' -c 2 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      --section WarpStateStats --section Occupancy "$PYTHON" benchmarks/gpu_profile.py || echo "!! ncu failed (not counted)"
  else
    echo "!! skipped: not enough time left"
  fi
fi

# compute-sanitizer on small cases that hit every tiling edge (benchmarks/gpu_sanitize.py also checks the
# numbers against the CPU kernels). memcheck: out-of-bounds and misaligned accesses; racecheck: shared-memory
# hazards between threads of a CTA (a missing __syncthreads).
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    section "compute-sanitizer --tool $tool"
    remaining=$((440 - (SECONDS - T0)))
    if [[ $remaining -gt 20 ]]; then
      step "sanitizer_$tool" "$remaining" compute-sanitizer --tool "$tool" --error-exitcode 3 \
        "$PYTHON" benchmarks/gpu_sanitize.py || STATUS=1
    else
      echo "!! skipped: not enough time left"
    fi
  done
else
  echo "(no compute-sanitizer on PATH: skipped)"
fi

if [[ "${PYTL_GPU_CMAKE:-0}" == "1" ]] && command -v cmake >/dev/null; then
  section "CMake build with CUDA + ctest"
  remaining=$((500 - (SECONDS - T0)))
  if [[ $remaining -gt 60 ]]; then
    step cmake_cuda "$remaining" bash -c '
      cmake -S . -B build-cmake-gpu -G Ninja -DPYTL_WITH_CUDA=ON -DPYTL_PYTHON="$(command -v '"$PYTHON"')" \
        -DCMAKE_PREFIX_PATH="$('"$PYTHON"' -c "import torch; print(torch.utils.cmake_prefix_path)")" &&
      cmake --build build-cmake-gpu -j "$MAX_JOBS" && cd build-cmake-gpu && ctest --output-on-failure' || STATUS=1
  else
    echo "!! skipped: not enough time left"
  fi
fi

section "summary"
cat "$LOG_DIR/summary.log"
echo "total: $((SECONDS - T0))s, status $STATUS"
exit "$STATUS"
