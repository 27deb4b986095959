"""build_info(): how this metaedge was built and what this machine offers it."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from metaedge._optional import version_of

OPTIONAL_PACKAGES = ("numpy", "torch", "torchvision", "onnx", "onnxruntime", "tensorrt", "safetensors", "PIL",
                     "tqdm", "matplotlib", "faiss", "cv2", "fastapi", "uvicorn", "prometheus_client")


def _build_config() -> dict:
    path = Path(__file__).with_name("_build_config.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _cuda_status(native, config: dict) -> dict:
    status = {"built": bool(getattr(native, "cuda_built", False)),
              "archs": config.get("cuda_archs", []), "ptx": config.get("cuda_ptx"),
              "toolkit": config.get("cuda_version"), "available": False, "devices": []}
    if not status["built"]:
        status["why_not"] = ("this build has no CUDA kernels (" + (config.get("cuda_reason") or "built without CUDA")
                             + "); rebuild with the CUDA toolkit on PATH and METAEDGE_CUDA=1")
        return status
    runtime = native.cuda_runtime_version()
    status["runtime"] = f"{runtime // 1000}.{(runtime % 1000) // 10}"
    driver = native.cuda_driver_version()
    status["driver"] = f"{driver // 1000}.{(driver % 1000) // 10}" if driver else None
    count, why = native.cuda_device_count()
    if count == 0:
        status["why_not"] = why or "no CUDA device visible"
        return status
    status["available"] = True
    for i in range(count):
        p = native.cuda_device_properties(i)
        status["devices"].append({"index": i, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                                  "memory_gib": round(p.total_memory / 2**30, 1),
                                  "multiprocessors": p.multiprocessors, "integrated": p.integrated})
    return status


def build_info(backends: bool = True) -> dict:
    """Version, compiler, OpenMP threads, SIMD level, CUDA (built? archs, runtime/driver, devices or why not),
    the optional packages present, the system (a Jetson's JetPack, L4T, module and GPU arch), how class
    matrices are matched (``matching``: see ``metaedge.compact.matching_policy``) and (``backends``) which
    inference backends could run here with their versions - and, for each one that cannot, what is missing and
    the command that installs it on this machine, plus install traps found (``warnings``). Never raises for a
    missing optional piece."""
    from metaedge import __version__
    from metaedge._jetson import detect_jetson
    info: dict = {"version": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
                  "machine": platform.machine()}
    config = _build_config()
    try:
        from metaedge._native import native
        C = native()
    except ImportError as exc:
        info["native"] = {"loaded": False, "error": str(exc)}
        info["cuda"] = {"built": False, "available": False, "why_not": "native extension not loaded"}
    else:
        info["native"] = {"loaded": True, "compiler": config.get("compiler"), "cxx_flags": config.get("cxx_flags"),
                          "simd": C.simd_level(), "openmp_threads": C.openmp_max_threads(),
                          "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS")}
        info["cuda"] = _cuda_status(C, config)
        from metaedge.compact import matching_policy
        info["matching"] = matching_policy()
    jetson = detect_jetson()
    info["jetson"] = jetson.to_dict() if jetson else None
    info["packages"] = {name: version_of(name) for name in OPTIONAL_PACKAGES}
    if backends:
        try:
            from metaedge._backend_probe import probe, warnings_for
            env, statuses = probe(info["cuda"])
            info["backends"] = {s.name: s.summary() for s in statuses}
            info["install"] = {s.name: s.install for s in statuses if s.install}
            info["warnings"] = warnings_for(env)
        except Exception as exc:  # info must always print; say what broke instead
            info["backends"] = {"error": f"{type(exc).__name__}: {exc}"}
    return info


# Backend names as in metaedge.runtime.backends.BACKENDS (probed here, below the runtime layer).
def probe_backends(cuda_status: dict | None = None) -> dict[str, str]:
    """Which backends could run here, checked cheaply (no engine build, no session): for `metaedge info`.
    ``cuda_status``: ``build_info()["cuda"]`` when the caller has it already."""
    from metaedge._backend_probe import probe
    if cuda_status is None:
        cuda_status = build_info(backends=False).get("cuda", {})
    _, statuses = probe(cuda_status)
    return {s.name: s.summary() for s in statuses}
