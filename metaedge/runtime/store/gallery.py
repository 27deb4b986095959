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
import getpass
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from metaedge import kernels
from metaedge.runtime.fileio import atomic_write
from metaedge.runtime.store import files
from metaedge.runtime.store.db import (BUSY_TIMEOUT_S, MAX_IDS_PER_QUERY, MAX_SHOTS, MAX_TIME, AuditRow, Meta, Store,
                                       check_settings)
from metaedge.runtime.store.errors import (STORE_ERRORS, GalleryCorruptError, GalleryError, GalleryMismatchError,
                                           GalleryReadOnlyError, GalleryWriteError, LabelConflictError,
                                           UnknownLabelError, from_sqlite_error)
from metaedge.runtime.store.labels import check_label, nfc
from metaedge.runtime.store.matrix import ClassMatrix, readonly
from metaedge.runtime.store.notify import SUFFIX as COUNTER_SUFFIX
from metaedge.runtime.store.notify import ChangeCounter
from metaedge.runtime.store.packs import ClassSet, pack_bytes, read_pack
from metaedge.runtime.store.state import (ClassInfo, ClassRecord, State, build_state, empty_state, imprint,
                                          reservoir)

__all__ = ["Gallery", "AuditEntry", "TrainingSet", "ImportReport", "DEFAULT_SUPPORT_CAP", "CONFLICT_POLICIES",
           "default_actor"]

DEFAULT_SUPPORT_CAP = 20
CONFLICT_POLICIES = ("fail", "skip", "replace", "merge")
_FULL_RELOAD_FRACTION = 8   # more changed classes than 1/8 of the gallery (or than a query takes): reload all


def default_actor() -> str:
    """Who makes changes from this process, for the audit trail: ``user@host (program, pid N)``."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers): the numeric id
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "?"
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"{user}@{socket.gethostname()} ({program}, pid {os.getpid()})"


@dataclass(frozen=True)
class AuditEntry:
    """One change in a gallery's history: when, what, which class, how many shots, who."""
    seq: int
    version: int            # the gallery version the change produced (several entries share one transaction's)
    at: float               # Unix time
    op: str                 # enroll, forget, rename, adapt, reset_adaptation, threshold, clear, import, migrate, ...
    label: str | None
    uid: int | None         # the class's id (it survives renames)
    shots: int | None       # images enrolled (enroll), shots the class had (forget), imported (import)
    actor: str              # the process/user, or the server's token name
    detail: dict | None

    def to_dict(self) -> dict:
        import datetime as _dt
        return {"seq": self.seq, "version": self.version, "at": _dt.datetime.fromtimestamp(
            self.at, _dt.timezone.utc).isoformat(), "op": self.op, "label": self.label, "uid": self.uid,
            "shots": self.shots, "actor": self.actor, "detail": self.detail}


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


@dataclass(frozen=True)
class ImportReport:
    added: list[str]
    replaced: list[str]
    merged: list[str]
    skipped: list[str]          # conflicts left as they were (policy "skip")
    unchanged: list[str]        # identical to the class already here

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _check_time(now, what: str = "now") -> float:
    try:
        v = float(now)
    except (TypeError, ValueError):
        raise TypeError(f"`{what}`: expected a number (Unix time), got {type(now).__name__}") from None
    if not np.isfinite(v) or not 0 <= v <= MAX_TIME:
        raise ValueError(f"`{what}`: expected a Unix time in [0, {MAX_TIME:.0f}], got {now!r}")
    return v


