"""Gallery: the enrolled classes of a device, shared by any number of processes through one store.

A ``Gallery`` is a view of a store (:mod:`.db`) - a database file, or an in-memory database for galleries
without a path - plus the in-memory :class:`State` readers use without a lock. Every change (``add``,
``remove``, ``rename``, ``set_adapted``, ...) is one write transaction: it catches up with what other
processes committed, computes its rows from that, writes only them, appends to the audit trail, commits
(durably: WAL, ``synchronous=FULL``), then publishes the new state and bumps the change counter
(:mod:`.notify`). :meth:`transaction` groups changes into one. Nothing is lost between processes: a change
never writes rows computed from a stale copy.

Readers - ``snapshot()`` (what ``predict`` scores against), ``labels``, ``classes()``, ... - compare the change
counter with the value they last saw (one memory read) and, when it moved, load the classes that changed
since their generation (the audit trail names them) before answering. A reader never waits for a writer: if
this process is mid-change it answers from the last published state and catches up at the next call.
"""
from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from typing import Iterator

import numpy as np

from metaedge import kernels
from metaedge.runtime.store import files
from metaedge.runtime.store.audit import AuditEntry, default_actor
from metaedge.runtime.store.calibration import OpenSet, load_calibration
from metaedge.runtime.store.changes import Changes
from metaedge.runtime.store.checks import check_settings
from metaedge.runtime.store.db import BUSY_TIMEOUT_S, Meta, Store
from metaedge.runtime.store.errors import (STORE_ERRORS, GalleryCorruptError, GalleryError, GalleryMismatchError,
                                           GalleryReadOnlyError, GalleryWriteError, from_sqlite_error)
from metaedge.runtime.store.matching import CompactMatching
from metaedge.runtime.store.notify import SUFFIX as COUNTER_SUFFIX
from metaedge.runtime.store.notify import ChangeCounter
from metaedge.runtime.store.packs import ClassSet
from metaedge.runtime.store.reading import Reads, TrainingSet
from metaedge.runtime.store.state import State, build_state
from metaedge.runtime.store.transfer import CONFLICT_POLICIES, ImportReport, Transfers, populate_from_legacy

__all__ = ["Gallery", "AuditEntry", "TrainingSet", "ImportReport", "DEFAULT_SUPPORT_CAP", "CONFLICT_POLICIES",
           "default_actor"]

DEFAULT_SUPPORT_CAP = 20


