"""The gallery store: one SQLite database (the standard library's ``sqlite3``), WAL journal, ``synchronous=FULL``.

Tables (schema version :data:`SCHEMA_VERSION`; ``PRAGMA user_version`` holds it, ``PRAGMA application_id``
marks the file as a metaedge gallery)::

    meta     (key, value, crc)        format, schema, embedding_dim, metric, bundle_fingerprint, support_cap,
                                      seed, created_at, generation, next_uid, thresholds, open_set, adaptation
    classes  (uid, label, shots, prototype, enrolled_at, updated_at, adapted, fresh, support, vector_gen,
              changed, crc)           one row per class; uid order = enrollment order
    support  (uid, rows, embeddings, crc)   the class's support memory (float32 [rows, d])
    audit    (seq, generation, at, op, label, uid, shots, actor, detail)   every change, never rewritten
    calibration (seq, role, uid, rows, embeddings, crc)   the embeddings the unknown thresholds were calibrated
                                      from (runtime/store/calibration.py), so a new head can be re-calibrated

Older store schemas are upgraded in place when a store is opened for writing (runtime/store/migrations.py);
opened read-only, they are read as they are.

Every change is one write transaction (``BEGIN IMMEDIATE``: one writer at a time across processes, readers never
blocked) that touches only its own rows, bumps ``generation`` and appends to ``audit``; the audit rows of a
generation name the classes it changed, which is how other processes catch up without reloading everything.

Loads check before they read: blob lengths with ``length()`` (SQLite knows them without reading the blob),
then every row's CRC32 and the type and range of every field, so whatever loads can be written back. A schema
object that is not ours (a trigger, a view, another table) makes the file "not a metaedge gallery".
"""
from __future__ import annotations

import json
import os
import sqlite3
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from metaedge.runtime.store.checks import (MAX_ID, MAX_SHOTS, MAX_SUPPORT_CAP, MAX_TIME, check_fingerprint, check_int,
                                          check_open_set, check_settings, check_thresholds, check_time_field)
from metaedge.runtime.store.errors import (STORE_ERRORS, GalleryCorruptError, GalleryError, GalleryVersionError,
                                           from_sqlite_error)
from metaedge.runtime.store.labels import check_label
from metaedge.runtime.store.state import RECORD, ClassRecord

__all__ = ["Store", "Meta", "AuditRow", "SCHEMA_VERSION", "FORMAT", "APPLICATION_ID", "MAX_EMBEDDING_DIM",
           "MAX_SUPPORT_CAP", "MAX_SHOTS", "MAX_TIME", "is_sqlite_file"]

FORMAT = "metaedge.gallery"
SCHEMA_VERSION = 3            # 1 was the single safetensors file (runtime/store/legacy.py reads and converts it);
                              # 2 had no calibration table and open-set record (runtime/store/migrations.py)
OLDEST_STORE_SCHEMA = 2
APPLICATION_ID = 0x4D45474C   # "MEGL"
SQLITE_MAGIC = b"SQLite format 3\0"
MAX_ACTOR = 256
MAX_DETAIL_BYTES = 64 * 1024
BUSY_TIMEOUT_S = 30.0
MAX_IDS_PER_QUERY = 900       # below SQLite's bound on a statement's parameters (999 before 3.32)

_SCHEMA = {
    ("table", "meta"): "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, crc INTEGER NOT NULL) "
                       "WITHOUT ROWID",
    ("table", "classes"): "CREATE TABLE classes (uid INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE, "
                          "shots INTEGER NOT NULL, prototype BLOB NOT NULL, enrolled_at REAL NOT NULL, "
                          "updated_at REAL NOT NULL, adapted BLOB, fresh INTEGER NOT NULL, support INTEGER NOT NULL, "
                          "vector_gen INTEGER NOT NULL, changed INTEGER NOT NULL, crc INTEGER NOT NULL)",
    ("table", "support"): "CREATE TABLE support (uid INTEGER PRIMARY KEY, rows INTEGER NOT NULL, "
                          "embeddings BLOB NOT NULL, crc INTEGER NOT NULL)",
    ("table", "audit"): "CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, generation INTEGER NOT NULL, "
                        "at REAL NOT NULL, op TEXT NOT NULL, label TEXT, uid INTEGER, shots INTEGER, "
                        "actor TEXT NOT NULL, detail TEXT)",
    ("index", "audit_generation"): "CREATE INDEX audit_generation ON audit (generation)",
    ("table", "calibration"): "CREATE TABLE calibration (seq INTEGER PRIMARY KEY, role TEXT NOT NULL, uid INTEGER, "
                              "rows INTEGER NOT NULL, embeddings BLOB NOT NULL, crc INTEGER NOT NULL)",
}
# The objects of each store schema this version reads.
SCHEMA_OBJECTS = {3: set(_SCHEMA), 2: set(_SCHEMA) - {("table", "calibration")}}
# Objects SQLite makes by itself for the schema above.
_AUTOMATIC = {("table", "sqlite_sequence"), ("index", "sqlite_autoindex_classes_1"),
              ("index", "sqlite_autoindex_meta_1")}