class Gallery:
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
            if why is None:
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

    # ------------------------------------------------------------------ reading (lock-free, consistent)
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
        return m if m is not None else s.snapshot()

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
        return [_entry(r) for r in rows]

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

    def _audit(self, op: str, **fields) -> None:
        self._store.record(self._gen, time.time(), op, self.current_actor(), **fields)

    def _changed(self, state: State) -> None:
        self._work, self._dirty = state, True

    def _check_embeddings(self, emb, what: str = "embeddings") -> np.ndarray:
        if not isinstance(emb, np.ndarray):
            raise TypeError(f"`{what}`: expected a numpy array [n, {self.embedding_dim}], got {type(emb).__name__}")
        if emb.dtype.kind != "f":
            raise TypeError(f"`{what}`: expected float embeddings, got dtype {emb.dtype}")
        if emb.ndim == 1:
            emb = emb[None]
        if emb.ndim != 2 or emb.shape[1] != self.embedding_dim:
            raise ValueError(f"`{what}`: expected shape [n, {self.embedding_dim}], got {list(emb.shape)}")
        if emb.shape[0] == 0:
            raise ValueError(f"`{what}`: expected at least one embedding, got 0")
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if not emb.flags.writeable:  # the native bindings only take writable buffers
            emb = emb.copy()
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            raise ValueError(f"`{what}`: row {int(np.argmax(bad))} contains NaN or Inf (of {len(emb)} rows); "
                             f"the gallery was not changed")
        return emb

    def _find_uid(self, label) -> int:
        uid = self._store.uid_of(nfc(label)) if isinstance(label, str) else None
        if uid is None:
            raise UnknownLabelError(f"no class {label!r} in the gallery")
        return uid

    def add(self, label: str, embeddings: np.ndarray, *, now: float | None = None) -> bool:
        """Enroll embeddings ``[n, d]`` under ``label``: a new class, or more shots of an existing one
        (exact running mean). Returns True if the class is new. Bad input changes nothing."""
        label = check_label(label)
        emb = self._check_embeddings(embeddings)
        now = time.time() if now is None else _check_time(now)
        with self.transaction():
            s, store, gen, cap, d = self._work, self._store, self._gen, self.support_cap, self.embedding_dim
            uid = store.uid_of(label)
            if uid is not None:
                i = s.position(uid)
                old = s.record(i)
                total = old.shots + len(emb)
                if total > MAX_SHOTS:
                    raise ValueError(f"class {label!r} would have {total} shots, more than {MAX_SHOTS}")
                proto, counts = old.prototype[None].copy(), np.array([old.shots], np.int64)
                kernels.update_prototypes(proto, counts, emb, np.zeros(len(emb), np.int64))
                support = reservoir(store.support_of(uid, cap), emb, old.shots, uid, cap, self.seed, d)
                rec = ClassRecord(uid, label, total, proto[0], old.enrolled_at, now,
                                  None if s.adapted is None else imprint(proto[0]), False, len(support), gen)
                new = False
            else:
                uid = store.take_uid()
                proto, count = kernels.class_prototypes(emb, np.zeros(len(emb), np.int64), 1)
                support = reservoir(None, emb, 0, uid, cap, self.seed, d)
                rec = ClassRecord(uid, label, int(count[0]), proto[0], now, now,
                                  None if s.adapted is None else imprint(proto[0]), False, len(support), gen)
                new = True
            store.write_class(rec, gen, new=new)
            store.write_support(uid, support)
            self._audit("enroll", label=label, uid=uid, shots=len(emb),
                        detail={"new_class": new, "total_shots": rec.shots})
            self._changed(s.upsert([rec], gen))
            return new

    def remove(self, label: str) -> None:
        """Forget a class (its prototype, support memory and adapted row)."""
        with self.transaction():
            s, store = self._work, self._store
            uid = self._find_uid(label)
            i = s.position(uid)
            store.delete_class(uid)
            if s.adapted is not None and len(s) == 1:
                store.set_meta(adaptation=None)
            self._audit("forget", label=s.label(i), uid=uid, shots=int(s.rec[i]["shots"]))
            self._changed(s.without({uid}, self._gen))

    def rename(self, old: str, new: str) -> None:
        new = check_label(new, "new")
        with self.transaction():
            s, store = self._work, self._store
            uid = self._find_uid(old)
            i = s.position(uid)
            if new == s.label(i):
                return
            if store.uid_of(new) is not None:
                raise ValueError(f"`new`: a class {new!r} already exists (forget it first, or enroll its images "
                                 f"under {old!r})")
            r = s.record(i)
            rec = ClassRecord(uid, new, r.shots, r.prototype, r.enrolled_at, r.updated_at, r.adapted, r.fresh,
                              r.support, r.vector_gen)
            store.write_class(rec, self._gen, new=False)
            self._audit("rename", label=new, uid=uid, detail={"from": s.label(i)})
            self._changed(s.upsert([rec], self._gen))

    def clear(self) -> None:
        """Forget every class (settings such as support_cap and thresholds are kept)."""
        with self.transaction():
            s = self._work
            if len(s) == 0:
                return
            self._store.delete_all()
            self._store.set_meta(adaptation=None)
            self._audit("clear", detail={"classes": len(s)})
            self._changed(empty_state(self.embedding_dim, self.metric, self._gen, s.thresholds))

    def set_adapted(self, weights: np.ndarray, info: dict | None = None, *, expected_version: int | None = None,
                    classes: np.ndarray | None = None) -> None:
        """Install adapted classifier weights: rows in ``labels`` order, or - with ``classes`` (the uids of a
        :class:`TrainingSet`) - in that order. ``expected_version``: the version the weights were computed
        from; classes enrolled, re-enrolled or forgotten since are imprinted (as if changed after the adapt) when
        ``classes`` is given, else the change is refused with a RuntimeError."""
        w = np.asarray(weights)
        if w.dtype.kind != "f" or w.ndim != 2 or w.shape[1] != self.embedding_dim:
            raise ValueError(f"`weights`: expected float [C, {self.embedding_dim}], got {w.dtype} {list(w.shape)}")
        if not np.isfinite(w).all():
            raise ValueError("`weights`: contains NaN or Inf (diverged adaptation? lower lr); nothing changed")
        from metaedge.runtime.fileio import parse_json
        import json
        info = parse_json(json.dumps(info or {}, allow_nan=False), "info")  # JSON-able, detached copy
        with self.transaction():
            s = self._work
            if len(s) == 0:
                raise ValueError("no classes to adapt")
            if classes is None:
                if expected_version is not None and s.generation != expected_version:
                    raise RuntimeError("the gallery changed while the weights were computed; run adapt again")
                if w.shape != s.protos.shape:
                    raise ValueError(f"`weights`: expected shape {list(s.protos.shape)}, got {list(w.shape)}")
                classes = s.uids
            classes = np.asarray(classes, np.int64)
            if classes.shape != (len(w),):
                raise ValueError(f"`classes`: expected {len(w)} class ids, got {list(classes.shape)}")
            row_of = {int(u): j for j, u in enumerate(classes.tolist())}
            adapted = np.empty(s.protos.shape, np.float32)
            fresh = np.zeros(len(s), bool)
            for i, (uid, vgen) in enumerate(zip(s.uids.tolist(), s.rec["vector_gen"].tolist())):
                j = row_of.get(uid)
                if j is not None and (expected_version is None or vgen <= expected_version):
                    adapted[i], fresh[i] = w[j], True
                else:
                    adapted[i] = imprint(s.protos[i])
            self._write_adapted(s, adapted, fresh)
            self._store.set_meta(adaptation=info)
            self._audit("adapt", detail={**{k: v for k, v in info.items() if k != "losses"},
                                         "classes": len(s), "trained": int(fresh.sum())})
            self._changed(s.with_adapted(adapted, fresh, info, self._gen))

    def _write_adapted(self, s: State, adapted: np.ndarray | None, fresh: np.ndarray) -> None:
        for i in range(len(s)):
            r = s.record(i)
            self._store.write_class(ClassRecord(r.uid, r.label, r.shots, r.prototype, r.enrolled_at, r.updated_at,
                                                None if adapted is None else adapted[i], bool(fresh[i]), r.support,
                                                r.vector_gen), self._gen, new=False)

    def clear_adapted(self) -> None:
        with self.transaction():
            s = self._work
            if s.adapted is None:
                return
            fresh = np.zeros(len(s), bool)
            self._write_adapted(s, None, fresh)
            self._store.set_meta(adaptation=None)
            self._audit("reset_adaptation")
            self._changed(s.with_adapted(None, fresh, None, self._gen))

    def set_threshold(self, mode: str, value: float | None) -> None:
        """Store the open-set threshold calibrated for ``mode`` (``"prototypes"`` or ``"adapted"``)."""
        if mode not in ("prototypes", "adapted"):
            raise ValueError(f"`mode`: expected 'prototypes' or 'adapted', got {mode!r}")
        if value is not None:
            value = float(value)
            if not np.isfinite(value):
                raise ValueError(f"`value`: expected a finite threshold, got {value}")
        with self.transaction():
            s = self._work
            thresholds = dict(s.thresholds)
            thresholds[mode] = value
            self._store.set_meta(thresholds=thresholds)
            self._audit("threshold", detail={"mode": mode, "value": value})
            self._changed(s.with_settings(self._gen, thresholds=thresholds))

    # ------------------------------------------------------------------ class packs
    def export_pack(self, path: str | os.PathLike, labels: list[str] | None = None) -> int:
        """Write these classes (default: all) to a class pack at ``path`` (atomically); returns how many."""
        with self._reading() as s:
            if labels is None:
                idx = list(range(len(s)))
            else:
                idx = [s.index(label) for label in dict.fromkeys(labels)]
            uids = [int(s.uids[i]) for i in idx]
            support = self._store.load_support(None if labels is None else uids, self.support_cap)
            d = self.embedding_dim
            cs = ClassSet(embedding_dim=d, metric=self.metric, fingerprint=self.fingerprint,
                          labels=[s.label(i) for i in idx], shots=np.array(s.rec["shots"][idx], np.int64),
                          enrolled_at=np.array(s.rec["enrolled_at"][idx]),
                          updated_at=np.array(s.rec["updated_at"][idx]),
                          prototypes=np.array(s.protos[idx], np.float32).reshape(len(idx), d),
                          support=[support.get(u, np.zeros((0, d), np.float32)) for u in uids],
                          support_cap=self.support_cap)
        atomic_write(path, pack_bytes(cs, self.current_actor()), error_type=GalleryWriteError)
        return len(idx)

    def import_pack(self, path: str | os.PathLike, on_conflict: str = "fail", *,
                    now: float | None = None) -> ImportReport:
        """Add the classes of a class pack (made for the same bundle). A class whose label exists here with
        other contents is a conflict, settled by ``on_conflict``: ``"fail"`` (default: import nothing, raise
        LabelConflictError naming them), ``"skip"`` (keep ours), ``"replace"`` (take the pack's), ``"merge"``
        (one class of all the shots: count-weighted prototype, support memories combined). Classes identical
        to ours are left alone, so importing a pack twice changes nothing."""
        if on_conflict not in CONFLICT_POLICIES:
            raise ValueError(f"`on_conflict`: expected one of {CONFLICT_POLICIES}, got {on_conflict!r}")
        pack = read_pack(os.fspath(path))
        where = os.fspath(path)
        if pack.embedding_dim != self.embedding_dim or pack.metric != self.metric:
            raise GalleryMismatchError(f"{where}: classes of dimension {pack.embedding_dim} / metric {pack.metric!r}; "
                                       f"this gallery: {self.embedding_dim} / {self.metric!r}")
        if (pack.fingerprint or None) != (self.fingerprint or None):
            raise GalleryMismatchError(f"{where}: made with another bundle (fingerprint "
                                       f"{(pack.fingerprint or 'none')[:12]}..., this gallery "
                                       f"{(self.fingerprint or 'none')[:12]}...); classes only move between "
                                       f"galleries of the same bundle")
        now = time.time() if now is None else _check_time(now)
        name = os.path.basename(where)
        report = ImportReport([], [], [], [], [])
        with self.transaction():
            store, s, gen = self._store, self._work, self._gen
            plans, conflicts = [], []
            for j, label in enumerate(pack.labels):
                uid = store.uid_of(label)
                if uid is None:
                    plans.append(("added", j, None))
                    continue
                mine = s.record(s.position(uid))
                if mine.shots == int(pack.shots[j]) and np.array_equal(mine.prototype, pack.prototypes[j]):
                    report.unchanged.append(label)
                    continue
                conflicts.append(label)
                plans.append((on_conflict, j, mine))
            if conflicts and on_conflict == "fail":
                raise LabelConflictError(
                    f"{where}: {len(conflicts)} class(es) exist here with other contents: "
                    f"{', '.join(map(repr, conflicts[:10]))}{' ...' if len(conflicts) > 10 else ''}; nothing was "
                    f"imported (choose --on-conflict skip, replace or merge)", conflicts)
            records = []
            for action, j, mine in plans:
                label = pack.labels[j]
                if action == "skip":
                    report.skipped.append(label)
                    continue
                rows = pack.support[j]
                if action == "added":
                    uid = store.take_uid()
                    shots, proto = int(pack.shots[j]), pack.prototypes[j]
                    enrolled, updated, support = float(pack.enrolled_at[j]), float(pack.updated_at[j]), rows
                elif action == "replace":
                    uid, shots, proto = mine.uid, int(pack.shots[j]), pack.prototypes[j]
                    enrolled, updated, support = mine.enrolled_at, now, rows
                else:  # merge
                    uid, a, b = mine.uid, mine.shots, int(pack.shots[j])
                    shots = a + b
                    if shots > MAX_SHOTS:
                        raise ValueError(f"class {label!r} would have {shots} shots, more than {MAX_SHOTS}")
                    proto = ((mine.prototype.astype(np.float64) * a + pack.prototypes[j].astype(np.float64) * b)
                             / shots).astype(np.float32)
                    support = _merge_support(store.support_of(uid, self.support_cap), a, rows, b, self.support_cap,
                                             (self.seed, uid, shots))
                    enrolled, updated = min(mine.enrolled_at, float(pack.enrolled_at[j])), now
                support = np.asarray(support, np.float32)[:min(self.support_cap, shots)]
                rec = ClassRecord(uid, label, shots, np.array(proto, np.float32), enrolled, updated,
                                  None if s.adapted is None else imprint(proto), False, len(support), gen)
                store.write_class(rec, gen, new=action == "added")
                store.write_support(uid, support)
                self._audit("import", label=label, uid=uid, shots=int(pack.shots[j]),
                            detail={"action": action, "pack": name, "policy": on_conflict})
                getattr(report, {"added": "added", "replace": "replaced", "merge": "merged"}[action]).append(label)
                records.append(rec)
            if records:
                self._changed(s.upsert(records, gen))
        return report

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike | None = None) -> str:
        """Every change to a store is committed when it returns, so ``save()`` only returns the gallery's path.
        ``save(other_path)`` writes a consistent copy to a new file (never over an existing one); an in-memory
        gallery then continues on that file. Returns the path written."""
        with self._lock:
            self._require_open()
            if path is None or (self.path is not None and os.path.lexists(os.fspath(path))
                                and os.path.exists(self.path) and os.path.samefile(os.fspath(path), self.path)):
                if self.path is None:
                    raise ValueError("save(): this gallery has no path; pass one")
                if self.legacy:
                    self._require_writable()
                return self.path
            target = os.fspath(path)
            if os.path.lexists(target):
                raise ValueError(f"save({target!r}): the file exists; a gallery copy never replaces a file (another "
                                 f"process may be using it) - choose a new path")
            directory = os.path.dirname(os.path.abspath(target))
            if not os.path.isdir(directory):
                raise FileNotFoundError(f"cannot save the gallery to {target!r}: directory {directory!r} does not "
                                        f"exist")
            src = self._store.conn

            def copy(conn):
                src.backup(conn)
            if not files.install(files.new_database(target, copy), target):
                raise ValueError(f"save({target!r}): the file appeared while the copy was written; nothing replaced")
            if self.path is None:  # an in-memory gallery continues on its file
                old, actor = self._store, self.actor
                self._attach_file(target, readonly=False)
                self.actor = actor
                old.close()
            return target

    @staticmethod
    def migrate(source: str | os.PathLike, target: str | os.PathLike | None = None, *,
                fingerprint: str | None = None) -> str:
        """Convert a gallery file of the old format (schema 1) to a store: at ``target``, or in place (the old
        file is kept as ``SOURCE.v1-backup``). Classes, ids, times, support memories, adapted head and thresholds
        are carried over exactly; ``fingerprint`` re-stamps a gallery that recorded the bundle's ONNX sha256.
        Returns the store's path."""
        from metaedge.runtime.store.legacy import read_legacy
        source = os.fspath(source)
        if files.kind_of(source) != files.LEGACY:
            raise GalleryError(f"{source}: already a gallery store (nothing to convert)")
        cs = read_legacy(source)
        old_fp = cs.fingerprint
        if fingerprint is not None:
            cs.fingerprint = fingerprint
        target = os.fspath(target) if target is not None else source
        in_place = os.path.abspath(target) == os.path.abspath(source)
        if not in_place and os.path.lexists(target):
            raise ValueError(f"{target}: exists; choose a new path for the converted gallery")
        settings = dict(embedding_dim=cs.embedding_dim, metric=cs.metric, fingerprint=cs.fingerprint,
                        support_cap=cs.support_cap, seed=cs.seed, created_at=cs.created_at or time.time(),
                        thresholds=cs.thresholds)
        actor = default_actor()

        def fill(conn):
            Store.initialise(conn, **settings, actor=actor)
            populate_from_legacy(Store(conn, target, dim=cs.embedding_dim), cs, source, actor, old_fp)
        tmp = files.new_database(target, fill)
        if in_place:
            backup = source + ".v1-backup"
            try:
                if os.path.lexists(backup) and not os.path.samefile(backup, source):
                    raise ValueError(f"{backup} exists (an earlier conversion?); move it away first")
                if not os.path.lexists(backup):
                    os.link(source, backup)
            except OSError as exc:
                files._discard(tmp)
                from metaedge.runtime.fileio import as_write_error
                raise as_write_error(exc, backup, GalleryWriteError) from None
            except BaseException:
                files._discard(tmp)
                raise
            files.install(tmp, target, replace=True)
        elif not files.install(tmp, target):
            raise ValueError(f"{target}: appeared while the conversion was written; nothing replaced")
        return target

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