class Gallery(Reads, Changes, OpenSet, Transfers):
    """Enrolled classes (see the module docstring). ``Gallery(dim, ...)`` makes a new one - in memory, or
    with ``path`` a new store file; :meth:`open` opens (or creates) a store, :meth:`load` opens an existing one.

    ``embedding_dim``/``metric``/``fingerprint`` come from the bundle (``fingerprint``: the bundle's
    fingerprint - a gallery only makes sense with the network and pre-processing that produced its embeddings).
    ``support_cap``: embeddings kept per class for ``adapt`` (reservoir sampling seeded by ``seed``).
    ``autosave`` is accepted for compatibility: every change to a store is committed before the call returns.
    """

    def __init__(self, embedding_dim: int, metric: str = "cosine", fingerprint: str | None = None, *,
                 support_cap: int = DEFAULT_SUPPORT_CAP, seed: int = 0, path: str | os.PathLike | None = None,
                 autosave: bool = False):
        if not isinstance(embedding_dim, (int, np.integer)) or isinstance(embedding_dim, bool) or embedding_dim < 1:
            raise ValueError(f"`embedding_dim`: expected a positive int, got {embedding_dim!r}")
        if metric not in kernels.METRICS:
            raise ValueError(f"`metric`: expected one of {kernels.METRICS}, got {metric!r}")
        if not isinstance(support_cap, (int, np.integer)) or isinstance(support_cap, bool) or support_cap < 0:
            raise ValueError(f"`support_cap`: expected an int >= 0, got {support_cap!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
            raise ValueError(f"`seed`: expected an int in [0, 2**63), got {seed!r}")
        if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint):
            raise ValueError(f"`fingerprint`: expected a non-empty str (the bundle's fingerprint), got {fingerprint!r}")
        try:
            check_settings(embedding_dim=int(embedding_dim), metric=metric, support_cap=int(support_cap),
                           seed=int(seed), where="Gallery")
        except GalleryCorruptError as exc:
            raise ValueError(str(exc).replace("Gallery: ", "")) from None
        settings = dict(embedding_dim=int(embedding_dim), metric=metric, fingerprint=fingerprint,
                        support_cap=int(support_cap), seed=int(seed), created_at=time.time())
        if path is None:
            self._setup(self._memory_store(settings), None, None, readonly=False)
        else:
            path = os.fspath(path)
            if not self._create_file(path, settings):
                raise GalleryError(f"{path}: a gallery already exists there; open it with Gallery.open/load")
            self._attach_file(path, readonly=False)
        self.autosave = bool(autosave)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _memory_store(settings: dict, actor: str | None = None) -> Store:
        conn = Store.connect(":memory:")
        Store.initialise(conn, **settings, actor=actor or default_actor())
        store = Store(conn, ":memory:")
        store.meta()
        return store

    @staticmethod
    def _create_file(path: str, settings: dict, fill=None) -> bool:
        """Create a gallery database at ``path`` (False if one appeared there first)."""
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"cannot create the gallery {path!r}: directory {directory!r} does not exist")

        def init(conn):
            Store.initialise(conn, **settings, actor=default_actor())
            if fill is not None:
                fill(conn)
        return files.install(files.new_database(path, init), path)

    def _attach_file(self, path: str, *, readonly: bool, timeout: float = BUSY_TIMEOUT_S) -> None:
        """Open the store at ``path``. A gallery on a read-only mount, or a file this user may not write, opens
        read-only (predictions work; a change is a GalleryWriteError saying why)."""
        why = None if readonly else _not_writable(path)
        store = Store.open(path, readonly=readonly or why is not None, timeout=timeout,
                           immutable=why == errno.EROFS)
        counter = None
        try:
            # realpath: every process must find the same counter, whichever link it opened the gallery through
            real = os.path.realpath(path)
            if why is None and not (readonly and not os.path.exists(real + COUNTER_SUFFIX)):
                counter = ChangeCounter(real, os.stat(path).st_mode & 0o777, writable=not readonly)
            elif why != errno.EROFS and os.path.exists(real + COUNTER_SUFFIX):
                counter = ChangeCounter(real, writable=False)
        except BaseException:
            store.close()
            raise
        self._setup(store, path, counter, readonly=readonly or why is not None)
        self._readonly_errno = why

    def _setup(self, store: Store, path: str | None, counter: ChangeCounter | None, *, readonly: bool,
               legacy: bool = False) -> None:
        self._store = store
        self._counter = counter
        self._changes = None if counter is None else counter.view
        self._seen = -1
        self._lock = threading.RLock()
        self._depth = 0
        self._owner: int | None = None
        self._work: State | None = None
        self._gen = 0
        self._dirty = False
        self._local = threading.local()
        self._closed = False
        self.readonly = readonly
        self._readonly_errno: int | None = None
        self.legacy = legacy
        self.path = path
        self.autosave = True
        self.actor = default_actor()
        # How snapshots are matched: None (METAEDGE_MATCHING, else "auto": the compact int8 copy from 1 MiB of
        # float32 classes), "compact" or "fp32" (see metaedge.compact and runtime/store/matching.py).
        self.matching: str | None = None
        self._matching: CompactMatching | None = None
        try:
            store.begin_read()
            try:
                self._seen = -1 if counter is None else counter.read()
                meta = store.meta()
                self._apply_meta(meta)
                self._state = self._load_state(meta)
            finally:
                store.rollback()
        except STORE_ERRORS as exc:
            store.close()
            raise from_sqlite_error(exc, path or ":memory:", "reading the gallery") from None
        except BaseException:
            store.close()
            raise

    def _apply_meta(self, meta: Meta) -> None:
        self.embedding_dim, self.metric, self.fingerprint = meta.embedding_dim, meta.metric, meta.fingerprint
        self.support_cap, self.seed, self.created_at = meta.support_cap, meta.seed, meta.created_at

    def _load_state(self, meta: Meta | None = None) -> State:
        meta = meta or self._store.meta()
        self._apply_meta(meta)
        labels, uids, rec, protos, adapted = self._store.load_classes()
        if len(set(labels)) != len(labels):
            raise GalleryCorruptError(f"{self.path}: duplicate class labels")
        if meta.next_uid <= (int(uids.max()) if len(uids) else -1):
            raise GalleryCorruptError(f"{self.path}: next_uid {meta.next_uid} is not above every class id")
        return build_state(meta.generation, labels, uids, rec, protos, adapted, meta.adaptation, meta.thresholds,
                           meta.metric)

    @classmethod
    def _from_classset(cls, cs: ClassSet, source: str) -> "Gallery":
        """A read-only in-memory gallery holding an old gallery file's classes."""
        g = cls.__new__(cls)
        settings = dict(embedding_dim=cs.embedding_dim, metric=cs.metric, fingerprint=cs.fingerprint,
                        support_cap=cs.support_cap, seed=cs.seed, created_at=cs.created_at or time.time(),
                        thresholds=cs.thresholds)
        conn = Store.connect(":memory:")
        Store.initialise(conn, **settings, actor=default_actor())
        store = Store(conn, ":memory:")
        store.meta()
        populate_from_legacy(store, cs, source, default_actor())
        g._setup(store, source, None, readonly=True, legacy=True)
        return g

    @classmethod
    def load(cls, path: str | os.PathLike, *, fingerprint: str | None = None, embedding_dim: int | None = None,
             metric: str | None = None, legacy_fingerprints: tuple[str, ...] = (), autosave: bool = False,
             readonly: bool = False) -> "Gallery":
        """Open an existing gallery: a store (read-write unless ``readonly``), or a file of the old format
        (read-only; convert it with :meth:`migrate`). ``fingerprint``/``embedding_dim``/``metric``: what the
        bundle in use says; a gallery made for another bundle is a GalleryMismatchError (see
        :meth:`check_compatible` for ``legacy_fingerprints``). Missing file: FileNotFoundError."""
        path = os.fspath(path)
        if files.kind_of(path) == files.LEGACY:
            from metaedge.runtime.store.legacy import read_legacy
            g = cls._from_classset(read_legacy(path), path)
        else:
            g = cls.__new__(cls)
            g._attach_file(path, readonly=readonly)
        try:
            g.check_compatible(fingerprint=fingerprint, embedding_dim=embedding_dim, metric=metric,
                               legacy_fingerprints=legacy_fingerprints, adopt=True)
        except BaseException:
            g.close()
            raise
        return g

    @classmethod
    def open(cls, path: str | os.PathLike, *, embedding_dim: int, metric: str = "cosine",
             fingerprint: str | None = None, legacy_fingerprints: tuple[str, ...] = (),
             support_cap: int = DEFAULT_SUPPORT_CAP, seed: int = 0, autosave: bool = True,
             readonly: bool = False) -> "Gallery":
        """Open the gallery at ``path`` (checked against the bundle's fingerprint/dim/metric), creating an empty
        store there first if there is none."""
        path = os.fspath(path)
        if not os.path.lexists(path) and not readonly:
            try:
                check_settings(embedding_dim=int(embedding_dim), metric=metric, support_cap=int(support_cap),
                               seed=int(seed), where=path)
            except GalleryCorruptError as exc:
                raise ValueError(str(exc)) from None
            cls._create_file(path, dict(embedding_dim=int(embedding_dim), metric=metric, fingerprint=fingerprint,
                                        support_cap=int(support_cap), seed=int(seed), created_at=time.time()))
        return cls.load(path, fingerprint=fingerprint, embedding_dim=embedding_dim, metric=metric,
                        legacy_fingerprints=legacy_fingerprints, readonly=readonly)

    def check_compatible(self, *, fingerprint: str | None, embedding_dim: int | None, metric: str | None,
                         where: str | None = None, legacy_fingerprints: tuple[str, ...] = (),
                         adopt: bool = False) -> None:
        """GalleryMismatchError unless this gallery was made with the given bundle. A gallery whose recorded
        fingerprint is one of ``legacy_fingerprints`` (what older metaedge recorded for the same bundle: its
        ONNX sha256) is accepted; with ``adopt``, it - and a gallery with no fingerprint - is then stamped
        with ``fingerprint`` (an audited change)."""
        where = where or self.path or "gallery"
        if embedding_dim is not None and int(embedding_dim) != self.embedding_dim:
            raise GalleryMismatchError(
                f"{where}: made for embeddings of dimension {self.embedding_dim}, but this bundle produces "
                f"{embedding_dim} - it belongs to another model; use a new gallery file for this bundle")
        restamp = False
        if fingerprint is not None and self.fingerprint and fingerprint != self.fingerprint:
            if self.fingerprint not in legacy_fingerprints:
                raise GalleryMismatchError(
                    f"{where}: made for another bundle (fingerprint {self.fingerprint[:12]}..., this bundle "
                    f"{fingerprint[:12]}...); its prototypes are meaningless with this network and pre-processing - "
                    f"re-enroll into a new gallery file")
            restamp = True
        if metric is not None and metric != self.metric:
            raise GalleryMismatchError(f"{where}: made for metric {self.metric!r}, this bundle uses {metric!r}")
        if adopt and fingerprint is not None and (restamp or not self.fingerprint):
            self._stamp_fingerprint(fingerprint)

    def _stamp_fingerprint(self, fingerprint: str) -> None:
        old = self.fingerprint
        if self.readonly:
            self.fingerprint = fingerprint  # recorded when the gallery is converted
            return
        with self.transaction():
            self._store.set_meta(bundle_fingerprint=fingerprint)
            self._audit("fingerprint", detail={"from": old, "to": fingerprint})
            self._dirty = True
        self.fingerprint = fingerprint

    # ------------------------------------------------------------------ who changes
    @contextlib.contextmanager
    def acting_as(self, actor: str) -> Iterator["Gallery"]:
        """Attribute the changes this thread makes inside the block to ``actor`` (e.g. a server's token name)."""
        if not isinstance(actor, str) or not actor.strip():
            raise ValueError(f"`actor`: expected a non-empty str, got {actor!r}")
        before = getattr(self._local, "actor", None)
        self._local.actor = actor
        try:
            yield self
        finally:
            self._local.actor = before

    def current_actor(self) -> str:
        return getattr(self._local, "actor", None) or self.actor

    # ------------------------------------------------------------------ changing
    def _require_open(self) -> None:
        if self._closed:
            raise GalleryError(f"gallery {self.path or '(in memory)'} is closed")

    def _require_writable(self) -> None:
        self._require_open()
        if self.legacy:
            raise GalleryReadOnlyError(
                f"{self.path}: a gallery file of the old format (schema 1), opened read-only; convert it to the "
                f"shared store with `metaedge classes migrate {self.path}` (a backup of the old file is kept)")
        if self._readonly_errno is not None:
            reason = ("is on a read-only file system" if self._readonly_errno == errno.EROFS
                      else "is not writable by this user")
            raise GalleryWriteError(self._readonly_errno, f"{self.path}: the gallery {reason}; nothing was changed",
                                    self.path)
        if self.readonly:
            raise GalleryReadOnlyError(f"{self.path}: opened read-only")

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Gallery"]:
        """Group changes into one store transaction: all are committed together (one version step, one
        durable commit) or none (any exception rolls them back). Other processes' changes wait for it;
        readers see the state before it until it commits."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._require_writable()
            store = self._store
            where = self.path or ":memory:"
            self._depth, self._owner, self._dirty = 1, threading.get_ident(), False
            committed = False
            try:
                try:
                    seen = self._changes[0] if self._changes is not None else -1
                    store.begin_write()
                    base = self._sync(self._state).share()
                except STORE_ERRORS as exc:
                    raise from_sqlite_error(exc, where, "starting a change") from None
                self._work, self._gen = base, base.generation + 1
                try:
                    yield self
                except STORE_ERRORS as exc:
                    raise from_sqlite_error(exc, where, "writing the change") from None
                if self._dirty:
                    try:
                        store.set_meta(generation=self._gen)
                        store.commit()
                    except STORE_ERRORS as exc:
                        raise from_sqlite_error(exc, where, "committing the change") from None
                    committed = True
                    new = self._work.with_generation(self._gen)
                else:
                    store.rollback()
                    new = base
                self._state = new
                if committed and self._counter is not None:
                    bumped = self._counter.bump()
                    self._seen = bumped if bumped == (seen + 1) & 0xFFFFFFFFFFFFFFFF else seen
                elif self._changes is not None and base is not self._state:
                    self._seen = seen
            except BaseException:
                if not committed:
                    with contextlib.suppress(*STORE_ERRORS):
                        store.rollback()
                raise
            finally:
                self._work, self._owner, self._depth = None, None, 0

    def check(self) -> list[str]:
        """Read every page and row of the store and verify it (SQLite's integrity check, every class's and
        support memory's checksum and ranges): the problems found, or an empty list."""
        problems: list[str] = []
        with self._reading():
            try:
                problems += self._store.integrity()
                self._store.meta()
                self._store.load_classes()
                self._store.load_support(None, self.support_cap)
                load_calibration(self._store)
                self._store.history()
            except GalleryError as exc:
                problems.append(str(exc))
        return problems

    def close(self) -> None:
        """Release the store (idempotent). Reads of the last state still work; changes raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._changes = None
            with contextlib.suppress(*STORE_ERRORS):
                self._store.close()
            if self._counter is not None:
                self._counter.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _not_writable(path: str) -> int | None:
    """EROFS when ``path`` is on a read-only mount, EACCES when this user may not write it or its directory (where
    SQLite keeps its -wal and -shm files), else None."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        if os.statvfs(directory).f_flag & getattr(os, "ST_RDONLY", 1):
            return errno.EROFS
    except OSError:
        pass
    if not os.access(path, os.W_OK) or not os.access(directory, os.W_OK | os.X_OK):
        return errno.EACCES
    return None
