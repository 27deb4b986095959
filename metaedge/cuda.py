"""GPU memory and streams for metaedge's kernels, with no torch needed.

``DeviceArray`` is a C-contiguous array in GPU memory (or in mapped, page-locked host memory, which on a Jetson
is the same DRAM the GPU uses). ``metaedge.kernels`` functions accept it, or any object exposing
``__cuda_array_interface__`` (torch and CuPy tensors), without copying, and return DeviceArrays. Going the other
way, ``torch.as_tensor(arr, device="cuda")`` and ``cupy.asarray(arr)`` wrap a DeviceArray without a copy.

    from metaedge import cuda, kernels
    if cuda.is_available():
        protos = cuda.DeviceArray.from_numpy(protos_np)
        scores, idx = kernels.topk(cuda.DeviceArray.from_numpy(q), protos, k=5)
        print(idx.to_numpy())
    else:
        print(cuda.why_unavailable())

Importing this module never touches the GPU; the driver is first asked when a function needs it. Without a
usable GPU (no CUDA build, no driver, no device) ``is_available()`` is False and every allocation raises
``CudaUnavailableError`` saying why and what to do.

Work is ordered on CUDA streams. An array remembers the stream it was made on (the legacy default stream
unless told otherwise) and kernels run on the stream of their first input; ``to_numpy()`` waits for that
stream. ``free()`` (or leaving a ``with`` block) returns memory at once, ordered on the array's stream;
otherwise it is returned when the array is garbage-collected.
"""
from __future__ import annotations

import functools
import math
import numpy as np