# Audit operations by what a reader must reload: the named class, the settings, or everything.
CLASS_OPS = {"enroll", "forget", "rename", "import"}
SETTINGS_OPS = {"threshold", "fingerprint", "create"}
WIDE_OPS = {"adapt", "reset_adaptation", "clear", "migrate"}
ALL_OPS = CLASS_OPS | SETTINGS_OPS | WIDE_OPS


def migrated_open_set(thresholds: dict | None) -> dict:
    """The open-set record of thresholds that came without one (an upgraded store, a converted old file)."""
    return {"heads": {head: {"how": "migrated"} for head, value in (thresholds or {}).items() if value is not None},
            "calibration": None}


def is_sqlite_file(head: bytes) -> bool:
    return head[:16] == SQLITE_MAGIC


def _crc(text: str, *blobs: bytes | None) -> int:
    c = zlib.crc32(text.encode("utf-8", "surrogatepass"))
    for b in blobs:
        if b is not None:
            c = zlib.crc32(b, c)
    return c


def _class_crc(uid, label, shots, enrolled_at, updated_at, fresh, support, prototype, adapted) -> int:
    return _crc(f"{uid}|{label}|{shots}|{enrolled_at!r}|{updated_at!r}|{fresh}|{support}", prototype, adapted)


@dataclass(frozen=True)
class Meta:
    """The gallery-wide settings, checked."""
    embedding_dim: int
    metric: str
    fingerprint: str | None
    support_cap: int
    seed: int
    created_at: float
    generation: int
    next_uid: int
    thresholds: dict
    open_set: dict                  # per head how its threshold was set; the calibration set's settings
    adaptation: dict | None
    metaedge_version: str


@dataclass(frozen=True)
class AuditRow:
    seq: int
    generation: int
    at: float
    op: str
    label: str | None
    uid: int | None
    shots: int | None
    actor: str
    detail: dict | None


