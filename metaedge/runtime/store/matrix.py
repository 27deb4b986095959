"""The scoring snapshot (:class:`ClassMatrix`) and the copy-on-write row storage behind it (:class:`Rows`)."""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from metaedge import kernels

__all__ = ["ClassMatrix", "Rows", "LabelRows", "readonly"]


def readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


@dataclass(frozen=True)
class ClassMatrix:
    """What ``predict`` scores against: one consistent, read-only view of the classes.

    ``weights[C, d]`` are the prototypes (``metric`` = the bundle's) or, after ``adapt``, the adapted cosine
    head (``metric`` = ``"cosine"``). Never modified after creation; changes publish a new one. ``version`` is
    the gallery's version (its store generation) it shows.
    """
    labels: tuple[str, ...]
    kernel_weights: np.ndarray  # what the kernels read; never written (the native bindings need writable memory)
    metric: str
    adapted: bool
    version: int
    _device: dict = field(default_factory=dict, repr=False, compare=False)
    _device_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # predict's per-frame top-k once the matcher exists (an attribute, the cheapest lookup); None before it does:
    # call first_host_topk then.
    host_topk: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = field(
        default=None, init=False, repr=False, compare=False)
    _scored_once: bool = field(default=False, init=False, repr=False, compare=False)
    # The gallery's compact class matrix this snapshot scores through (large galleries; see store/matching.py),
    # or None: the float32 matcher.
    compact: Any = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def weights(self) -> np.ndarray:
        """Read-only ``[C, d]`` view of the class weights."""
        return readonly(self.kernel_weights)

    def topk(self, queries, k: int):
        """``kernels.topk`` of host queries (any float dtype) against this snapshot."""
        return kernels.topk(queries, self.kernel_weights, k, self.metric)

    @functools.cached_property
    def matcher(self) -> "kernels.PrototypeMatcher":
        """The CPU top-k of this snapshot with its packed copy of the weights, built on first use."""
        return kernels.PrototypeMatcher(self.kernel_weights, self.metric, copy=False)

    def first_host_topk(self, queries: np.ndarray, k: int):
        """predict's per-frame top-k (C-contiguous float32 host queries ``[b, d]``) until :attr:`host_topk` is set:
        the first call on a snapshot is a plain ``kernels.topk``; the second builds the :attr:`matcher` and sets
        ``host_topk`` to it for every later call. Packing costs about as much as a few plain calls, so a
        snapshot that serves a single frame (an enroll between every frame) never pays for it."""
        if not self._scored_once:
            object.__setattr__(self, "_scored_once", True)
            return self.topk(queries, k)
        topk = self.matcher.topk_float32  # (bound to the native matcher, not to this snapshot: no cycle)
        object.__setattr__(self, "host_topk", topk)
        return topk(queries, k)

    def device_weights(self):
        """The weights as a CUDA DeviceArray, uploaded once per snapshot (for the GPU top-k path)."""
        with self._device_lock:
            if "weights" not in self._device:
                from metaedge import cuda
                self._device["weights"] = cuda.DeviceArray.from_numpy(np.ascontiguousarray(self.kernel_weights))
            return self._device["weights"]


class Rows:
    """Growable storage of per-class rows (``[capacity, ...]``) under copy-on-write views.

    Appending writes past the end of the views earlier states and published snapshots hold, so it needs no
    copy. Rewriting a row copies the buffer once it has been ``shared`` (a snapshot or a read-only view was
    handed out, or a transaction keeps the old state to roll back to); later rewrites of the fresh copy are
    in place - so a transaction that changes many classes copies once, not once per class.
    """
    __slots__ = ("buf", "used", "shared")

    def __init__(self, buf: np.ndarray, used: int):
        self.buf, self.used, self.shared = buf, used, False

    @staticmethod
    def room(n: int) -> int:
        """Rows to allocate for ``n``: spare room for the classes enrolled next (an eighth, at least 16)."""
        return n + max(16, n // 8)

    @staticmethod
    def fresh(rows: np.ndarray, capacity: int | None = None) -> tuple[np.ndarray, "Rows"]:
        n = rows.shape[0]
        cap = max(capacity or 0, Rows.room(n))
        buf = np.empty((cap, *rows.shape[1:]), rows.dtype)
        buf[:n] = rows
        return buf[:n], Rows(buf, n)

    @staticmethod
    def append(view: np.ndarray, owner: "Rows | None", rows: np.ndarray) -> tuple[np.ndarray, "Rows"]:
        n, m = view.shape[0], rows.shape[0]
        if owner is not None and owner.used == n and n + m <= owner.buf.shape[0] and view.base is owner.buf:
            owner.buf[n:n + m] = rows
            owner.used = n + m
            return owner.buf[:n + m], owner
        buf = np.empty((Rows.room(n + m), *view.shape[1:]), view.dtype)  # one copy into a larger buffer
        buf[:n] = view
        buf[n:n + m] = rows
        return buf[:n + m], Rows(buf, n + m)

    @staticmethod
    def writable(view: np.ndarray, owner: "Rows | None") -> tuple[np.ndarray, "Rows"]:
        """``view`` itself when nobody else can see its buffer, else a private copy (to rewrite rows of)."""
        if owner is not None and not owner.shared and view.base is owner.buf and owner.used == view.shape[0]:
            return view, owner
        return Rows.fresh(view, capacity=owner.buf.shape[0] if owner is not None else None)


class LabelRows:
    """The labels of :class:`Rows`' classes: a list shared by states, each seeing its first ``count`` items.
    Appending needs no copy while no later state appended; rewriting a label copies once per batch."""
    __slots__ = ("items", "shared")

    def __init__(self, items: list):
        self.items, self.shared = items, False

    @staticmethod
    def append(owner: "LabelRows", count: int, label: str) -> "LabelRows":
        if len(owner.items) == count:
            owner.items.append(label)
            return owner
        return LabelRows(owner.items[:count] + [label])

    @staticmethod
    def writable(owner: "LabelRows", count: int) -> "LabelRows":
        if not owner.shared and len(owner.items) == count:
            return owner
        return LabelRows(owner.items[:count])
