"""``build_engine(bundle, precision=..., max_batch=...)``: the TensorRT engine for this GPU, built once and
cached in ``bundle/engines/`` (docs/architecture.md section 3).

The TensorRT calls live in ``metaedge.runtime.tensorrt_engine`` because a device also builds its engine on
first start, without torch and without this package; this is the workstation/CLI face with progress output.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from metaedge.runtime.bundle import Bundle
from metaedge.runtime.tensorrt_engine import (DEFAULT_MAX_BATCH, DEFAULT_WORKSPACE_MIB, EngineBuildError,
                                              get_engine)

__all__ = ["build_engine", "EngineBuildError"]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_engine(bundle: Bundle | str | Path, precision: str = "fp16", max_batch: int = DEFAULT_MAX_BATCH, *,
                 opt_batch: int | None = None, workspace_mib: int = DEFAULT_WORKSPACE_MIB, force: bool = False,
                 verbose: bool = False, progress: Callable[[str], None] | None = _stderr) -> Path:
    """Return the path of the engine for ``bundle`` at ``precision`` ("fp16", "fp32", "int8" or "auto") for batches
    1..``max_batch`` (optimised for ``opt_batch``, default 1) on this GPU and TensorRT; build it if no valid
    one is cached (``force`` rebuilds). ``workspace_mib`` caps TensorRT's scratch memory during the build.
    On TensorRT 11, fp16 needs the bundle's fp16 ONNX (``export_bundle(..., fp16_onnx=True)``); int8 always
    needs its INT8 Q/DQ model (``export_bundle(..., int8=Int8Options(...))``).
    Raises ``EngineBuildError`` with TensorRT's own messages (every ONNX parser error with its node)."""
    path, _ = get_engine(bundle, precision=precision, max_batch=max_batch, opt_batch=opt_batch,
                         workspace_mib=workspace_mib, force=force, progress=progress, verbose=verbose)
    return path
