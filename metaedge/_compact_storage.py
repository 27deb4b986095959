"""Where a CompactClassMatrix keeps its arrays: host memory (numpy) or one CUDA device (DeviceArrays).

Both hold the same arrays with room for ``capacity`` classes (a multiple of 16): the float32 rows
``[capacity, d]``, the int8 codes ``[capacity / 16, ceil(d / 4), 16, 4]`` (stored as code + 128), the per-row
terms ``[capacity / 16, 4, 16]`` (layout: csrc/include/metaedge/ops.h) and the ``[d]`` center the codes are
taken relative to, and offer the few operations the
matrix needs, each touching only the classes it changes. The codes are kept only when ``compact`` is set (the
"fp32" method needs none). Callers hold the matrix's lock.
"""
from __future__ import annotations

import numpy as np

from metaedge._native import native

LANES, STEP, META_FIELDS = 16, 4, 4


def groups(classes: int) -> int:
    return (classes + LANES - 1) // LANES


class HostBuffers:
    """numpy arrays; the native CPU kernels."""

    device = None

    def __init__(self, dim: int, capacity: int, metric: str, compact: bool):
        self.dim, self.metric, self.compact = dim, metric, compact
        self.steps = (dim + STEP - 1) // STEP
        self.capacity = groups(capacity) * LANES
        self.rows = np.empty((self.capacity, dim), np.float32)
        self.center = np.zeros(dim, np.float32)
        self.codes = self.meta = None
        if compact:  # empty slots: code 0 (stored as 128) and zero terms, what encoding a zero row writes
            self.codes = np.full((groups(self.capacity), self.steps, LANES, STEP), 128, np.uint8)
            self.meta = np.zeros((groups(self.capacity), META_FIELDS, LANES), np.float32)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + (self.codes.nbytes + self.meta.nbytes if self.compact else 0)

    def grown(self, capacity: int, count: int) -> "HostBuffers":
        new = type(self)(self.dim, capacity, self.metric, self.compact)
        new.center = self.center
        new.rows[:count] = self.rows[:count]
        if self.compact:
            new.codes[:groups(count)] = self.codes[:groups(count)]
            new.meta[:groups(count)] = self.meta[:groups(count)]
        return new

    def _encode(self, rows: np.ndarray, slots: np.ndarray, center=None) -> None:
        if self.compact:
            center = self.center if center is None else center
            native().compact_encode(rows, slots, self.metric, center, self.codes, self.meta)

    def set_center(self, center: np.ndarray, count: int) -> None:
        """A new center (checked float32 [d]) and classes 0..count-1 re-encoded with it."""
        self.center = np.ascontiguousarray(center, np.float32)
        if count:
            self._encode(self.rows[:count], np.arange(count, dtype=np.int64))

    def host_rows(self, start: int, stop: int) -> np.ndarray:
        return self.rows[start:stop]

    def write(self, slots: np.ndarray, rows: np.ndarray) -> None:
        """Rows ``rows[n, d]`` (checked, float32) into classes ``slots[n]`` (int64, distinct)."""
        self.rows[slots] = rows
        self._encode(rows, slots)

    def append(self, first: int, rows: np.ndarray) -> None:
        """Rows ``rows[n, d]`` (checked, float32, C-contiguous) into classes first .. first + n - 1."""
        self.rows[first:first + len(rows)] = rows
        self._encode(rows, np.arange(first, first + len(rows), dtype=np.int64))

    def move(self, src: int, dst: int) -> None:
        self.rows[dst] = self.rows[src]
        self._encode(self.rows[dst:dst + 1], np.array([dst], np.int64))

    def clear(self, slots: np.ndarray) -> None:
        """Slots back to empty: what a zero row with a zero center encodes to (codes 128, zero terms)."""
        if self.compact and len(slots):
            self._encode(np.zeros((len(slots), self.dim), np.float32), slots, np.zeros(self.dim, np.float32))

    def view(self, count: int) -> np.ndarray:
        rows = self.rows[:count]
        rows.flags.writeable = False
        return rows

    def queries(self, queries):
        """(float32 [b, d] C-contiguous host queries, whether one [d] query was given, False: the results
        stay where they are)."""
        if type(queries) is np.ndarray and queries.dtype == np.float32 and queries.ndim == 2 \
                and queries.flags.c_contiguous:
            return queries, False, False
        from metaedge.kernels import _float_input, _is_cuda
        if _is_cuda(queries):
            raise TypeError("`queries`: this CompactClassMatrix lives in host memory and takes numpy queries, got "
                            f"a CUDA array ({type(queries).__name__}); make it with device='cuda' for CUDA queries")
        queries = _float_input(queries, "queries")
        if queries.ndim == 1:
            return queries[None, :], True, False
        return queries, False, False

    def topk(self, queries, count: int, k: int, use_compact: bool, to_host: bool):
        b = queries.shape[0] if queries.ndim == 2 else 0
        kk = max(k, 0)  # (the native checker names a bad k; a negative one must not reach the allocation)
        scores, indices = np.empty((b, kk), np.float32), np.empty((b, kk), np.int64)
        rows = self.rows[:count]
        if not use_compact:
            native().topk(queries, rows, k, self.metric, scores, indices)
            return scores, indices, np.full(b, count, np.int64)
        fp32_rows = np.empty(b, np.int64)
        native().compact_topk(queries, rows, self.codes, self.meta, self.center, k, self.metric, scores, indices,
                              fp32_rows)
        return scores, indices, fp32_rows