class Store:
    """One connection to a gallery database (or ``:memory:``). Not thread-safe: the Gallery serialises use."""

    def __init__(self, conn: sqlite3.Connection, path: str, readonly: bool = False, dim: int = 0,
                 schema: int = SCHEMA_VERSION):
        self.conn = conn
        self.path = path
        self.readonly = readonly
        self.dim = dim
        self.schema = schema  # an older schema only when opened read-only (else upgraded at open)

    # ------------------------------------------------------------------ opening and creating
    @staticmethod
    def connect(path: str, *, readonly: bool = False, timeout: float = BUSY_TIMEOUT_S,
                immutable: bool = False) -> sqlite3.Connection:
        if path == ":memory:":
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            # immutable: on a read-only mount nothing can change the file, and SQLite cannot make its -shm there
            uri = "file:" + _uri_path(path) + ("?mode=ro" if readonly else "?mode=rw") + ("&immutable=1" if immutable
                                                                                         else "")
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA trusted_schema=OFF")
        conn.execute("PRAGMA cell_size_check=ON")
        return conn

    @classmethod
    def open(cls, path: str, *, readonly: bool = False, timeout: float = BUSY_TIMEOUT_S,
             immutable: bool = False) -> "Store":
        try:
            conn = cls.connect(path, readonly=readonly, timeout=timeout, immutable=immutable)
        except STORE_ERRORS as exc:
            raise from_sqlite_error(exc, path, "opening the gallery") from None
        store = cls(conn, path, readonly)
        try:
            store.schema = store._check_file()
            if not readonly and path != ":memory:":
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise GalleryError(f"{path}: cannot use SQLite's WAL journal here (got {mode!r}); keep "
                                       f"galleries on a local file system")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA journal_size_limit=67108864")
            if store.schema < SCHEMA_VERSION and not readonly:
                from metaedge.runtime.store.migrations import upgrade
                upgrade(store)
        except STORE_ERRORS as exc:
            conn.close()
            raise from_sqlite_error(exc, path, "opening the gallery") from None
        except BaseException:
            conn.close()
            raise
        return store

    def _check_file(self) -> int:
        """The file's store schema, after checking that it is a metaedge gallery of a schema this version reads."""
        c = self.conn
        app, version = c.execute("PRAGMA application_id").fetchone()[0], c.execute("PRAGMA user_version").fetchone()[0]
        if app != APPLICATION_ID:
            raise GalleryCorruptError(f"{self.path}: an SQLite database, but not a metaedge gallery "
                                      f"(application_id {app:#x})")
        if version > SCHEMA_VERSION:
            raise GalleryVersionError(f"{self.path}: written with gallery schema {version} by a newer metaedge; "
                                      f"this metaedge reads schema <= {SCHEMA_VERSION}: upgrade metaedge")
        if version < OLDEST_STORE_SCHEMA:
            # schema 1 was the safetensors file (converted by `classes migrate`), never an SQLite database
            raise GalleryCorruptError(f"{self.path}: unknown gallery schema {version}")
        objects = {(t, n) for t, n in c.execute("SELECT type, name FROM sqlite_master")}
        unexpected = objects - SCHEMA_OBJECTS[version] - _AUTOMATIC
        missing = SCHEMA_OBJECTS[version] - objects
        if unexpected or missing:
            what = ", ".join(f"{t} {n!r}" for t, n in sorted(unexpected)) or ""
            gone = ", ".join(f"{t} {n!r}" for t, n in sorted(missing)) or ""
            raise GalleryCorruptError(f"{self.path}: not a metaedge gallery schema"
                                      + (f" (unexpected {what})" if what else "")
                                      + (f" (missing {gone})" if gone else ""))
        return version

    @classmethod
    def initialise(cls, conn: sqlite3.Connection, *, embedding_dim: int, metric: str, fingerprint: str | None,
                   support_cap: int, seed: int, created_at: float, thresholds: dict | None = None,
                   generation: int = 0, next_uid: int = 0, actor: str = "?") -> None:
        """Write the schema and settings of a new gallery into an empty database (one transaction), and the
        audit trail's first entry. ``thresholds`` (of a converted old gallery) are recorded as ``migrated``."""
        from metaedge import __version__
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            for sql in _SCHEMA.values():
                conn.execute(sql)
            store = cls(conn, "<new>")
            store.set_meta(format=FORMAT, schema_version=str(SCHEMA_VERSION), embedding_dim=embedding_dim,
                           metric=metric, bundle_fingerprint=fingerprint or "", support_cap=support_cap, seed=seed,
                           created_at=created_at, generation=generation, next_uid=next_uid,
                           thresholds=thresholds or {"prototypes": None, "adapted": None},
                           open_set=migrated_open_set(thresholds), adaptation=None, metaedge_version=__version__)
            store.record(generation, created_at, "create", actor,
                         detail={"embedding_dim": embedding_dim, "metric": metric, "support_cap": support_cap})
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ transactions
    def begin_write(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def begin_read(self) -> None:
        self.conn.execute("BEGIN")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------ meta
    def set_meta(self, **values: Any) -> None:
        rows = []
        for key, value in values.items():
            text = value if isinstance(value, str) else json.dumps(value, allow_nan=False, ensure_ascii=False)
            rows.append((key, text, _crc(f"{key}={text}")))
        self.conn.executemany("INSERT OR REPLACE INTO meta (key, value, crc) VALUES (?, ?, ?)", rows)

    def _meta_values(self) -> dict[str, str]:
        out = {}
        for key, value, crc in self.conn.execute("SELECT key, value, crc FROM meta WHERE length(value) <= ?",
                                                 (MAX_DETAIL_BYTES,)):
            if not isinstance(value, str) or crc != _crc(f"{key}={value}"):
                raise GalleryCorruptError(f"{self.path}: setting {key!r} fails its checksum (damaged file)")
            out[key] = value
        return out

    def meta(self) -> Meta:
        """The settings, every one checked for type and range."""
        from metaedge.runtime.fileio import parse_json
        where = self.path
        v = self._meta_values()

        def get(key: str) -> Any:
            if key not in v:
                raise GalleryCorruptError(f"{where}: setting {key!r} is missing (or too long)")
            if key in ("metric", "bundle_fingerprint", "format", "schema_version", "metaedge_version"):
                return v[key]
            try:
                return parse_json(v[key], f"{where}: setting {key!r}")
            except ValueError as exc:
                raise GalleryCorruptError(f"{where}: setting {key!r} is not valid: {exc}") from None

        if get("format") != FORMAT:
            raise GalleryCorruptError(f"{where}: not a metaedge gallery (format {v.get('format')!r})")
        dim, metric, cap, seed = get("embedding_dim"), get("metric"), get("support_cap"), get("seed")
        check_settings(embedding_dim=dim, metric=metric, support_cap=cap, seed=seed, where=where)
        adaptation = get("adaptation")
        # (a store of schema 2, read as it is, has no open-set record: what an upgrade would write)
        open_set = get("open_set") if self.schema >= 3 or "open_set" in v else migrated_open_set(get("thresholds"))
        if adaptation is not None and not isinstance(adaptation, dict):
            raise GalleryCorruptError(f"{where}: setting 'adaptation': expected an object or null")
        meta = Meta(embedding_dim=dim, metric=metric,
                    fingerprint=check_fingerprint(get("bundle_fingerprint"), f"{where}: bundle_fingerprint"),
                    support_cap=cap, seed=seed, created_at=check_time_field(get("created_at"), f"{where}: created_at"),
                    generation=check_int(get("generation"), 0, MAX_ID, f"{where}: generation"),
                    next_uid=check_int(get("next_uid"), 0, MAX_ID, f"{where}: next_uid"),
                    thresholds=check_thresholds(get("thresholds"), f"{where}: thresholds"),
                    open_set=check_open_set(open_set, f"{where}: open_set"), adaptation=adaptation,
                    metaedge_version=str(get("metaedge_version")))
        self.dim = meta.embedding_dim
        return meta

    def generation(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        try:
            return check_int(int(row[0]), 0, MAX_ID, f"{self.path}: generation")
        except (TypeError, ValueError):
            raise GalleryCorruptError(f"{self.path}: setting 'generation' is missing or not a number") from None

    def take_uid(self) -> int:
        """The next class id (and reserve it)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='next_uid'").fetchone()
        uid = check_int(int(row[0]), 0, MAX_ID - 1, f"{self.path}: next_uid")
        self.set_meta(next_uid=uid + 1)
        return uid

    # ------------------------------------------------------------------ classes
    _COLUMNS = "uid, label, shots, prototype, enrolled_at, updated_at, adapted, fresh, support, vector_gen, crc"

    def _check_sizes(self, where_sql: str, params: Iterable) -> None:
        """Refuse rows whose blobs or labels have the wrong size, or whose numbers the wrong type, before any of
        them is read (SQLite knows both without reading a blob)."""
        nbytes = 4 * self.dim
        bad = self.conn.execute(
            f"SELECT uid, typeof(prototype), length(prototype), typeof(adapted), length(adapted), typeof(label), "
            f"length(label), typeof(shots), typeof(enrolled_at), typeof(updated_at), typeof(fresh), typeof(support), "
            f"typeof(vector_gen), typeof(crc) FROM classes WHERE {where_sql} AND NOT (typeof(prototype) = 'blob' "
            f"AND length(prototype) = ? AND (adapted IS NULL OR (typeof(adapted) = 'blob' AND length(adapted) = ?)) "
            f"AND typeof(label) = 'text' AND length(CAST(label AS BLOB)) <= 4 * 128 AND typeof(uid) = 'integer' "
            f"AND typeof(shots) = 'integer' AND typeof(enrolled_at) = 'real' AND typeof(updated_at) = 'real' "
            f"AND typeof(fresh) = 'integer' AND typeof(support) = 'integer' AND typeof(vector_gen) = 'integer' "
            f"AND typeof(crc) = 'integer') LIMIT 1", (*params, nbytes, nbytes)).fetchone()
        if bad:
            raise GalleryCorruptError(f"{self.path}: class {bad[0]}: prototype {bad[1]} of {bad[2]} bytes, adapted "
                                      f"{bad[3]} of {bad[4]} bytes (expected blobs of {nbytes}), label {bad[5]} of "
                                      f"{bad[6]} characters, numbers of types {bad[7:]}")

    def load_classes(self, uids: Iterable[int] | None = None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray,
                                                                        np.ndarray | None]:
        """Classes as arrays: ``(labels, uids int64[n], records RECORD[n], prototypes [n, d], adapted [n, d] or
        None)`` in uid order, all of them or those of ``uids``; every field checked."""
        if uids is None:
            where_sql, params = "1", ()
        else:
            ids = sorted(set(int(u) for u in uids))
            if len(ids) > MAX_IDS_PER_QUERY:  # SQLite bounds a statement's parameters (callers load all instead)
                raise ValueError(f"load_classes: at most {MAX_IDS_PER_QUERY} class ids at once, got {len(ids)}")
            where_sql, params = f"uid IN ({','.join('?' * len(ids))})" if ids else "0", ids
        self._check_sizes(where_sql, params)
        try:
            rows = self.conn.execute(f"SELECT {self._COLUMNS} FROM classes WHERE {where_sql} ORDER BY uid",
                                     params).fetchall()
        except sqlite3.OperationalError as exc:  # e.g. "Could not decode to UTF-8 column 'label'"
            if "decode" in str(exc).lower():
                raise GalleryCorruptError(f"{self.path}: a class label is not valid UTF-8 (damaged file)") from None
            raise
        n, d = len(rows), self.dim
        uid, labels, shots, proto, enrolled, updated, ad, fresh, support, vgen, crc = (
            [list(c) for c in zip(*rows)] if n else [[] for _ in range(11)])
        for i in range(n):  # the checksum of every row first: a damaged row is named as such
            if crc[i] != _class_crc(uid[i], labels[i], shots[i], enrolled[i], updated[i], fresh[i], support[i],
                                    proto[i], ad[i]):
                raise GalleryCorruptError(f"{self.path}: class {uid[i]} ({labels[i]!r}) fails its checksum: the file "
                                          f"is damaged; restore a backup or forget that class")
        for i, label in enumerate(labels):
            if not (label.isascii() and label.isprintable() and label == label.strip() and 0 < len(label) <= 128):
                try:  # the full check for the rest (ASCII, printable, trimmed, short: valid and NFC already)
                    if check_label(label, "label") != label:
                        raise ValueError("not NFC-normalised")
                except (TypeError, ValueError) as exc:
                    raise GalleryCorruptError(f"{self.path}: class {uid[i]}: invalid label {label!r}: {exc}") \
                        from None
        ids = self._column(uid, np.int64, 0, MAX_ID, "uid", uid, labels)
        rec = np.zeros(n, RECORD)
        rec["shots"] = self._column(shots, np.int64, 1, MAX_SHOTS, "shots", uid, labels)
        rec["fresh"] = self._column(fresh, np.int64, 0, 1, "fresh", uid, labels)
        rec["support"] = self._column(support, np.int64, 0, MAX_SUPPORT_CAP, "support", uid, labels)
        over = np.flatnonzero(rec["support"] > rec["shots"])
        if len(over):
            i = int(over[0])
            raise GalleryCorruptError(f"{self.path}: class {uid[i]} ({labels[i]!r}): support: {support[i]} "
                                      f"embeddings kept of {shots[i]} shots")
        rec["vector_gen"] = self._column(vgen, np.int64, 0, MAX_ID, "vector_gen", uid, labels)
        rec["enrolled_at"] = self._column(enrolled, np.float64, 0.0, MAX_TIME, "enrolled_at", uid, labels)
        rec["updated_at"] = self._column(updated, np.float64, 0.0, MAX_TIME, "updated_at", uid, labels)
        protos = np.frombuffer(b"".join(proto), np.float32).reshape(n, d) if n else np.zeros((0, d), np.float32)
        with_adapted = [a is not None for a in ad]
        adapted = None
        if any(with_adapted):
            if not all(with_adapted):
                raise GalleryCorruptError(f"{self.path}: some classes have adapted weights and others not")
            adapted = np.frombuffer(b"".join(ad), np.float32).reshape(n, d)
        if n and not np.isfinite(protos).all():
            bad = int(np.argmax(~np.isfinite(protos).all(axis=1)))
            raise GalleryCorruptError(f"{self.path}: class {labels[bad]!r}: non-finite prototype")
        if adapted is not None and not np.isfinite(adapted).all():
            raise GalleryCorruptError(f"{self.path}: non-finite adapted weights")
        return labels, ids, rec, protos.copy(), None if adapted is None else adapted.copy()

    def _column(self, values: list, dtype, lo, hi, what: str, uid: list, labels: list) -> np.ndarray:
        """A column of (already type-checked) numbers as an array, every value in [lo, hi] (else the first bad
        one is named); NaN counts as out of range."""
        arr = np.array(values, dtype) if values else np.zeros(0, dtype)
        bad = np.flatnonzero(~((arr >= lo) & (arr <= hi)))
        if len(bad):
            i = int(bad[0])
            raise GalleryCorruptError(f"{self.path}: class {uid[i]} ({labels[i]!r}): {what}: expected a value in "
                                      f"[{lo}, {hi}], got {values[i]!r}")
        return arr

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM classes").fetchone()[0]

    def uid_of(self, label: str) -> int | None:
        row = self.conn.execute("SELECT uid FROM classes WHERE label = ?", (label,)).fetchone()
        return None if row is None else row[0]

    def write_class(self, r: ClassRecord, generation: int, *, new: bool) -> None:
        proto = np.ascontiguousarray(r.prototype, np.float32).tobytes()
        adapted = None if r.adapted is None else np.ascontiguousarray(r.adapted, np.float32).tobytes()
        fresh = int(bool(r.fresh))
        values = (r.label, int(r.shots), proto, float(r.enrolled_at), float(r.updated_at), adapted, fresh,
                  int(r.support), int(r.vector_gen), int(generation),
                  _class_crc(r.uid, r.label, int(r.shots), float(r.enrolled_at), float(r.updated_at), fresh,
                             int(r.support), proto, adapted), int(r.uid))
        if new:
            self.conn.execute("INSERT INTO classes (label, shots, prototype, enrolled_at, updated_at, adapted, fresh, "
                              "support, vector_gen, changed, crc, uid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              values)
        else:
            self.conn.execute("UPDATE classes SET label=?, shots=?, prototype=?, enrolled_at=?, updated_at=?, "
                              "adapted=?, fresh=?, support=?, vector_gen=?, changed=?, crc=? WHERE uid=?", values)

    def delete_class(self, uid: int) -> None:
        self.conn.execute("DELETE FROM classes WHERE uid = ?", (uid,))
        self.conn.execute("DELETE FROM support WHERE uid = ?", (uid,))

    def delete_all(self) -> None:
        self.conn.execute("DELETE FROM classes")
        self.conn.execute("DELETE FROM support")

    # ------------------------------------------------------------------ support memory
    def support_of(self, uid: int, cap: int) -> np.ndarray:
        return self.load_support([uid], cap).get(uid, np.zeros((0, self.dim), np.float32))

    def load_support(self, uids: Iterable[int] | None, cap: int) -> dict[int, np.ndarray]:
        """``{uid: float32 [rows, d]}`` (classes without support are absent), sizes checked before reading."""
        d = self.dim
        if uids is not None:
            ids = sorted(set(int(u) for u in uids))
            if len(ids) > MAX_IDS_PER_QUERY:  # SQLite bounds a statement's parameters
                out: dict[int, np.ndarray] = {}
                for i in range(0, len(ids), MAX_IDS_PER_QUERY):
                    out.update(self.load_support(ids[i:i + MAX_IDS_PER_QUERY], cap))
                return out
        if uids is None:
            where_sql, params = "1", []
        else:
            ids = sorted(set(int(u) for u in uids))
            where_sql, params = (f"uid IN ({','.join('?' * len(ids))})" if ids else "0"), ids
        bad = self.conn.execute(
            f"SELECT uid, rows, length(embeddings) FROM support WHERE {where_sql} AND NOT (typeof(rows) = 'integer' "
            f"AND rows BETWEEN 1 AND ? AND typeof(embeddings) = 'blob' AND length(embeddings) = rows * ?) LIMIT 1",
            (*params, max(cap, 0), 4 * d)).fetchone()
        if bad:
            raise GalleryCorruptError(f"{self.path}: class {bad[0]}: support memory of {bad[1]!r} rows in "
                                      f"{bad[2]!r} bytes (support_cap {cap}, dimension {d})")
        out = {}
        for uid, rows, blob, crc in self.conn.execute(f"SELECT uid, rows, embeddings, crc FROM support "
                                                      f"WHERE {where_sql}", params):
            if crc != _crc(f"{uid}|{rows}", blob):
                raise GalleryCorruptError(f"{self.path}: class {uid}: support memory fails its checksum")
            arr = np.frombuffer(blob, np.float32).reshape(rows, d)
            if not np.isfinite(arr).all():
                raise GalleryCorruptError(f"{self.path}: class {uid}: non-finite support embeddings")
            out[uid] = arr
        return out

    def write_support(self, uid: int, rows: np.ndarray) -> None:
        if len(rows) == 0:
            self.conn.execute("DELETE FROM support WHERE uid = ?", (uid,))
            return
        blob = np.ascontiguousarray(rows, np.float32).tobytes()
        self.conn.execute("INSERT OR REPLACE INTO support (uid, rows, embeddings, crc) VALUES (?, ?, ?, ?)",
                          (uid, len(rows), blob, _crc(f"{uid}|{len(rows)}", blob)))

    # ------------------------------------------------------------------ audit trail
    def record(self, generation: int, at: float, op: str, actor: str, *, label: str | None = None,
               uid: int | None = None, shots: int | None = None, detail: dict | None = None) -> None:
        text = None if detail is None else json.dumps(detail, allow_nan=False, ensure_ascii=False)
        self.conn.execute("INSERT INTO audit (generation, at, op, label, uid, shots, actor, detail) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (generation, at, op, label, uid, shots, actor[:MAX_ACTOR],
                                                              text))

    def changes_since(self, generation: int) -> tuple[set[int], set[str]]:
        """(uids of classes changed after ``generation``, the kinds of change: 'class', 'settings', 'wide')."""
        uids: set[int] = set()
        kinds: set[str] = set()
        for op, uid in self.conn.execute("SELECT op, uid FROM audit WHERE generation > ?", (generation,)):
            if op in CLASS_OPS and isinstance(uid, int):
                uids.add(uid)
                kinds.add("class")
            elif op in SETTINGS_OPS:
                kinds.add("settings")
            else:  # wide, or an op this version does not know: reload everything
                kinds.add("wide")
        return uids, kinds

    def history(self, *, label: str | None = None, limit: int | None = None, since_seq: int = 0) -> list[AuditRow]:
        """Audit rows, oldest first (the last ``limit`` of them), each field checked."""
        from metaedge.runtime.fileio import parse_json
        sql = ("SELECT seq, generation, at, op, label, uid, shots, actor, CASE WHEN length(detail) <= ? THEN detail "
               "END FROM audit WHERE seq > ?")
        params: list = [MAX_DETAIL_BYTES, since_seq]
        if label is not None:
            sql += " AND label = ?"
            params.append(label)
        sql += " ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        out = []
        for seq, gen, at, op, lab, uid, shots, actor, detail in self.conn.execute(sql, params):
            where = f"{self.path}: audit entry {seq}"
            if not isinstance(op, str) or not isinstance(actor, str) or (lab is not None and not isinstance(lab, str)):
                raise GalleryCorruptError(f"{where}: malformed")
            parsed = None
            if detail is not None:
                try:
                    parsed = parse_json(detail, where)
                except ValueError:
                    parsed = {"unreadable": True}
            out.append(AuditRow(check_int(seq, 1, MAX_ID, where), check_int(gen, 0, MAX_ID, where), check_time_field(at, where), op, lab,
                                None if uid is None else check_int(uid, 0, MAX_ID, where),
                                None if shots is None else check_int(shots, 0, MAX_SHOTS, where), actor,
                                parsed if isinstance(parsed, dict) else None))
        out.reverse()
        return out

    def integrity(self) -> list[str]:
        """SQLite's own page-level check (reads every page): problems, or an empty list."""
        rows = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows


def _uri_path(path: str) -> str:
    from urllib.parse import quote
    return quote(os.path.abspath(path), safe="/")
