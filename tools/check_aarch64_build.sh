#!/usr/bin/env bash
# Cross-compiles every C++ source of csrc/cpu and csrc/ops for aarch64 (Jetson) to prove the CPU kernels carry
# no unguarded x86 code (warnings are errors). With --run it also links tests/native/kernel_selftest.cpp
# statically and runs it under qemu-aarch64: sgemm (all transposes, ragged sizes) and topk (all metrics,
# both scoring paths, ties) against double-precision references, on the NEON code path.
#
#   tools/check_aarch64_build.sh            # compile only; uses aarch64-linux-gnu-g++ from PATH
#   tools/check_aarch64_build.sh --run      # also run the self-test under qemu-aarch64 (~30 s)
#   CXX_AARCH64=/path/to/g++ tools/check_aarch64_build.sh
#
# Debian/Ubuntu: apt-get update && apt-get install -y g++-aarch64-linux-gnu qemu-user
set -euo pipefail
cd "$(dirname "$0")/.."
CXX_AARCH64=${CXX_AARCH64:-aarch64-linux-gnu-g++}
FLAGS=(-std=c++17 -O3 -fopenmp -ffp-contract=fast -Wall -Wextra -Wno-unused-parameter -DMETAEDGE_WITH_CUDA=0
       -Icsrc/include)
if ! command -v "$CXX_AARCH64" >/dev/null 2>&1; then
  echo "error: $CXX_AARCH64 not found (apt-get install -y g++-aarch64-linux-gnu)" >&2
  exit 2
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
objects=()
for src in csrc/cpu/*.cpp csrc/ops/*.cpp; do
  obj="$out/$(echo "$src" | tr / _).o"
  if "$CXX_AARCH64" "${FLAGS[@]}" -Werror -c "$src" -o "$obj"; then
    objects+=("$obj")
  else
    echo "FAILED: $src" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] || exit $status
echo "aarch64: all ${#objects[@]} sources of csrc/cpu and csrc/ops compile ($("$CXX_AARCH64" --version | head -1))"

if [ "${1:-}" = "--run" ]; then
  if ! command -v qemu-aarch64 >/dev/null 2>&1; then
    echo "error: qemu-aarch64 not found (apt-get install -y qemu-user)" >&2
    exit 2
  fi
  # -static: the self-test then needs no aarch64 libraries. (The linker's note about dlopen in static
  # libgomp is harmless here and filtered.)
  "$CXX_AARCH64" "${FLAGS[@]}" -static tests/native/kernel_selftest.cpp "${objects[@]}" -o "$out/selftest" 2>&1 \
    | grep -v -e "dlopen" -e "oacc-profiling" || true
  for batch in default 1 1000; do  # topk: default crossover, gemm path only, stream path only
    echo -n "aarch64 self-test (topk gemm from batch $batch): "
    if [ "$batch" = default ]; then qemu-aarch64 "$out/selftest"
    else METAEDGE_TOPK_GEMM_MIN_BATCH=$batch qemu-aarch64 "$out/selftest"; fi
  done
fi
