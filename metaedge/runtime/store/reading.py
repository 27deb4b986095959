"""How a gallery is read: lock-free, consistent, and never stale by more than one call.

A mixin of :class:`~metaedge.runtime.store.gallery.Gallery` (the class that owns the store, the published
``_state``, the change counter and :meth:`transaction`). Readers compare the change counter with the value they
last saw (one memory read) and, when it moved, load only the classes that changed since their generation (the
audit trail names them); a reader never waits for this process's writer - it answers from the last published
state and catches up at its next call.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from metaedge.runtime.store.audit import AuditEntry, entry_of
from metaedge.runtime.store.db import MAX_IDS_PER_QUERY
from metaedge.runtime.store.errors import STORE_ERRORS, GalleryWriteError, from_sqlite_error
from metaedge.runtime.store.labels import nfc
from metaedge.runtime.store.matching import CompactMatching
from metaedge.runtime.store.matrix import ClassMatrix, readonly
from metaedge.runtime.store.state import ClassInfo, ClassRecord, State

__all__ = ["Reads", "TrainingSet"]

_FULL_RELOAD_FRACTION = 8   # more changed classes than 1/8 of the gallery (or than a query takes): reload all


@dataclass(frozen=True)
class TrainingSet:
    """What ``adapt`` trains on, read in one consistent step: per class (uid order = ``labels`` order) the
    prototype, and the support embeddings with their class index."""
    version: int
    uids: np.ndarray            # int64 [C]
    labels: tuple[str, ...]
    prototypes: np.ndarray      # float32 [C, d]
    support: np.ndarray         # float32 [M, d]
    support_labels: np.ndarray  # int64 [M]


class Reads:
    """The reading API of a gallery (see the module docstring)."""

    def _current(self) -> State:
        s = self._state
        ch = self._changes
        if ch is not None and ch[0] != self._seen:
            s = self._catch_up(s)
        return s

    def _view(self) -> State:
        """The state this thread sees: its own uncommitted changes inside its transaction, else the latest."""
        if self._work is not None and self._owner == threading.get_ident():
            return self._work
        return self._current()

    def snapshot(self) -> ClassMatrix:
        """The current classes as one immutable ``ClassMatrix`` (what ``predict`` uses). Changes committed by
        other processes are loaded first (the check is one memory read when nothing changed)."""
        s = self._state
        if self._changes is not None and self._changes[0] != self._seen:
            s = self._catch_up(s)
        m = s.matrix
        if m is None:
            m = s.snapshot()
            if self._matching is None:
                self._matching = CompactMatching(self.metric, self.embedding_dim, self.matching)
            self._matching.method = self.matching
            self._matching.bind(s, m)  # large galleries: scored through the compact copy, kept in step
        return m

    def refresh(self) -> None:
        """Catch up with the store now (waiting for this process's own change in progress, if any)."""
        with self._lock:
            if self._closed or self._depth:
                return
            self._catch_up(self._state, blocking=True, force=True)

    def _catch_up(self, s: State, blocking: bool = False, force: bool = False) -> State:
        if not self._lock.acquire(blocking=blocking):
            return s  # this process is changing the gallery: its commit publishes everything
        try:
            if self._depth or self._closed:
                return self._state
            seen = self._changes[0] if self._changes is not None else -1
            if seen == self._seen and not force:
                return self._state
            store = self._store
            try:
                store.begin_read()
                try:
                    new = self._sync(self._state)
                finally:
                    store.rollback()
            except STORE_ERRORS as exc:
                err = from_sqlite_error(exc, self.path or ":memory:", "reading the latest changes")
                if isinstance(err, GalleryWriteError):  # busy/locked: keep the last state, retry next call
                    return self._state
                raise err from None
            self._seen = seen
            self._state = new
            return new
        finally:
            self._lock.release()

    def _sync(self, s: State) -> State:
        """``s`` brought up to the store's generation (called inside a read or write transaction)."""
        store = self._store
        gen = store.generation()
        if gen == s.generation:
            return s
        if gen < s.generation:  # the file went back (a restored backup): start over
            return self._load_state()
        uids, kinds = store.changes_since(s.generation)
        if "wide" in kinds or len(uids) > min(MAX_IDS_PER_QUERY, max(64, len(s) // _FULL_RELOAD_FRACTION)):
            return self._load_state()
        s.share()
        if "settings" in kinds:
            meta = store.meta()
            self._apply_meta(meta)
            s = s.with_settings(gen, thresholds=meta.thresholds, adaptation=meta.adaptation)
        if uids:
            labels, ids, rec, protos, adapted = store.load_classes(uids)
            if adapted is not None and s.adapted is None or (adapted is None and s.adapted is not None and len(rec)):
                return self._load_state()
            gone = uids - set(ids.tolist())
            if gone:
                s = s.without(gone, gen)
            # read in one transaction, the rows are the store's: labels stay unique (the store's constraint)
            records = [ClassRecord(int(ids[i]), labels[i], int(r["shots"]), protos[i], float(r["enrolled_at"]),
                                   float(r["updated_at"]), None if adapted is None else adapted[i], bool(r["fresh"]),
                                   int(r["support"]), int(r["vector_gen"])) for i, r in enumerate(rec)]
            s = s.upsert(records, gen)
        return s.with_generation(gen)

    @property
    def labels(self) -> list[str]:
        return list(self._view().names)

    def __len__(self) -> int:
        return len(self._view().names)

    def __contains__(self, label) -> bool:
        return self._view().find(label) is not None

    def __repr__(self) -> str:
        where = "in memory" if self.path is None else repr(self.path)
        mode = ", read-only" if self.readonly else ""
        return (f"Gallery({len(self)} classes, dim={self.embedding_dim}, metric={self.metric!r}, "
                f"adapted={self.adapted}, {where}{mode})")

    @property
    def version(self) -> int:
        """Increases with every change, in any process (the store's generation)."""
        return self._view().generation

    @property
    def adapted(self) -> bool:
        return self._view().adapted is not None

    @property
    def adaptation(self) -> dict | None:
        a = self._view().adaptation
        return dict(a) if a else None

    @property
    def thresholds(self) -> dict:
        return dict(self._view().thresholds)

    def prototypes(self) -> np.ndarray:
        """Read-only ``[C, d]`` class means of the raw embeddings (class order = ``labels``)."""
        return readonly(self._view().protos)

    def counts(self) -> np.ndarray:
        return readonly(self._view().rec["shots"])

    def adapted_weights(self) -> np.ndarray | None:
        s = self._view()
        return None if s.adapted is None else readonly(s.adapted)

    def classes(self) -> list[ClassInfo]:
        s = self._view()
        return [s.info(i) for i in range(len(s))]

    def class_info(self, label: str) -> ClassInfo:
        """One class's ``ClassInfo`` (UnknownLabelError if it is not enrolled)."""
        s = self._view()
        return s.info(s.index(label))

    def training_set(self) -> TrainingSet:
        """Prototypes and support embeddings of every class, read consistently (for ``adapt``)."""
        with self._reading() as s:
            support = self._store.load_support(None, self.support_cap)
            parts = [support.get(int(u), np.zeros((0, self.embedding_dim), np.float32)) for u in s.uids]
            uids = np.array(s.uids, np.int64)
            protos = np.array(s.protos, np.float32)
            names = s.names
            version = s.generation
        if parts:
            sup = np.ascontiguousarray(np.concatenate(parts), np.float32)
            lab = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(parts)])
        else:
            sup, lab = np.zeros((0, self.embedding_dim), np.float32), np.zeros(0, np.int64)
        return TrainingSet(version, uids, names, protos, sup, lab)

    def support_set(self) -> tuple[np.ndarray, np.ndarray]:
        """All stored support embeddings ``[M, d]`` and their class indices ``[M]`` (class order = labels)."""
        t = self.training_set()
        return t.support, t.support_labels

    @contextlib.contextmanager
    def _reading(self) -> Iterator[State]:
        """A state and the store agreeing with each other, for reads that need the store (support, history)."""
        with self._lock:
            self._require_open()
            if self._depth and self._owner == threading.get_ident():
                yield self._work  # inside this thread's transaction: its own view
                return
            store = self._store
            try:
                store.begin_read()
                try:
                    s = self._sync(self._state)
                    self._state = s
                    yield s
                finally:
                    store.rollback()
            except STORE_ERRORS as exc:
                raise from_sqlite_error(exc, self.path or ":memory:", "reading the gallery") from None

    def history(self, label: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """The audit trail, oldest first: every change with its time, operation, label, shots and actor
        (``limit``: only the latest entries; ``label``: only those naming that class)."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"`limit`: expected an int >= 1, got {limit!r}")
        with self._reading():
            rows = self._store.history(label=None if label is None else nfc(label), limit=limit)
        return [entry_of(r) for r in rows]

