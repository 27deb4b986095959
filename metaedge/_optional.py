"""Optional dependencies: import them only when asked for, with an error that says what to install."""
from __future__ import annotations

import importlib
import importlib.util

_INSTALL_HINTS = {
    "torch": "pip install 'metaedge[train]' (or NVIDIA's torch wheel on a Jetson)",
    "torchvision": "pip install 'metaedge[train]'",
    "onnx": "pip install 'metaedge[train]'",
    "onnxscript": "pip install 'metaedge[train]'",
    "onnxruntime": "pip install 'metaedge[onnx]' (onnxruntime-gpu for CUDA)",
    "tensorrt": "install TensorRT (JetPack ships it; elsewhere: pip install 'metaedge[tensorrt]')",
    "tqdm": "pip install tqdm",
    "matplotlib": "pip install 'metaedge[plot]' (matplotlib)",
    "faiss": "pip install faiss-cpu",
    "PIL": "pip install pillow",
    "cv2": "pip install 'metaedge[video]' (on a Jetson: sudo apt install python3-opencv, JetPack's OpenCV with GStreamer)",
    "safetensors": "pip install safetensors",
    "fastapi": "pip install 'metaedge[serve]'",
    "uvicorn": "pip install 'metaedge[serve]'",
    "prometheus_client": "pip install 'metaedge[serve]'",
    "python_multipart": "pip install 'metaedge[serve]'",
}


class MissingDependencyError(ImportError):
    """An optional package that the requested feature needs is not installed."""


def require(module: str, feature: str):
    """Import `module` for `feature`, or raise MissingDependencyError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint = _INSTALL_HINTS.get(top, f"pip install {top}")
        raise MissingDependencyError(f"{feature} needs the package '{top}', which is not available ({exc}). "
                                     f"Install it with: {hint}") from exc


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def version_of(module: str) -> str | None:
    if not available(module):
        return None
    try:
        from importlib.metadata import PackageNotFoundError, version
        dist = {"PIL": "pillow", "faiss": "faiss-cpu", "cv2": "opencv-python-headless",
                "prometheus_client": "prometheus-client"}.get(module, module)
        try:
            return version(dist)
        except PackageNotFoundError:
            return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:  # a broken optional package must not break `metaedge info`
        return "broken"
