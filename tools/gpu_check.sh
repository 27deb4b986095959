#!/usr/bin/env bash
# The prepared check for a lent CUDA machine (written for the H100/H200 machines of the device tool, works on
# any Linux box with an NVIDIA GPU, nvcc, and a python3 that has numpy, pybind11, pytest and torch):
#   1. builds metaedge._C with CUDA for the GPU present only (arch from nvidia-smi),
#   2. runs the GPU tests (tests/gpu: every kernel vs the float64 references and the CPU kernels),
#   3. runs compute-sanitizer memcheck over every kernel and racecheck over the top-k selection,
#   4. runs the TensorRT checks where `import tensorrt` works and tests/gpu/test_tensorrt.py exists,
#   5. runs tools/bench/preprocess.py --gpu (camera frames vs torch) and tools/bench/kernels_gpu.py, and prints
#      the kernels table last.
# Every step runs even if an earlier one failed (except after a failed build); the exit status is non-zero
# when any step failed. Logs and the benchmark JSON go to $OUT (default ./gpu_check_out); at most 8 files.
# Needs only the working tree: no virtual environment (set PYTHON to use another interpreter).
# Time limits per step (140+20+140+60+40+40+80 s, +60 s for TensorRT) keep the whole run under 9 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0

note() { echo "$*" | tee -a "$SUMMARY"; }
elapsed() { echo $(( $(date +%s) - START )); }

# run_step NAME LIMIT_SECONDS LOGFILE CMD...: runs CMD with a time limit, appends output to LOGFILE (and the
# terminal), records the status.
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0 rc
  t0=$(date +%s)
  echo "=== [$name] $* (limit ${limit}s)" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  local took=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 0 ]; then
    note "PASS  $name (${took}s)"
  else
    [ "$rc" -eq 124 ] && note "FAIL  $name: timed out after ${limit}s" || note "FAIL  $name (exit $rc, ${took}s)"
    FAILED=1
  fi
  return "$rc"
}

# ---- environment ------------------------------------------------------------------------------------------
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  nvcc --version 2>&1 | tail -n 2
  "$PY" -c "import sys, numpy; print('python', sys.version.split()[0], 'numpy', numpy.__version__)" 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
} | tee "$OUT/env.txt"

ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
if [ -z "$ARCH" ]; then
  note "FAIL  no GPU visible to nvidia-smi"
  exit 1
fi
note "GPU compute capability: $ARCH"

# ---- 1. build for this GPU only -----------------------------------------------------------------------------
rm -f metaedge/_C*.so
if ! run_step build 140 "$OUT/build.log" env METAEDGE_CUDA=1 METAEDGE_CUDA_ARCHS="$ARCH" \
    MAX_JOBS="$(nproc)" "$PY" setup.py -q build_ext --inplace; then
  note "the build failed: nothing else can run (see build.log)"
  exit 1
fi
run_step probe 20 "$OUT/build.log" "$PY" -c "
import json, metaedge, metaedge.cuda as c
info = metaedge.build_info()['cuda']
print(json.dumps(info, indent=1))
assert c.is_available(), c.why_unavailable()
"

# ---- 2. tests -----------------------------------------------------------------------------------------------
# (The GPU tests compare every kernel with the CPU kernel too; the CPU suite itself is CI's job.)
run_step tests 140 "$OUT/pytest.log" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rfEs \
  tests/gpu tests/test_cuda_without_gpu.py tests/test_setup_cuda_config.py

# ---- 3. compute-sanitizer -----------------------------------------------------------------------------------
if command -v compute-sanitizer >/dev/null; then
  run_step memcheck 60 "$OUT/sanitizer.log" compute-sanitizer --tool memcheck --error-exitcode 3 \
    --print-limit 20 "$PY" tools/gpu_kernel_smoke.py
  run_step racecheck 40 "$OUT/sanitizer.log" compute-sanitizer --tool racecheck --error-exitcode 3 \
    --print-limit 20 "$PY" tools/gpu_kernel_smoke.py --only topk
else
  note "SKIP  compute-sanitizer not installed"
fi

# ---- 4. TensorRT (export issue) -----------------------------------------------------------------------------
if "$PY" -c "import tensorrt" 2>/dev/null; then
  if [ -f tests/gpu/test_tensorrt.py ]; then
    run_step tensorrt 60 "$OUT/pytest.log" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rfEs \
      tests/gpu/test_tensorrt.py
  else
    note "SKIP  tensorrt: tests/gpu/test_tensorrt.py not present"
  fi
else
  note "SKIP  tensorrt: 'import tensorrt' fails here"
fi

# ---- 5. benchmark -------------------------------------------------------------------------------------------
run_step bench_frames 40 "$OUT/bench_frames.log" "$PY" tools/bench/preprocess.py --gpu --quick \
  --json "$OUT/preprocess_gpu.json"
run_step bench 80 "$OUT/bench.log" "$PY" tools/bench/kernels_gpu.py --json "$OUT/kernels_gpu.json"

note "total $(elapsed)s; $([ $FAILED -eq 0 ] && echo 'ALL PASSED' || echo 'SOME STEPS FAILED')"
echo
echo "---- summary ($OUT) ----"
cat "$SUMMARY"
# The table last: the device tool returns the end of the output.
sed -n '/^== /,$p' "$OUT/bench.log" 2>/dev/null | tail -n 40
exit $FAILED
