"""metaedge: few-shot visual recognition for edge GPUs.

Device side (numpy + compiled kernels, no torch): ``metaedge.kernels``, ``metaedge.cuda``,
``metaedge.EdgeClassifier``. Workstation side (torch): ``metaedge.train``, ``metaedge.export``.
Heavy or optional parts are imported on first use, so ``import metaedge`` works without torch, CUDA or
TensorRT; using a missing piece raises an error that says what to install.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from metaedge._build_info import build_info
from metaedge._lazy import lazy_exports
from metaedge._version import __version__

if TYPE_CHECKING:
    # What type checkers and IDEs see: the same names that __getattr__ below resolves on first use at run
    # time. tests/test_typing.py checks that both lists agree and runs mypy on code that uses them.
    from metaedge import cli, cuda, export, kernels, runtime, train
    from metaedge.runtime.bundle import Bundle
    from metaedge.runtime.classifier import EdgeClassifier, Prediction
    from metaedge.runtime.gallery import Gallery

_LAZY_MODULES = {"kernels", "cuda", "runtime", "export", "train", "cli"}
_LAZY_ATTRS = {
    "EdgeClassifier": "metaedge.runtime.classifier",
    "Prediction": "metaedge.runtime.classifier",
    "Gallery": "metaedge.runtime.gallery",
    "Bundle": "metaedge.runtime.bundle",
}

__all__ = ["__version__", "build_info", *sorted(_LAZY_MODULES), *sorted(_LAZY_ATTRS)]


# Hidden from type checkers, which see the imports above instead: with a module __getattr__ they would
# accept any attribute, so a typo such as `me.EdgeClasifier` would pass unnoticed.
if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY_ATTRS, _LAZY_MODULES, globals())
