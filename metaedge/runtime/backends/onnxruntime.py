"""ONNX Runtime backend: the CPU path everywhere, CUDA / TensorRT execution providers where the installed
onnxruntime has them. Imports onnxruntime when a backend is created, never at module import."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from metaedge._optional import require
from metaedge.runtime.backends.base import Backend, BackendUnavailable, InputSpec, host_batch
from metaedge.runtime.bundle import Bundle


CPU_EP, CUDA_EP, TRT_EP = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
PRECISIONS = ("auto", "fp32", "fp16", "int8")


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class OnnxRuntimeBackend(Backend):
    """Runs the bundle's ONNX with ONNX Runtime.

    ``device="cpu"``: CPU execution provider, ``intra_op_threads`` (default: the cores this process may use),
    ``inter_op_threads`` (default 1: one network, sequential execution). ``device="cuda"``: the CUDA EP (and
    ONNX Runtime's TensorRT EP first when ``tensorrt_ep`` and present, caching its engines in
    ``bundle/engines/ort-trt``, fp16 when ``fp16``), CPU as fallback for unsupported nodes; output comes back
    as numpy either way. ``embed`` may be called from several threads at once (``InferenceSession.run`` is
    thread-safe).

    ``precision`` (CPU): ``"fp32"`` runs ``model.onnx``; ``"int8"`` the bundle's INT8 Q/DQ model
    (``model.int8.onnx``, exported with ``--int8``); ``"auto"`` picks INT8 when the bundle has it and this CPU
    has fast 8-bit dot products (``metaedge.runtime.cpu_int8``), else fp32 - ``describe()`` says which and why.
    ``"fp16"`` runs the fp32 model on the CPU (ONNX Runtime's CPU fp16 kernels are slower). On CUDA, INT8 is
    the TensorRT backend's job; this backend runs the fp32 model there.
    """

    def __init__(self, bundle: Bundle | str | Path, *, device: str = "cpu", intra_op_threads: int | None = None,
                 inter_op_threads: int = 1, tensorrt_ep: bool = False, fp16: bool = False, precision: str = "fp32"):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        ort = require("onnxruntime", "the ONNX Runtime backend")
        self._bundle = Bundle.load(bundle)
        spec = self._bundle.spec
        self.precision, self._precision_why, model_path = self._choose_model(device, precision)
        available = ort.get_available_providers()
        if device == "cpu":
            providers: list = [CPU_EP]
        else:
            if CUDA_EP not in available:
                raise BackendUnavailable(f"onnxruntime {ort.__version__} has no CUDA execution provider "
                                         f"(providers: {', '.join(available)}); install onnxruntime-gpu")
            providers = [(CUDA_EP, {"device_id": 0}), CPU_EP]
            if tensorrt_ep and TRT_EP in available:
                cache = self._bundle.engines_dir / "ort-trt"
                cache.mkdir(parents=True, exist_ok=True)
                providers.insert(0, (TRT_EP, {"device_id": 0, "trt_engine_cache_enable": True,
                                              "trt_engine_cache_path": str(cache), "trt_fp16_enable": bool(fp16),
                                              "trt_timing_cache_enable": True}))
        self.name = "ort-cpu" if device == "cpu" else "ort-cuda"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._threads = int(intra_op_threads) if intra_op_threads else usable_cores()
        if self._threads < 1 or inter_op_threads < 1:
            raise ValueError(f"threads: expected >= 1, got intra_op {intra_op_threads}, inter_op {inter_op_threads}")
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = int(inter_op_threads)
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendUnavailable(f"onnxruntime could not open {model_path.name} with "
                                     f"{[p if isinstance(p, str) else p[0] for p in providers]}: {exc}") from exc
        active = self._session.get_providers()
        if device == "cuda" and CUDA_EP not in active:
            # onnxruntime falls back to the CPU silently when the CUDA EP fails to load (driver, cuDNN, ...).
            raise BackendUnavailable(f"onnxruntime's CUDA execution provider failed to initialise (active "
                                     f"providers: {', '.join(active)}); check the CUDA/cuDNN libraries")
        self._providers = active
        self._version = ort.__version__
        self._input = InputSpec(spec.input_name, tuple(spec.input_shape))
        self._chw = tuple(spec.input_shape)
        self._dim = spec.embedding_dim
        self._outputs = [spec.output_name]
        self._run = self._session.run

    def _choose_model(self, device: str, precision: str) -> tuple[str, str, Path]:
        """``(precision run, why, ONNX file)`` for the asked precision on this device and CPU."""
        bundle = self._bundle
        has_int8 = bundle.int8_onnx_path is not None
        if device == "cuda":
            if precision == "int8":
                raise BackendUnavailable("INT8 on a GPU is the TensorRT backend's (backend='tensorrt', "
                                         "precision='int8'); ONNX Runtime CUDA runs the fp32 model")
            return "fp32", "fp32 ONNX", bundle.onnx_path
        if precision == "int8":
            if not has_int8:
                raise BackendUnavailable("precision 'int8' asked, but the bundle has no INT8 model (re-export with "
                                         "`metaedge export --int8`)")
            return "int8", f"INT8 ONNX {bundle.int8_onnx_path.name} (asked for)", bundle.int8_onnx_path
        if precision == "auto" and has_int8:
            from metaedge.runtime.cpu_int8 import fast_int8
            fast, why = fast_int8()
            if fast:
                return "int8", f"INT8 ONNX {bundle.int8_onnx_path.name} (auto: the bundle has one and {why})", \
                    bundle.int8_onnx_path
            return "fp32", f"fp32 ONNX (auto: the bundle has an INT8 model, but {why})", bundle.onnx_path
        if precision == "fp16":
            return "fp32", "fp32 ONNX (fp16 asked: ONNX Runtime's CPU runs fp16 slower, so the fp32 model)", \
                bundle.onnx_path
        return "fp32", "fp32 ONNX" + (" (auto: the bundle has no INT8 model)" if precision == "auto" else ""), \
            bundle.onnx_path

    @property
    def bundle(self) -> Bundle:
        return self._bundle

    def _coerce(self, batch) -> np.ndarray:
        if self._session is None:
            raise RuntimeError(f"{self.name} backend is closed")
        if hasattr(batch, "__cuda_array_interface__") and not isinstance(batch, np.ndarray):
            raise TypeError(f"batch: the {self.name} backend takes host (numpy) arrays, got a CUDA array "
                            f"({type(batch).__name__}); copy it to the host first")
        return np.ascontiguousarray(host_batch(batch, self._chw), dtype=np.float32)

    def embed(self, batch) -> np.ndarray:
        # The common case costs three attribute checks; everything else takes the validating slow path.
        if not (type(batch) is np.ndarray and batch.dtype == np.float32 and batch.ndim == 4
                and batch.shape[1:] == self._chw and batch.flags.c_contiguous and self._session is not None):
            batch = self._coerce(batch)
        if batch.shape[0] == 0:
            return np.zeros((0, self._dim), np.float32)
        return self._run(self._outputs, {self._input.name: batch})[0]

    def describe(self) -> str:
        eps = ", ".join(p.replace("ExecutionProvider", "") for p in self._providers)
        return f"{self.name}: onnxruntime {self._version} [{eps}], {self._threads} intra-op threads, {self._precision_why}"

    def close(self) -> None:
        self._session = None
        self._run = None