def _entry(r: AuditRow) -> AuditEntry:
    return AuditEntry(r.seq, r.generation, r.at, r.op, r.label, r.uid, r.shots, r.actor, r.detail)


def _merge_support(a_rows: np.ndarray, a_shots: int, b_rows: np.ndarray, b_shots: int, cap: int, seed) -> np.ndarray:
    """Support memories of two shot sets combined into one of at most ``cap`` rows: each row stands for
    shots/rows shots of its side, and rows are drawn (seeded, without replacement) with that weight - about
    a uniform sample of all the shots."""
    rows = np.concatenate([a_rows, b_rows]) if len(a_rows) + len(b_rows) else a_rows
    if len(rows) <= cap:
        return rows
    weights = np.concatenate([np.full(len(a_rows), a_shots / max(len(a_rows), 1)),
                              np.full(len(b_rows), b_shots / max(len(b_rows), 1))])
    pick = np.random.default_rng(seed).choice(len(rows), cap, replace=False, p=weights / weights.sum())
    return rows[np.sort(pick)]


def populate_from_legacy(store: Store, cs: ClassSet, source: str, actor: str, old_fingerprint: str | None = None):
    """Write an old gallery file's classes, exactly, into a freshly initialised store (one transaction)."""
    d = cs.embedding_dim
    store.dim = d
    conn = store.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        for i, label in enumerate(cs.labels):
            proto = cs.prototypes[i]
            adapted = None if cs.adapted is None else cs.adapted[i]
            rec = ClassRecord(int(cs.uids[i]), label, int(cs.shots[i]), proto, float(cs.enrolled_at[i]),
                              float(cs.updated_at[i]), adapted, bool(cs.fresh[i]) if cs.fresh is not None else False,
                              len(cs.support[i]), 0)
            store.write_class(rec, 0, new=True)
            store.write_support(rec.uid, cs.support[i])
        store.set_meta(next_uid=int(cs.next_uid), adaptation=cs.adaptation if cs.adapted is not None else None)
        detail = {"from": os.path.basename(source), "schema": 1, "classes": len(cs)}
        if old_fingerprint and old_fingerprint != cs.fingerprint:
            detail["fingerprint_from"] = old_fingerprint
        store.record(0, time.time(), "migrate", actor, detail=detail)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
