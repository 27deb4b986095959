"""Inference backends and the selector that picks one (see base.py for the interface).

``open_backend(bundle, backend="auto")`` tries TensorRT > ONNX Runtime CUDA > ONNX Runtime CPU > torch and
returns the first that works here; ``backend.selection_log`` lists each candidate with why it was picked or
skipped. No backend module is imported (and no tensorrt / onnxruntime / torch) until it is tried.
"""
from __future__ import annotations

import logging
from typing import Callable

from metaedge._optional import available
from metaedge.runtime.backends.base import Backend, BackendUnavailable, InputSpec

__all__ = ["Backend", "BackendUnavailable", "InputSpec", "BACKENDS", "open_backend", "probe_backends"]

BACKENDS = ("tensorrt", "ort-cuda", "ort-cpu", "torch")   # the order "auto" tries them in
log = logging.getLogger("metaedge.backend")


def _open_tensorrt(bundle, opts):
    if not available("tensorrt"):
        raise BackendUnavailable("the tensorrt package is not installed")
    from metaedge.runtime.backends.tensorrt import TensorRTBackend
    return TensorRTBackend(bundle, precision=opts.get("precision", "auto"), max_batch=opts.get("max_batch", 32),
                           build=opts.get("build", True), progress=opts.get("progress"))


def _open_ort(device):
    def opener(bundle, opts):
        if not available("onnxruntime"):
            raise BackendUnavailable("the onnxruntime package is not installed")
        from metaedge.runtime.backends.onnxruntime import OnnxRuntimeBackend
        return OnnxRuntimeBackend(bundle, device=device, intra_op_threads=opts.get("threads"),
                                  tensorrt_ep=opts.get("ort_tensorrt_ep", True),
                                  fp16=opts.get("precision", "auto") in ("auto", "fp16"),
                                  precision=opts.get("precision", "auto"))
    return opener


def _open_torch(bundle, opts):
    if opts.get("model") is None:
        raise BackendUnavailable("no torch model given (pass model=...; a bundle holds only ONNX)")
    if not available("torch"):
        raise BackendUnavailable("torch is not installed")
    from metaedge.runtime.backends.torch import TorchBackend
    return TorchBackend(opts["model"], spec=bundle.spec if bundle is not None else None)


_OPENERS: dict[str, Callable] = {"tensorrt": _open_tensorrt, "ort-cuda": _open_ort("cuda"),
                                 "ort-cpu": _open_ort("cpu"), "torch": _open_torch}


def open_backend(bundle, backend: str = "auto", *, precision: str = "auto", max_batch: int = 32,
                 threads: int | None = None, model=None, build: bool = True,
                 progress: Callable[[str], None] | None = None, ort_tensorrt_ep: bool = True) -> Backend:
    """Open the bundle (a directory or a loaded ``Bundle``) on ``backend``.

    ``"auto"`` tries ``BACKENDS`` in order; a named backend is the only one tried and its failure is raised.
    ``precision``: auto/fp32/fp16/int8. TensorRT: auto = fp16 where it can be built; int8 builds from the
    bundle's TensorRT INT8 Q/DQ model. ONNX Runtime CPU: auto = the bundle's INT8 model when it has one and the
    CPU has fast 8-bit dot products (VNNI / ARM dot product), else fp32 (the selection log says why).
    TensorRT options: ``max_batch``, ``build`` (build a missing engine:
    minutes, once), ``progress`` (callable for build messages). ONNX Runtime CPU: ``threads`` (intra-op,
    default = usable cores). ONNX Runtime CUDA: ``ort_tensorrt_ep`` puts onnxruntime's own TensorRT provider
    first when it has one (engines cached in bundle/engines/ort-trt). torch: ``model`` (the torch module; a
    bundle holds no torch weights).
    The returned backend has ``selection_log``: ``[(name, "selected: ..." | "skipped: why"), ...]``.
    """
    from metaedge.runtime.bundle import Bundle
    if backend != "auto" and backend not in _OPENERS:
        raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {backend!r}")
    bundle = Bundle.load(bundle)
    opts = {"precision": precision, "max_batch": max_batch, "threads": threads, "model": model, "build": build,
            "progress": progress, "ort_tensorrt_ep": ort_tensorrt_ep}
    selection: list[tuple[str, str]] = []
    for name in (BACKENDS if backend == "auto" else (backend,)):
        try:
            chosen = _OPENERS[name](bundle, opts)
        except (BackendUnavailable, ImportError) as exc:
            selection.append((name, f"skipped: {exc}"))
            log.info("backend %s skipped: %s", name, exc)
            if backend != "auto":
                raise BackendUnavailable(f"backend {name!r} cannot run bundle {bundle.path}: {exc}") from exc
            continue
        selection.append((name, f"selected: {chosen.describe()}"))
        chosen.selection_log = selection
        log.info("backend %s selected (%s)%s", name, chosen.describe(),
                 "".join(f"; {n} {why}" for n, why in selection[:-1]))
        return chosen
    raise BackendUnavailable(f"no backend can run bundle {bundle.path}:\n  "
                             + "\n  ".join(f"{n}: {why}" for n, why in selection))


def probe_backends(cuda_status: dict | None = None) -> dict[str, str]:
    """Which backends could run here, checked cheaply (no engine build, no session): for `metaedge info`."""
    from metaedge._build_info import probe_backends as probe
    return probe(cuda_status)
