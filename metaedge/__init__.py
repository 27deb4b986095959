"""metaedge: few-shot visual recognition for edge GPUs.

Device side (numpy + compiled kernels, no torch): ``metaedge.kernels``, ``metaedge.cuda``,
``metaedge.EdgeClassifier``. Workstation side (torch): ``metaedge.train``, ``metaedge.export``.
Heavy or optional parts are imported on first use, so ``import metaedge`` works without torch, CUDA or
TensorRT; using a missing piece raises an error that says what to install.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from metaedge._build_info import build_info  # noqa: E402

_LAZY_MODULES = {"kernels", "cuda", "runtime", "export", "train", "cli"}
_LAZY_ATTRS = {
    "EdgeClassifier": "metaedge.runtime.classifier",
    "Prediction": "metaedge.runtime.classifier",
    "Gallery": "metaedge.runtime.gallery",
    "Bundle": "metaedge.runtime.bundle",
}

__all__ = ["__version__", "build_info", *sorted(_LAZY_MODULES), *sorted(_LAZY_ATTRS)]


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"metaedge.{name}")
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
    raise AttributeError(f"module 'metaedge' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _LAZY_MODULES | set(_LAZY_ATTRS))
