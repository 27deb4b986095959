#!/usr/bin/env bash
# Cross-compiles every C++ source of csrc/cpu and csrc/ops for aarch64 (Jetson) to prove the CPU kernels carry
# no unguarded x86 code. Objects go to a temporary directory and are discarded; warnings are errors.
#
#   tools/check_aarch64_build.sh            # uses aarch64-linux-gnu-g++ from PATH
#   CXX_AARCH64=/path/to/g++ tools/check_aarch64_build.sh
#
# Install the cross compiler on Debian/Ubuntu with: apt-get update && apt-get install -y g++-aarch64-linux-gnu
set -euo pipefail
cd "$(dirname "$0")/.."
CXX_AARCH64=${CXX_AARCH64:-aarch64-linux-gnu-g++}
if ! command -v "$CXX_AARCH64" >/dev/null 2>&1; then
  echo "error: $CXX_AARCH64 not found (apt-get install -y g++-aarch64-linux-gnu)" >&2
  exit 2
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
count=0
for src in csrc/cpu/*.cpp csrc/ops/*.cpp; do
  count=$((count + 1))
  if ! "$CXX_AARCH64" -std=c++17 -O3 -fopenmp -ffp-contract=fast -Wall -Wextra -Wno-unused-parameter -Werror \
      -DMETAEDGE_WITH_CUDA=0 -Icsrc/include -c "$src" -o "$out/$(basename "$src").o"; then
    echo "FAILED: $src" >&2
    status=1
  fi
done
if [ "$status" -eq 0 ]; then
  echo "aarch64: all $count sources of csrc/cpu and csrc/ops compile ($("$CXX_AARCH64" --version | head -1))"
fi
exit $status
