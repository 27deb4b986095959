"""Build-time check of the Jetson image (Dockerfile beside this file): prints `metaedge info`, then fails
unless the image holds metaedge's CUDA kernels for the wanted arch, an importable TensorRT and - on a JetPack
base image - a detected JetPack. No GPU is needed (docker build has none).

    python3 check_image.py --arch 87 [--info-json FILE]   # FILE: `metaedge info --json` output, for tests
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys


def problems(info: dict, arch: str) -> list[str]:
    out = []
    cuda = info.get("cuda", {})
    if not cuda.get("built"):
        out.append("metaedge was built without CUDA kernels (was nvcc on PATH? METAEDGE_CUDA=1 should have failed)")
    elif arch not in cuda.get("archs", []):
        out.append(f"the CUDA kernels are built for sm_{', sm_'.join(cuda.get('archs', []))}, not sm_{arch}")
    if not info.get("packages", {}).get("tensorrt"):
        out.append("TensorRT's Python package does not import in the venv "
                   + "; ".join(info.get("install", {}).get("tensorrt", [])))
    if info.get("jetson") is None and arch == "87":
        out.append("no JetPack detected (/etc/nv_tegra_release, dpkg nvidia-l4t-core): is the base image L4T?")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, help="the compute capability the image is for: 87, 110")
    parser.add_argument("--info-json", help="read this `metaedge info --json` output instead of running it")
    args = parser.parse_args()
    if args.info_json:
        with open(args.info_json) as fh:
            info = json.load(fh)
    else:
        subprocess.run(["metaedge", "info"], check=True)
        info = json.loads(subprocess.run(["metaedge", "info", "--json"], check=True, capture_output=True,
                                         text=True).stdout)
    found = problems(info, args.arch)
    for p in found:
        print(f"IMAGE CHECK FAILED: {p}", file=sys.stderr)
    if not found:
        print(f"image check passed: CUDA kernels for sm_{args.arch}, TensorRT {info['packages']['tensorrt']}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