__all__ = ["CudaUnavailableError", "is_available", "why_unavailable", "device_count", "current_device",
           "synchronize", "Stream", "DeviceArray", "as_device_array", "shape_of", "host_empty",
           "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float16, np.int64, np.int32, np.uint8))
_REBUILD_HINT = ("rebuild metaedge with the CUDA toolkit on PATH (or CUDA_HOME set): "
                 "METAEDGE_CUDA=1 pip install --no-build-isolation .")


class CudaUnavailableError(RuntimeError):
    """A CUDA feature was used where CUDA cannot run; the message says why and how to fix it."""


def _native():
    from metaedge._native import native
    return native()


@functools.lru_cache(maxsize=None)
def _probe() -> tuple[bool, str | None, int]:
    try:
        C = _native()
    except ImportError as exc:
        return False, f"metaedge's compiled extension is not loaded ({exc})", 0
    if not getattr(C, "cuda_built", False):
        return False, f"this metaedge was built without CUDA kernels; {_REBUILD_HINT}", 0
    try:
        count, why = C.cuda_device_count()
    except Exception as exc:  # noqa: BLE001 - is_available() must never raise
        return False, f"the CUDA runtime failed to start: {exc}", 0
    if count == 0:
        why = why or "none visible"
        try:
            no_driver = C.cuda_driver_version() == 0
        except Exception:  # noqa: BLE001
            no_driver = False
        if no_driver:
            why += "; no NVIDIA driver (libcuda.so) could be loaded on this machine"
        return False, f"no usable CUDA device ({why})", 0
    return True, None, int(count)


def is_available() -> bool:
    """True when this build has CUDA kernels and a CUDA device is usable. Never raises."""
    try:
        return _probe()[0]
    except Exception:  # noqa: BLE001
        return False


def why_unavailable() -> str | None:
    """Why ``is_available()`` is False (None when CUDA is available)."""
    try:
        return _probe()[1]
    except Exception as exc:  # noqa: BLE001
        return f"probing CUDA failed: {exc}"


def device_count() -> int:
    """Number of usable CUDA devices (0 when CUDA is unavailable)."""
    return _probe()[2] if is_available() else 0


def _require():
    ok, why, _ = _probe()
    if not ok:
        raise CudaUnavailableError(f"CUDA is not available: {why}")
    return _native()


def current_device() -> int:
    return int(_require().cuda_current_device())


def synchronize(device: int | None = None) -> None:
    """Wait for all work on `device` (default: the current device)."""
    C = _require()
    C.cuda_device_synchronize(current_device() if device is None else int(device))


def _stream_handle(stream) -> int:
    """0 (legacy default), an int handle, a ``Stream``, or anything with ``cuda_stream`` (torch.cuda.Stream)."""
    if stream is None:
        return 0
    if isinstance(stream, Stream):
        return stream.handle
    if hasattr(stream, "cuda_stream"):
        return int(stream.cuda_stream)
    if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
        return int(stream)
    raise TypeError(f"`stream`: expected None, an int handle, a metaedge.cuda.Stream or an object with "
                    f"`cuda_stream`, got {type(stream).__name__}")


class Stream:
    """A CUDA stream (non-blocking by default: it does not wait for the legacy default stream).

    Usable as a context manager (destroyed on exit). ``int(stream)`` is the raw handle."""

    def __init__(self, device: int | None = None, non_blocking: bool = True):
        C = _require()
        self.device = current_device() if device is None else int(device)
        self._handle = int(C.cuda_stream_create(self.device, bool(non_blocking)))

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise ValueError("this Stream was closed")
        return self._handle

    def __int__(self) -> int:
        return self.handle

    def synchronize(self) -> None:
        _native().cuda_stream_synchronize(self.handle, self.device)

    def close(self) -> None:
        if getattr(self, "_handle", None):
            handle, self._handle = self._handle, None
            _native().cuda_stream_destroy(handle, self.device)

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    def __repr__(self) -> str:
        return f"Stream(handle={self._handle:#x}, device={self.device})" if self._handle else "Stream(closed)"


def _normalize_shape(shape) -> tuple[int, ...]:
    if type(shape) is tuple:  # fast path: every kernel call allocates its outputs through here
        for s in shape:
            if type(s) is not int or s < 0:
                break
        else:
            return shape
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"`shape`: expected an int or a sequence of ints, got {shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"`shape`: expected sizes >= 0, got {shape}")
    return shape


_DTYPES = {}
for _t in SUPPORTED_DTYPES:
    _DTYPES[_t] = _DTYPES[_t.type] = _DTYPES[_t.str] = _DTYPES[_t.name] = _t


def _normalize_dtype(dtype) -> np.dtype:
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        pass
    dt = np.dtype(dtype)
    if dt not in SUPPORTED_DTYPES:
        raise TypeError(f"`dtype`: expected one of {[str(t) for t in SUPPORTED_DTYPES]}, got {dt}")
    return dt


class _Buffer:
    """One allocation, released by free() or when the last array using it is garbage-collected."""

    __slots__ = ("nbytes", "device", "stream", "memory", "ptr", "host_ptr", "stream_ordered", "alive")

    def __init__(self, nbytes: int, device: int, stream: int, memory: str):
        self.nbytes, self.device, self.stream, self.memory = nbytes, device, stream, memory
        self.ptr = 0          # device-side address
        self.host_ptr = 0     # mapped memory only
        self.stream_ordered = False
        self.alive = True
        if nbytes == 0:
            return
        C = _native()
        if memory == "device":
            self.ptr, self.stream_ordered = C.cuda_malloc(nbytes, device, stream)
        elif memory == "mapped":
            self.host_ptr = int(C.cuda_host_alloc(nbytes, True))
            self.ptr = int(C.cuda_host_device_pointer(self.host_ptr))
        else:
            raise ValueError(f"`memory`: expected 'device' or 'mapped', got {memory!r}")

    @classmethod
    def foreign(cls, ptr: int, device: int, stream: int) -> "_Buffer":
        """Memory owned by someone else (a torch tensor...): never freed here."""
        buf = cls.__new__(cls)
        buf.nbytes, buf.device, buf.stream, buf.memory = 0, device, stream, "foreign"
        buf.ptr, buf.host_ptr, buf.stream_ordered, buf.alive = ptr, 0, False, True
        return buf

    def free(self) -> None:
        if not self.alive:
            return
        self.alive = False
        if self.nbytes == 0 or self.memory == "foreign":
            return
        C = _native()
        if self.memory == "device":
            C.cuda_free(self.ptr, self.device, self.stream, self.stream_ordered)
        else:
            C.cuda_free_host(self.host_ptr)

    def __del__(self):
        try:
            self.free()
        except Exception:  # noqa: BLE001 - never raise from a finalizer; a sticky CUDA error shows elsewhere
            pass


class _HostView:
    """Exposes host memory to numpy through the array interface and keeps its owner alive."""

    def __init__(self, ptr: int, shape, dtype: np.dtype, owner):
        self.__array_interface__ = {"shape": tuple(shape), "typestr": dtype.str, "data": (ptr, False),
                                    "version": 3, "strides": None}
        self._owner = owner


class DeviceArray:
    """A C-contiguous CUDA array: shape, dtype, the device and stream it lives on.

    Make one with ``empty``, ``zeros``, ``from_numpy`` or ``as_device_array`` (no-copy view of a torch/CuPy
    tensor); kernels return them. ``to_numpy()`` copies to the host. ``free()`` releases memory now.
    """

    __slots__ = ("_buffer", "_offset", "_shape", "_dtype", "_device", "_stream", "_owner", "__weakref__")
    _metaedge_device_array = True  # lets metaedge.kernels recognise it without building the interface dict

    def __init__(self, *, buffer: _Buffer | None, offset: int, shape, dtype, device: int, stream: int,
                 owner=None):
        self._buffer = buffer
        self._offset = offset
        self._shape = _normalize_shape(shape)
        self._dtype = np.dtype(dtype)
        self._device = int(device)
        self._stream = int(stream)
        self._owner = owner  # the foreign object (torch tensor...) whose memory this views, kept alive

    @classmethod
    def _new(cls, buffer, offset, shape, dtype, device, stream, owner=None) -> "DeviceArray":
        """Internal constructor for already-normalised fields (kernel calls allocate through here)."""
        self = object.__new__(cls)
        self._buffer, self._offset, self._shape, self._dtype = buffer, offset, shape, dtype
        self._device, self._stream, self._owner = device, stream, owner
        return self

    # ---- construction ----------------------------------------------------------------------------------
    @classmethod
    def empty(cls, shape, dtype=np.float32, like=None, stream=None, device: int | None = None,
              memory: str = "device") -> "DeviceArray":
        """Uninitialised array. ``like``: a CUDA array whose device and stream the result follows;
        ``stream``/``device`` override. ``memory="mapped"``: page-locked host memory mapped into the GPU
        (zero-copy on Jetson; ``.host`` is a numpy view of it)."""
        _require()
        shape, dt = _normalize_shape(shape), _normalize_dtype(dtype)
        dev, st = _placement(like, stream, device)
        nbytes = math.prod(shape) * dt.itemsize
        return cls._new(_Buffer(nbytes, dev, st, memory), 0, shape, dt, dev, st)

    @classmethod
    def zeros(cls, shape, dtype=np.float32, like=None, stream=None, device: int | None = None,
              memory: str = "device") -> "DeviceArray":
        out = cls.empty(shape, dtype, like=like, stream=stream, device=device, memory=memory)
        if out.nbytes:
            _native().cuda_memset(out.ptr, 0, out.nbytes, out._device, out._stream)
        return out

    @classmethod
    def from_numpy(cls, array, stream=None, device: int | None = None, memory: str = "device") -> "DeviceArray":
        """Copy a numpy array (made C-contiguous; dtype one of SUPPORTED_DTYPES) to the GPU."""
        arr = np.ascontiguousarray(array)
        if arr.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"`array`: expected dtype one of {[str(t) for t in SUPPORTED_DTYPES]}, got {arr.dtype}"
                            " (convert it first, e.g. .astype(np.float32))")
        out = cls.empty(arr.shape, arr.dtype, stream=stream, device=device, memory=memory)
        if out.nbytes:
            if memory == "mapped":
                np.copyto(out.host, arr)
            else:
                _native().cuda_memcpy(out.ptr, arr.ctypes.data, out.nbytes, "h2d", out._device, out._stream, False)
        return out

    @classmethod
    def wrap(cls, obj) -> "DeviceArray":
        """A no-copy view of any C-contiguous object with ``__cuda_array_interface__`` (keeps it alive)."""
        if isinstance(obj, DeviceArray):
            return obj
        cai = getattr(obj, "__cuda_array_interface__", None)
        if cai is None:
            raise TypeError(f"expected an object with __cuda_array_interface__, got {type(obj).__name__}")
        shape = tuple(int(s) for s in cai["shape"])
        dt = _normalize_dtype(np.dtype(cai["typestr"]))
        strides = cai.get("strides")
        if strides is not None and not _is_c_contiguous(shape, strides, dt.itemsize):
            raise ValueError(f"expected a C-contiguous CUDA array, got strides {tuple(strides)} for shape {shape} "
                             "(call .contiguous() on a torch tensor)")
        ptr = int(cai["data"][0])
        stream = cai.get("stream")
        stream = 0 if stream in (None, 1) else int(stream)
        device = max(_native().cuda_pointer_device(ptr), 0) if ptr else 0
        return cls._new(_Buffer.foreign(ptr, device, stream), 0, shape, dt, device, stream, obj)

    # ---- properties ------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        return math.prod(self._shape)

    @property
    def nbytes(self) -> int:
        return self.size * self._dtype.itemsize

    @property
    def device_index(self) -> int:
        return self._device

    @property
    def stream(self) -> int:
        """Raw handle of the stream this array's work is ordered on (0 = legacy default stream)."""
        return self._stream

    @property
    def memory(self) -> str:
        return self._buffer.memory if self._buffer is not None else "freed"

    @property
    def freed(self) -> bool:
        return self._buffer is None or not self._buffer.alive

    @property
    def ptr(self) -> int:
        """Device address of the first element (0 for an empty array)."""
        if self.freed:
            raise ValueError("this DeviceArray was freed (free() or the end of its `with` block)")
        if self.nbytes == 0:
            return 0
        return self._buffer.ptr + self._offset

    @property
    def host(self) -> np.ndarray:
        """Mapped memory only: a numpy view of the same bytes (call ``synchronize()`` before reading results)."""
        if self.memory != "mapped":
            raise ValueError(f"`.host` exists only for memory='mapped' arrays; this one is {self.memory!r}")
        self.ptr  # raises when freed
        return np.asarray(_HostView(self._buffer.host_ptr + self._offset, self._shape, self._dtype, self._buffer))

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self._shape, "typestr": self._dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None, "stream": 1 if self._stream == 0 else self._stream}

    # ---- operations ------------------------------------------------------------------------------------
    def to_numpy(self) -> np.ndarray:
        """Copy to a new numpy array, after the work queued on this array's stream."""
        out = np.empty(self._shape, self._dtype)
        if self.nbytes:
            _native().cuda_memcpy(out.ctypes.data, self.ptr, self.nbytes, "default", self._device, self._stream, True)
        return out

    def copy(self) -> "DeviceArray":
        """A new device array with the same contents (device-to-device, ordered on this array's stream)."""
        out = DeviceArray.empty(self._shape, self._dtype, like=self)
        if self.nbytes:
            _native().cuda_memcpy(out.ptr, self.ptr, self.nbytes, "default", self._device, self._stream, False)
        return out

    def synchronize(self) -> None:
        """Wait for the work queued on this array's stream."""
        _native().cuda_stream_synchronize(self._stream, self._device)

    def reshape(self, *shape) -> "DeviceArray":
        """A view with another shape (same number of elements; one -1 allowed)."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        shape = list(int(s) for s in shape)
        if shape.count(-1) > 1:
            raise ValueError("reshape: at most one -1")
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            if known == 0 or self.size % known:
                raise ValueError(f"cannot reshape {self._shape} into {tuple(shape)}")
            shape[shape.index(-1)] = self.size // known
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape {self._shape} into {tuple(shape)}")
        return DeviceArray(buffer=self._buffer, offset=self._offset, shape=shape, dtype=self._dtype,
                           device=self._device, stream=self._stream, owner=self._owner)

    def __getitem__(self, index) -> "DeviceArray":
        """``a[i]``: a view of row i along the first axis; ``a[start:stop]``: a view of rows start..stop-1
        (step 1; C-contiguous like the array). The only indexing offered."""
        if self.ndim == 0:
            raise IndexError("a 0-d DeviceArray cannot be indexed")
        if isinstance(index, slice) and index.step in (None, 1):
            start, stop, _ = index.indices(self._shape[0])
            stop = max(start, stop)
            row_bytes = math.prod(self._shape[1:]) * self._dtype.itemsize
            return DeviceArray(buffer=self._buffer, offset=self._offset + start * row_bytes,
                               shape=(stop - start, *self._shape[1:]), dtype=self._dtype, device=self._device,
                               stream=self._stream, owner=self._owner)
        if not isinstance(index, (int, np.integer)):
            raise TypeError("DeviceArray supports only an integer or a slice (step 1) along the first axis; "
                            "copy to the host with to_numpy() for anything else")
        n = self._shape[0]
        i = int(index) + (n if index < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for axis 0 of size {n}")
        row = self._shape[1:]
        return DeviceArray(buffer=self._buffer, offset=self._offset + i * math.prod(row) * self._dtype.itemsize,
                           shape=row, dtype=self._dtype, device=self._device, stream=self._stream,
                           owner=self._owner)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d DeviceArray")
        return self._shape[0]

    def free(self) -> None:
        """Release the memory now (ordered on the array's stream). Views of it become unusable. No-op for
        arrays wrapping a foreign tensor (its owner manages that memory) and for arrays already freed."""
        if self._buffer is not None:
            self._buffer.free()  # a foreign buffer only forgets its pointer
        self._buffer = None
        self._owner = None

    def __enter__(self) -> "DeviceArray":
        return self

    def __exit__(self, *exc) -> None:
        self.free()

    def __repr__(self) -> str:
        if self.freed:
            return f"DeviceArray(freed, shape={self._shape}, dtype={self._dtype})"
        return (f"DeviceArray(shape={self._shape}, dtype={self._dtype}, device={self._device}, "
                f"stream={self._stream:#x}, memory={self.memory!r})")


def _is_c_contiguous(shape, strides, itemsize) -> bool:
    expected = itemsize
    for size, stride in zip(reversed(shape), reversed(tuple(strides))):
        if size > 1 and stride != expected:
            return False
        expected *= size
    return True


def _placement(like, stream, device) -> tuple[int, int]:
    """(device, stream handle) for a new array."""
    dev, st = None, None
    if like is not None:
        if isinstance(like, DeviceArray):
            dev, st = like.device_index, like.stream
        else:
            cai = getattr(like, "__cuda_array_interface__", None)
            if cai is None:
                raise TypeError(f"`like`: expected a CUDA array, got {type(like).__name__}")
            ptr = int(cai["data"][0])
            found = _native().cuda_pointer_device(ptr) if ptr else -1
            dev = found if found >= 0 else None
            cai_stream = cai.get("stream")
            st = 0 if cai_stream in (None, 1) else int(cai_stream)
    if stream is not None:
        st = _stream_handle(stream)
    if device is not None:
        dev = int(device)
    if dev is None:
        dev = current_device()
    return dev, (st or 0)


def as_device_array(obj) -> DeviceArray:
    """``DeviceArray.wrap``: a no-copy view of a torch/CuPy CUDA tensor (or the DeviceArray itself)."""
    return DeviceArray.wrap(obj)


def shape_of(obj) -> tuple[int, ...]:
    """Shape of any object with ``__cuda_array_interface__`` (DeviceArray, torch, CuPy)."""
    if isinstance(obj, DeviceArray):
        return obj.shape
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is None:
        raise TypeError(f"expected a CUDA array, got {type(obj).__name__}")
    return tuple(int(s) for s in cai["shape"])


def host_empty(shape, dtype=np.float32) -> np.ndarray:
    """A numpy array in page-locked host memory: host<->device copies from/to it run at full bus speed and
    truly asynchronously. The memory is released when the array is garbage-collected."""
    _require()
    shape, dt = _normalize_shape(shape), np.dtype(dtype)
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes == 0:
        return np.empty(shape, dt)
    buf = _Buffer(nbytes, current_device(), 0, "mapped")
    return np.asarray(_HostView(buf.host_ptr, shape, dt, buf))
