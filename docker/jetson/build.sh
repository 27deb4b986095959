#!/usr/bin/env bash
# Builds the metaedge Jetson image (Dockerfile beside this script) from a fresh sdist of this checkout and runs
# `metaedge info` in it with the GPU. Run it on the Jetson (docker with NVIDIA's container runtime).
#
#   docker/jetson/build.sh jp6 [TAG]          # Orin, JetPack 6 (L4T r36.4): sm_87
#   docker/jetson/build.sh jp7 [TAG]          # Thor, JetPack 7: sm_110
#   docker/jetson/build.sh jp6 --context-only DIR   # only write the build context (the sdist + files) to DIR
#
# Override the base image or arch for other releases: BASE_IMAGE=... CUDA_ARCHS=... docker/jetson/build.sh jp6
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
profile=${1:-}
case "$profile" in
  jp6)  # JetPack 6: L4T r36.x, CUDA 12.6, TensorRT 10.3 (python3-libnvinfer from apt), Python 3.10, NumPy 1.x
    : "${BASE_IMAGE:=nvcr.io/nvidia/l4t-jetpack:r36.4.0}" "${CUDA_ARCHS:=87}"
    : "${NUMPY_SPEC:=numpy>=1.26,<2}" "${TENSORRT_PYTHON_PACKAGE:=python3-libnvinfer}" ;;
  jp7)  # JetPack 7: Thor runs NVIDIA's arm64 (SBSA) containers; this one has CUDA 13, TensorRT 10.13, Python 3.12
    : "${BASE_IMAGE:=nvcr.io/nvidia/tensorrt:25.08-py3}" "${CUDA_ARCHS:=110}"
    : "${NUMPY_SPEC:=numpy>=1.26}" "${TENSORRT_PYTHON_PACKAGE:=}" ;;
  *) echo "usage: $0 jp6|jp7 [TAG | --context-only DIR]" >&2; exit 2 ;;
esac
shift
python=${PYTHON:-python3}

make_context() {  # $1: the directory to fill
  mkdir -p "$1"
  "$python" -m build --sdist --outdir "$1" "$repo" >/dev/null
  cp "$here/Dockerfile" "$here/check_image.py" "$1/"
}

if [ "${1:-}" = "--context-only" ]; then
  make_context "${2:?--context-only needs a directory}"
  exit 0
fi
tag=${1:-metaedge:$profile}
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
make_context "$context"
docker build --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg CUDA_ARCHS="$CUDA_ARCHS" \
  --build-arg NUMPY_SPEC="$NUMPY_SPEC" --build-arg TENSORRT_PYTHON_PACKAGE="$TENSORRT_PYTHON_PACKAGE" \
  --build-arg MAX_JOBS="${MAX_JOBS:-4}" -t "$tag" "$context"
docker run --rm --runtime nvidia "$tag" metaedge info
