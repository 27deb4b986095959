"""The class matrix with a compact copy: exact top-k at a quarter of the float32 memory traffic.

Top-k over the class matrix is the kernel every frame pays for, and for large galleries it only streams memory
(100,000 x 512 float32 is 205 MB per query). :class:`CompactClassMatrix` keeps, beside the exact float32 rows,
an int8 copy scaled per row with the quantisation error of every row, and answers :meth:`~CompactClassMatrix.topk`
in two passes: the int8 copy (a quarter of the bytes) bounds every class's score, which rules out all classes
but a few dozen that could still be in the top k; those are re-scored from the float32 rows by
:func:`metaedge.kernels.topk` itself. The bound is proven, not measured, so the result is exactly the float32
result (docs/matching.md derives it and lists the few cases that fall back to the full float32 scan).

Classes are added, replaced and removed one at a time in O(d) each (the int8 copy is updated for that class
only, never rebuilt). Small matrices, which caches hold, are scored in float32 directly; the switch point, the
SIMD variant in use and any override are what :func:`matching_policy` reports (``metaedge info`` prints it).
"""
from __future__ import annotations

import operator
import os
import threading

import numpy as np

from metaedge import _compact_storage as storage
from metaedge._native import native

__all__ = ["CompactClassMatrix", "matching_policy", "MATCHING_METHODS", "AUTO_COMPACT_MIN_BYTES", "AUTO_CENTER_AT"]

MATCHING_METHODS = ("auto", "compact", "fp32")
# "auto" scores through the compact copy from this many bytes of float32 class matrix on (512 x 512 or
# 4,096 x 64 classes). Measured (batch 1, top-5, one thread, Zen 4, kernels.topk vs the compact path):
# the compact path is 1.2-2x faster already at 1,024 classes and 2.5-7x from 4 MiB on; only metaedge's
# packed PrototypeMatcher is a little faster below 1 MiB (1,024 x 64: 5 vs 7 us).
AUTO_COMPACT_MIN_BYTES = 1 << 20
# center="auto": the codes quantise each row minus the mean of the classes; the mean is taken when the matrix
# first reaches each of these sizes (minus 0 before the first), re-encoding the classes there are: at most a
# third more encoding in all, and a fixed center from 65,536 classes on. Embeddings of one network share a
# large common part; taking it out shrinks what is quantised, its error and the bound (trained Omniglot
# embeddings, tools/bench/compact_recall.py: 18-65x fewer float32 re-scores for cosine and euclidean).
AUTO_CENTER_AT = (256, 1024, 4096, 16384, 65536)
_ENV = "METAEDGE_MATCHING"


def _method_from_env() -> str:
    method = os.environ.get(_ENV, "").strip().lower() or "auto"
    if method not in MATCHING_METHODS:
        raise ValueError(f"{_ENV}={os.environ.get(_ENV)!r}: expected one of {MATCHING_METHODS}")
    return method


def matching_policy() -> dict:
    """How class matrices are matched on this machine: the CPU variant of the compact pass
    (``avx512-vnni``, ``avx2`` or ``portable``), the default method (``METAEDGE_MATCHING`` overrides "auto")
    and from which float32 matrix size "auto" uses the compact copy."""
    env = os.environ.get(_ENV)
    try:
        default = _method_from_env()
    except ValueError as exc:
        default = f"invalid ({exc})"
    return {"compact_kernel": native().compact_kernel(), "default_method": default,
            "auto_compact_min_bytes": AUTO_COMPACT_MIN_BYTES, "override": f"{_ENV}={env}" if env else None}


def _rows_input(rows, dim: int, what: str) -> np.ndarray:
    if not (type(rows) is np.ndarray and rows.dtype == np.float32 and rows.flags.c_contiguous):
        from metaedge.kernels import _float_input
        rows = _float_input(rows, what)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise ValueError(f"`{what}`: expected shape [n, {dim}] (or [{dim}] for one row), got {list(rows.shape)}")
    for start in range(0, len(rows), 65536):  # (bounded temporary memory for a million rows)
        block = rows[start:start + 65536]
        if not np.isfinite(block).all():
            bad = start + int(np.argmin(np.isfinite(block).all(axis=1)))
            raise ValueError(f"`{what}`: row {bad} contains NaN or Inf (of {len(rows)} rows); nothing was changed")
    return rows