class DeviceBuffers:
    """DeviceArrays on one CUDA device, on its default stream (or the one given); the CUDA kernels. Rows come
    from the host (numpy) or are moved on the device; queries may be CUDA arrays (results stay on the device)
    or numpy arrays (uploaded; results come back as numpy)."""

    def __init__(self, dim: int, capacity: int, metric: str, compact: bool, device: int, stream=0):
        from metaedge import cuda
        self._cuda = cuda
        self.dim, self.metric, self.compact = dim, metric, compact
        self.device, self.stream = device, stream
        self.steps = (dim + STEP - 1) // STEP
        self.capacity = groups(capacity) * LANES
        place = {"device": device, "stream": stream}
        self.rows = cuda.DeviceArray.empty((self.capacity, dim), np.float32, **place)
        self.center = cuda.DeviceArray.zeros((dim,), np.float32, **place)
        self.codes = self.meta = None
        if compact:
            self.codes = cuda.DeviceArray.empty((groups(self.capacity), self.steps, LANES, STEP), np.uint8, **place)
            if self.codes.nbytes:
                native().cuda_memset(self.codes.ptr, 128, self.codes.nbytes, self.device, self.codes.stream)
            self.meta = cuda.DeviceArray.zeros((groups(self.capacity), META_FIELDS, LANES), np.float32, **place)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + (self.codes.nbytes + self.meta.nbytes if self.compact else 0)

    def _copy(self, dst, src, nbytes: int, kind: str) -> None:
        if nbytes:
            native().cuda_memcpy(dst, src, nbytes, kind, self.device, self.rows.stream, False)

    def grown(self, capacity: int, count: int) -> "DeviceBuffers":
        new = type(self)(self.dim, capacity, self.metric, self.compact, self.device, self.stream)
        new.center = self.center
        new._copy(new.rows.ptr, self.rows.ptr, count * self.dim * 4, "d2d")
        if self.compact:
            used = groups(count)
            new._copy(new.codes.ptr, self.codes.ptr, used * self.steps * LANES * STEP, "d2d")
            new._copy(new.meta.ptr, self.meta.ptr, used * META_FIELDS * LANES * 4, "d2d")
        return new

    def _encode(self, first_row, slots: np.ndarray, center=None) -> None:
        if self.compact:
            dev_slots = self._cuda.DeviceArray.from_numpy(np.ascontiguousarray(slots, np.int64), device=self.device,
                                                          stream=self.rows.stream)
            center = self.center if center is None else center
            native().compact_encode(first_row, dev_slots, self.metric, center, self.codes, self.meta)
            dev_slots.synchronize()  # (the host copy of the slots must outlive the upload)

    def set_center(self, center: np.ndarray, count: int) -> None:
        self.center = self._cuda.DeviceArray.from_numpy(np.ascontiguousarray(center, np.float32), device=self.device,
                                                        stream=self.rows.stream)
        if count:
            self._encode(self.rows[:count], np.arange(count, dtype=np.int64))

    def host_rows(self, start: int, stop: int) -> np.ndarray:
        return self.rows[start:stop].to_numpy()

    def write(self, slots: np.ndarray, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, np.float32)
        for slot, row in zip(slots, rows):
            self._copy(self.rows[int(slot)].ptr, row.ctypes.data, self.dim * 4, "h2d")
        staged = self._cuda.DeviceArray.from_numpy(rows, device=self.device, stream=self.rows.stream)
        self._encode(staged, slots)
        staged.synchronize()

    def append(self, first: int, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, np.float32)
        self._copy(self.rows[first].ptr, rows.ctypes.data, rows.nbytes, "h2d")  # one copy for the run
        self._encode(self.rows[first:first + len(rows)], np.arange(first, first + len(rows), dtype=np.int64))

    def move(self, src: int, dst: int) -> None:
        self._copy(self.rows[dst].ptr, self.rows[src].ptr, self.dim * 4, "d2d")
        self._encode(self.rows[dst:dst + 1], np.array([dst], np.int64))

    def clear(self, slots: np.ndarray) -> None:
        if self.compact and len(slots):
            zeros = self._cuda.DeviceArray.zeros((len(slots), self.dim), np.float32, device=self.device,
                                                 stream=self.rows.stream)
            self._encode(zeros, slots, self._cuda.DeviceArray.zeros((self.dim,), np.float32, device=self.device,
                                                                    stream=self.rows.stream))

    def view(self, count: int):
        return self.rows[:count]

    def queries(self, queries):
        """(float32 [b, d] CUDA queries, whether one [d] query was given, whether the results go back to the
        host): numpy queries are uploaded, and their results brought back."""
        from metaedge.kernels import _float_input, _is_cuda
        if _is_cuda(queries):
            q = self._cuda.as_device_array(queries)
            if q.ndim == 1:
                return q.reshape(1, q.shape[0]), True, False
            return q, False, False
        host = _float_input(queries, "queries")
        single = host.ndim == 1
        q = self._cuda.DeviceArray.from_numpy(host[None, :] if single else host, device=self.device,
                                              stream=self.rows.stream)
        return q, single, True

    def topk(self, queries, count: int, k: int, use_compact: bool, to_host: bool):
        cuda = self._cuda
        shape = cuda.shape_of(queries)
        b = shape[0] if len(shape) == 2 else 0
        kk = max(k, 0)
        place = {"like": queries}
        scores = cuda.DeviceArray.empty((b, kk), np.float32, **place)
        indices = cuda.DeviceArray.empty((b, kk), np.int64, **place)
        fp32_rows = cuda.DeviceArray.empty((b,), np.int64, **place)
        rows = self.rows[:count]
        if use_compact:
            native().compact_topk(queries, rows, self.codes, self.meta, self.center, k, self.metric, scores, indices,
                                  fp32_rows)
        else:
            native().topk(queries, rows, k, self.metric, scores, indices)
            fp32_rows = cuda.DeviceArray.from_numpy(np.full(b, count, np.int64), device=self.device,
                                                    stream=self.rows.stream) if b else fp32_rows
        if to_host:
            return scores.to_numpy(), indices.to_numpy(), fp32_rows.to_numpy()
        return scores, indices, fp32_rows
