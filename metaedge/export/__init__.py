"""Workstation -> device: torch model to a verified ONNX bundle, ONNX to a cached TensorRT engine.

``export_bundle(model, dir)`` (needs torch, onnx, onnxruntime; ``int8=Int8Options(...)`` adds verified INT8
Q/DQ models) and ``build_engine(bundle, precision=...)``
(needs TensorRT and a GPU; no torch). Submodules are imported on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from metaedge._lazy import lazy_exports

if TYPE_CHECKING:  # what type checkers and IDEs see; resolved lazily by __getattr__ at run time
    from metaedge.export import onnx, quantize, tensorrt, verify
    from metaedge.export.onnx import ONNX_OPSET, ExportError, check_onnx, export_bundle
    from metaedge.export.quantize import Int8Options
    from metaedge.export.tensorrt import build_engine

_LAZY = {
    "export_bundle": "metaedge.export.onnx",
    "check_onnx": "metaedge.export.onnx",
    "ExportError": "metaedge.export.onnx",
    "ONNX_OPSET": "metaedge.export.onnx",
    "build_engine": "metaedge.export.tensorrt",
    "Int8Options": "metaedge.export.quantize",
}
_SUBMODULES = {"onnx", "verify", "tensorrt", "quantize"}

__all__ = sorted(_LAZY) + sorted(_SUBMODULES)


# Hidden from type checkers, which see the imports above instead: with a module __getattr__ they would
# accept any attribute, so a typo such as `me.EdgeClasifier` would pass unnoticed.
if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY, _SUBMODULES, globals())