class CompactClassMatrix:
    """A growable ``[C, d]`` float32 class matrix with its int8 compact copy, matched exactly.

    ``CompactClassMatrix(dim, metric)`` starts empty; :meth:`from_rows` builds one from ``[C, d]`` rows.
    ``metric``: ``"cosine"``, ``"dot"`` or ``"euclidean"``, as :func:`metaedge.kernels.topk` takes it.
    ``method``: ``"compact"`` (always the two passes), ``"fp32"`` (always the plain float32 scan; no compact copy
    is kept), or ``"auto"`` (the default; ``METAEDGE_MATCHING`` overrides it): the compact pass once the float32
    rows exceed ``AUTO_COMPACT_MIN_BYTES``. ``capacity``: rows to allocate up front (growth doubles otherwise).
    ``center``: what the codes quantise is each row minus this ``[d]`` vector (for cosine, the unit row minus
    it); results never depend on it, the speed does (a center near the rows' mean leaves little to quantise).
    ``"auto"`` (default): the mean of the classes, taken when their number first reaches 256, 1,024, 4,096,
    16,384 and 65,536 (``AUTO_CENTER_AT``; each time the classes so far are re-encoded, a third more encoding in
    all) and fixed from then on; :meth:`recenter` re-estimates it from all classes at any time.
    ``device``: ``None`` (host memory, the CPU kernels) or a CUDA device (``"cuda"``, ``"cuda:1"`` or an index;
    the arrays live there and the CUDA kernels match; rows still arrive as numpy arrays).

    Changes, each O(d) per class and visible to the next :meth:`topk`: :meth:`add` appends rows (the new classes
    get the next indices), :meth:`replace` overwrites rows in place (e.g. after adaptation), :meth:`remove`
    deletes one class by moving the last class into its index (O(d), so indices of other classes stay put; it
    returns which index moved). Every change increments :attr:`version`. Rows with NaN or Inf are refused and
    change nothing.

    :meth:`topk` returns exactly the float32 top-k: through the compact copy, for each query what
    ``metaedge.kernels.topk(query[None], rows, k, metric)`` returns for that query alone (the same scores bit
    for bit, the same tie order: lower index first); through the float32 scan, what ``kernels.topk(queries,
    rows, k, metric)`` returns (for batches of 10 or more, its blocked-gemm route, whose scores can differ from
    single-query ones in the last bit). On a GPU the candidates of a batch are scored together by the CUDA
    ``topk`` (docs/matching.md). Memory per class: ``4 d`` bytes of float32 rows plus ``d`` (rounded up to 4)
    bytes of codes and 16 bytes of per-row terms (2,576 bytes at d = 512), plus the unused capacity.

    Thread-safe: changes and matching take one lock, so a match sees the matrix before or after a change,
    never half of one.
    """

    def __init__(self, dim: int, metric: str = "cosine", *, method: str | None = None, capacity: int = 0,
                 center="auto", device=None):
        from metaedge.kernels import METRICS
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"`dim`: expected a positive int, got {dim!r}")
        if metric not in METRICS:
            raise ValueError(f"`metric`: expected one of {METRICS}, got {metric!r}")
        method = _method_from_env() if method is None else method
        if method not in MATCHING_METHODS:
            raise ValueError(f"`method`: expected one of {MATCHING_METHODS}, got {method!r}")
        capacity = int(capacity)
        if capacity < 0:
            raise ValueError(f"`capacity`: expected >= 0, got {capacity}")
        self._dim, self._metric, self._method = int(dim), metric, method
        self._count = 0
        self._version = 0
        self._lock = threading.Lock()
        compact = method != "fp32"
        auto_center = isinstance(center, str) and center == "auto"
        fixed = None if auto_center else self._center_input(center)
        if device is None:
            self._store = storage.HostBuffers(self._dim, capacity, metric, compact)
        else:
            self._store = storage.DeviceBuffers(self._dim, capacity, metric, compact, _device_index(device))
        self._center = np.zeros(self._dim, np.float32)
        self._auto_center = auto_center and compact  # re-estimated at the sizes of AUTO_CENTER_AT
        if fixed is not None:
            self._set_center(fixed)

    def _center_input(self, center) -> np.ndarray:
        from metaedge.kernels import _float_input
        center = _float_input(center, "center")
        if center.shape != (self._dim,):
            raise ValueError(f"`center`: expected \"auto\" or shape [{self._dim}], got {list(center.shape)}")
        if not np.isfinite(center).all():
            raise ValueError("`center`: contains NaN or Inf")
        return center.copy()

    def _set_center(self, center: np.ndarray) -> None:
        self._center = center
        if self._store.compact:
            self._store.set_center(center, self._count)

    def _scored_sum(self, rows: np.ndarray) -> np.ndarray:
        """Sum (float64) of the rows the codes approximate: the rows, or for cosine the unit rows."""
        total = np.zeros(self._dim, np.float64)
        for start in range(0, len(rows), 16384):  # (bounded temporary memory)
            x = np.asarray(rows[start:start + 16384], np.float64)
            if self._metric == "cosine":
                norms = np.linalg.norm(x, axis=1, keepdims=True)
                x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
            total += x.sum(axis=0)
        return total

    def _stored_sum(self, stop: int) -> np.ndarray:
        total = np.zeros(self._dim, np.float64)
        for start in range(0, stop, 65536):
            total += self._scored_sum(self._store.host_rows(start, min(stop, start + 65536)))
        return total

    @classmethod
    def from_rows(cls, rows, metric: str = "cosine", *, method: str | None = None, capacity: int | None = None,
                  center="auto", device=None) -> "CompactClassMatrix":
        """A matrix holding ``rows[C, d]`` (a numpy array) as classes ``0 .. C-1`` (the same as adding them)."""
        from metaedge.kernels import _float_input
        rows = _float_input(rows, "rows")
        if rows.ndim != 2:
            raise ValueError(f"`rows`: expected a 2-d array [C, d], got shape {list(rows.shape)}")
        matrix = cls(rows.shape[1], metric, method=method, capacity=max(capacity or 0, rows.shape[0]), center=center,
                     device=device)
        if len(rows):
            matrix.add(rows)
        return matrix

    def _ensure_capacity(self, needed: int) -> None:
        if needed > self._store.capacity:
            self._store = self._store.grown(max(needed, 2 * self._store.capacity, storage.LANES), self._count)

    def reserve(self, capacity: int) -> None:
        """Allocate room for ``capacity`` classes now (adds up to it then never copy the matrix)."""
        with self._lock:
            self._ensure_capacity(int(capacity))

    # ------------------------------------------------------------------ changes
    def add(self, rows) -> np.ndarray:
        """Append ``rows[n, d]`` (or one ``[d]`` row) as new classes; returns their indices ``[n]``."""
        rows = _rows_input(rows, self._dim, "rows")
        with self._lock:
            first = self._count
            self._ensure_capacity(first + len(rows))
            crossed = [n for n in AUTO_CENTER_AT if first < n <= first + len(rows)] if self._auto_center else []
            if crossed:
                # The mean of the first `at` classes; only the classes already there are re-encoded (the new
                # ones are encoded once, with it).
                at = crossed[-1]
                total = self._stored_sum(first) + self._scored_sum(rows[:at - first])
                self._set_center((total / at).astype(np.float32))
            self._store.append(first, rows)
            self._count += len(rows)
            self._version += 1
            return np.arange(first, first + len(rows), dtype=np.int64)

    def replace(self, indices, rows) -> None:
        """Overwrite the rows of classes ``indices`` (an int or ``[n]`` ints) with ``rows`` (``[d]`` or
        ``[n, d]``), e.g. a class enrolled with more shots or adapted; the compact copy follows."""
        rows = _rows_input(rows, self._dim, "rows")
        idx = np.atleast_1d(np.asarray(indices))
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise TypeError(f"`indices`: expected an int or a 1-d array of ints, got {indices!r}")
        if len(idx) != len(rows):
            raise ValueError(f"`indices`: {len(idx)} indices for {len(rows)} rows")
        if len(np.unique(idx)) != len(idx):
            raise ValueError("`indices`: an index appears twice")
        with self._lock:
            if len(idx) and (idx.min() < 0 or idx.max() >= self._count):
                raise IndexError(f"`indices`: expected class indices in [0, {self._count}), got {idx.tolist()}")
            self._store.write(idx.astype(np.int64), rows)
            self._version += 1

    def remove(self, index: int) -> int | None:
        """Delete class ``index``: the last class moves into its place (O(d); no other index changes).
        Returns the old index of the class that moved (``None`` when the last class itself was removed)."""
        index = int(index)
        with self._lock:
            if not 0 <= index < self._count:
                raise IndexError(f"`index`: expected a class index in [0, {self._count}), got {index}")
            last = self._count - 1
            moved = None
            if index != last:
                self._store.move(last, index)
                moved = last
            self._store.clear(np.array([last], np.int64))  # back to an empty slot
            self._count = last
            self._version += 1
            return moved

    def recenter(self, center=None) -> None:
        """Set the center to ``center`` (a ``[d]`` array), or by default to the mean of all current classes, and
        re-encode every class with it: O(C d), for a gallery whose classes drifted far from the first ones."""
        with self._lock:
            if center is None:
                if self._count == 0:
                    raise ValueError("recenter(): no classes to take the mean of (pass a center)")
                center = (self._stored_sum(self._count) / self._count).astype(np.float32)
            else:
                center = self._center_input(center)
            self._set_center(center)
            self._auto_center = False  # (a center set on purpose stays)
            self._version += 1

    @property
    def center(self) -> np.ndarray:
        """The ``[d]`` center the codes are taken relative to (a copy; zeros until one is set)."""
        return self._center.copy()

    def clear(self) -> None:
        """Remove every class (the capacity and the center are kept)."""
        with self._lock:
            self._store.clear(np.arange(self._count, dtype=np.int64))
            self._count = 0
            self._version += 1

    # ------------------------------------------------------------------ reading
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def method(self) -> str:
        """The method asked for: ``"auto"``, ``"compact"`` or ``"fp32"``."""
        return self._method

    @property
    def device(self) -> int | None:
        """The CUDA device index holding the arrays, or ``None`` for host memory."""
        return self._store.device

    @property
    def active_method(self) -> str:
        """What :meth:`topk` uses at the current size: ``"compact"`` or ``"fp32"``."""
        return self._active(self._count)

    def _active(self, count: int) -> str:
        if self._method == "auto":
            return "compact" if count * self._dim * 4 >= AUTO_COMPACT_MIN_BYTES else "fp32"
        return self._method

    @property
    def version(self) -> int:
        """Incremented by every change."""
        return self._version

    @property
    def num_classes(self) -> int:
        return self._count

    def __len__(self) -> int:
        return self._count

    @property
    def capacity(self) -> int:
        return self._store.capacity

    @property
    def rows(self):
        """The ``[C, d]`` float32 rows: a read-only numpy view (host) or a DeviceArray view (GPU). It stays
        valid, but a later change may or may not show in it: copy it to keep it."""
        return self._store.view(self._count)

    @property
    def nbytes(self) -> int:
        """Bytes held, unused capacity included."""
        return self._store.nbytes

    @property
    def bytes_per_class(self) -> int:
        """Bytes one class takes: float32 row + codes + per-row terms (capacity aside)."""
        compact = self._store.steps * storage.STEP + storage.META_FIELDS * 4 if self._store.compact else 0
        return self._dim * 4 + compact

    def topk(self, queries, k: int = 1):
        """The ``k`` best classes of each of ``queries[b, d]`` (or one ``[d]`` query): ``(scores[b, k] float32,
        indices[b, k] int64)``, scores descending, ties to the lower index (``[k]`` each for one query).
        ``1 <= k <= C``; NaN/Inf queries raise ValueError. On a GPU matrix, CUDA queries give DeviceArrays."""
        scores, indices, _ = self.topk_with_stats(queries, k)
        return scores, indices

    def topk_with_stats(self, queries, k: int = 1):
        """:meth:`topk` plus ``fp32_rows[b]`` (int64): how many float32 rows each query was scored against
        (the candidates the compact pass could not rule out; ``C`` for a full float32 scan)."""
        queries, single, to_host = self._store.queries(queries)
        k = _integer_k(k)
        with self._lock:
            result = self._topk_locked(queries, k, to_host)
        return tuple(a[0] for a in result) if single else result

    def topk_at_version(self, version: int, queries, k: int = 1):
        """:meth:`topk` if the matrix is still at ``version``, else ``None`` (for a caller that pairs results
        with labels read at that version, e.g. a gallery snapshot: it then scores its own rows instead)."""
        queries, single, to_host = self._store.queries(queries)
        k = _integer_k(k)
        with self._lock:
            if self._version != version:
                return None
            scores, indices, _ = self._topk_locked(queries, k, to_host)
        return (scores[0], indices[0]) if single else (scores, indices)

    def _topk_locked(self, queries, k: int, to_host: bool):
        if self._count == 0:
            raise ValueError("topk: the class matrix has no classes yet (add rows first)")
        use_compact = self._active(self._count) == "compact"
        return self._store.topk(queries, self._count, k, use_compact, to_host)

    def __repr__(self) -> str:
        where = "" if self.device is None else f", device=cuda:{self.device}"
        return (f"CompactClassMatrix({self._count} classes x {self._dim}, metric={self._metric!r}, "
                f"method={self._method!r} -> {self.active_method}{where})")


def _integer_k(k) -> int:
    try:
        return operator.index(k)
    except TypeError:
        raise TypeError(f"`k`: expected an integer, got {type(k).__name__} {k!r}") from None


def _device_index(device) -> int:
    """"cuda", "cuda:N" or N -> N (CUDA must be usable: the error says why not)."""
    from metaedge import cuda
    named = isinstance(device, str) and (device == "cuda" or device.startswith("cuda:"))
    if not named and not (isinstance(device, (int, np.integer)) and not isinstance(device, bool)):
        raise ValueError(f"`device`: expected None (host memory), 'cuda', 'cuda:N' or a device index, got {device!r}")
    if not cuda.is_available():
        raise cuda.CudaUnavailableError(f"`device`: {device!r} asked for, but {cuda.why_unavailable()}")
    if named:
        return cuda.current_device() if device == "cuda" else int(device.split(":", 1)[1])
    return int(device)
