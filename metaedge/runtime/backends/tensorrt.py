"""TensorRT backend: the bundle's engine for this GPU (built and cached on first use), run with named I/O
tensors and ``execute_async_v3``; embeddings stay on the GPU as a ``metaedge.cuda.DeviceArray`` so they go
straight into the CUDA kernels (DESIGN §7).

Thin on purpose: TensorRT calls are exactly those of the TensorRT 10/11 Python API (``Runtime.
deserialize_cuda_engine``, ``ICudaEngine.num_io_tensors / get_tensor_name / get_tensor_mode /
get_tensor_dtype / get_tensor_profile_shape / create_execution_context``, ``IExecutionContext.
set_input_shape / set_tensor_address / execute_async_v3``), device memory comes from ``metaedge.cuda``.
Imports tensorrt when a backend is created, never at module import.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import numpy as np

from metaedge.runtime.backends.base import Backend, BackendUnavailable, InputSpec, host_batch
from metaedge.runtime.bundle import Bundle

_F32 = 4


def _pointer(array) -> int:
    return int(array.__cuda_array_interface__["data"][0])


def _cai_stream(iface: dict) -> int:
    """The stream a ``__cuda_array_interface__`` producer used (v3: None/1 legacy default, 2 per-thread)."""
    stream = iface.get("stream")
    return 0 if stream in (None, 1) else int(stream)


class CudaMemory:
    """The few device-memory operations the backend needs, on ``metaedge.cuda`` (swappable in tests).

    Owns a non-blocking stream unless given one; arrays are allocated and copied on the stream of the call."""

    def __init__(self, stream: int | None = None):
        try:
            from metaedge import cuda
        except ImportError as exc:
            raise BackendUnavailable(f"metaedge.cuda is not importable: {exc}") from exc
        if not cuda.is_available():
            raise BackendUnavailable(f"metaedge.cuda is not usable ({cuda.why_unavailable()}); the TensorRT backend "
                                     "keeps its embeddings on the GPU through it")
        self.cuda = cuda
        self._own = cuda.Stream() if stream is None else None
        self.stream = self._own.handle if self._own is not None else int(stream)

    def upload(self, batch: np.ndarray, stream: int):
        arr = self.cuda.DeviceArray.from_numpy(np.ascontiguousarray(batch, dtype=np.float32), stream=stream)
        return arr, _pointer(arr)

    def empty(self, shape: tuple[int, ...], stream: int):
        arr = self.cuda.DeviceArray.empty(shape, np.float32, stream=stream)
        return arr, _pointer(arr)

    def close(self) -> None:
        if self._own is not None:
            self._own.synchronize()
            self._own.close()
            self._own = None


class TensorRTBackend(Backend):
    """``precision``: ``"auto"`` (fp16 where this TensorRT can build it from the bundle), ``"fp16"`` or
    ``"fp32"``; ``max_batch``: the engine's batch range (larger batches run in chunks). Streams: a CUDA-array
    input is processed on the stream its ``__cuda_array_interface__`` names (so it is ordered after whatever
    produced it, e.g. the CUDA pre-processing), a numpy input on the backend's own non-blocking stream (or the
    ``stream`` handle given); the returned DeviceArray lives on that stream, which metaedge's kernels and
    ``to_numpy()`` follow. ``build=False`` refuses to build a missing engine (fails fast).
    Thread-safe: an execution context holds per-call shapes and addresses, so concurrent ``embed`` calls take
    turns enqueueing (the GPU serialises them on the stream anyway)."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle | str | Path, *, precision: str = "auto", max_batch: int = 32,
                 opt_batch: int | None = None, build: bool = True, stream: int | None = None,
                 progress: Callable[[str], None] | None = None, memory=None, trt=None, device=None):
        from metaedge.runtime import tensorrt_engine as te
        from metaedge.runtime.engine_cache import find_engine
        self._bundle = Bundle.load(bundle)
        spec = self._bundle.spec
        if trt is None:
            try:
                trt = te.tensorrt_module()
            except ImportError as exc:
                raise BackendUnavailable(str(exc)) from exc
        self._memory = memory or CudaMemory(stream)
        try:
            device = device or te.current_device()
        except te.EngineBuildError as exc:
            raise BackendUnavailable(str(exc)) from exc
        major = te.tensorrt_major(trt.__version__)
        self.precision = te.resolve_precision(self._bundle, precision, major)
        if not build:
            key = te.engine_key(self._bundle, self.precision, max_batch, trt.__version__, device, opt_batch)
            lookup = find_engine(self._bundle.engines_dir, key)
            if lookup.path is None:
                raise BackendUnavailable("no usable cached engine and building is disabled: "
                                         + "; ".join(lookup.rebuild_reasons))
        try:
            plan_path, self.key = te.get_engine(self._bundle, precision=self.precision, max_batch=max_batch,
                                                opt_batch=opt_batch, progress=progress, device=device, trt=trt)
        except te.EngineBuildError as exc:
            raise BackendUnavailable(f"engine build failed: {exc}") from exc
        self._trt = trt
        self._logger = te.make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        from metaedge.runtime.engine_cache import MAX_PLAN_BYTES
        from metaedge.runtime.fileio import read_file
        try:
            plan = read_file(plan_path, MAX_PLAN_BYTES, "TensorRT plan")
        except (OSError, ValueError) as exc:
            raise BackendUnavailable(f"cannot read the TensorRT engine {plan_path.name}: {exc}") from exc
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendUnavailable(f"TensorRT {trt.__version__} could not deserialize {plan_path.name}: "
                                     + ("; ".join(self._logger.errors) or "no error text")
                                     + " (delete it to force a rebuild)")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        modes = {n: self._engine.get_tensor_mode(n) for n in names}
        inputs = [n for n in names if modes[n] == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if modes[n] == trt.TensorIOMode.OUTPUT]
        if inputs != [spec.input_name] or outputs != [spec.output_name]:
            raise BackendUnavailable(f"engine {plan_path.name} has I/O {inputs} -> {outputs}, the bundle says "
                                     f"[{spec.input_name!r}] -> [{spec.output_name!r}]")
        for n in names:
            if self._engine.get_tensor_dtype(n) != trt.DataType.FLOAT:
                raise BackendUnavailable(f"engine tensor {n!r} is {self._engine.get_tensor_dtype(n)}, expected "
                                         "float32 I/O")
        _, _, profile_max = self._engine.get_tensor_profile_shape(spec.input_name, 0)
        self._max_batch = int(profile_max[0])
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailable("TensorRT could not create an execution context (out of GPU memory?)")
        self._input = InputSpec(spec.input_name, tuple(spec.input_shape))
        self._dim = spec.embedding_dim
        self._plan = plan_path
        self._inflight_input = None
        self._lock = threading.Lock()

    @property
    def output_device(self) -> str:
        return "cuda"

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def engine_path(self) -> Path:
        return self._plan

    def _device_input(self, batch):
        """(keep-alive object, device pointer, batch size, stream) for a numpy or CUDA float32 NCHW batch."""
        chw = self._input.shape
        if hasattr(batch, "__cuda_array_interface__") and not isinstance(batch, np.ndarray):
            iface = batch.__cuda_array_interface__
            given = tuple(int(d) for d in iface["shape"])
            shape = (1, *given) if len(given) == 3 else given
            if len(shape) != 4 or shape[1:] != chw:
                raise ValueError(f"batch: expected [b, {', '.join(map(str, chw))}], got shape {list(given)}")
            if np.dtype(iface["typestr"]) != np.float32:
                raise TypeError(f"batch: expected a float32 CUDA array, got {np.dtype(iface['typestr'])}")
            contiguous = tuple(int(np.prod(given[i + 1:], dtype=np.int64)) * _F32 for i in range(len(given)))
            if iface.get("strides") is not None and tuple(iface["strides"]) != contiguous:
                raise ValueError("batch: the CUDA array must be C-contiguous")
            return batch, int(iface["data"][0]), shape[0], _cai_stream(iface)
        arr = host_batch(batch, chw)
        keep, ptr = self._memory.upload(arr, self._memory.stream)
        return keep, ptr, arr.shape[0], self._memory.stream

    def embed(self, batch):
        """``[b, C, H, W]`` float32 (numpy or CUDA) -> ``[b, dim]`` float32 DeviceArray, enqueued on the stream."""
        if self._context is None:
            raise RuntimeError("tensorrt backend is closed")
        keep, in_ptr, b, stream = self._device_input(batch)
        out, out_ptr = self._memory.empty((b, self._dim), stream)
        c, h, w = self._input.shape
        name_in, name_out = self._input.name, self._bundle.spec.output_name
        with self._lock:
            context = self._context
            if context is None:
                raise RuntimeError("tensorrt backend is closed")
            for start in range(0, b, self._max_batch):
                n = min(self._max_batch, b - start)
                if not context.set_input_shape(name_in, (n, c, h, w)):
                    raise RuntimeError(f"TensorRT rejected input shape {[n, c, h, w]}")
                context.set_tensor_address(name_in, in_ptr + start * c * h * w * _F32)
                context.set_tensor_address(name_out, out_ptr + start * self._dim * _F32)
                if not context.execute_async_v3(stream):
                    raise RuntimeError("TensorRT execute_async_v3 failed: " + "; ".join(self._logger.errors[-3:]))
            # The engine may still be reading the input when we return: keep it alive until the next call.
            self._inflight_input = keep
        return out

    def describe(self) -> str:
        k = self.key
        return (f"tensorrt: TensorRT {k.tensorrt_version}, {k.precision}, batch 1..{self._max_batch}, "
                f"{k.gpu_name} (sm {k.compute_capability}), engine {self._plan.name}")

    def close(self) -> None:
        with self._lock:
            self._inflight_input = None
            self._context = None
            self._engine = None
            self._runtime = None
            if hasattr(self._memory, "close"):
                self._memory.close()
