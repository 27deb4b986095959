"""The enrolled classes of a device: prototypes, support memory, adapted weights; one crash-safe file.

A :class:`Gallery` holds, per class: its label, the running mean of its embeddings (the prototype) and the
number of shots behind it, a bounded *support memory* of embeddings (reservoir sampling, at most
``support_cap`` per class, seeded so it is reproducible) that ``EdgeClassifier.adapt`` fine-tunes on, the
time it was enrolled and last updated, and - after adaptation - its adapted classifier weights.

File format (DESIGN.md section 6): one safetensors file, never pickle. Tensors: ``prototypes [C, d] f32``,
``counts [C] i64``, ``uids [C] i64``, ``enrolled_at``/``updated_at [C] f64`` (Unix time), ``support [M, d] f32``
+ ``support_labels [M] i64`` (class index), and when adapted ``adapted_weights [C, d] f32`` +
``adapted_fresh [C] u8``. Metadata: ``format``, ``schema_version``, ``bundle_fingerprint`` (the bundle's ONNX
sha256), ``metric``, ``embedding_dim``, ``metaedge_version``, ``state`` (JSON: class names, support cap, seed,
unknown thresholds, adaptation settings) and ``payload_sha256`` over all of the above.

Saving is atomic: a temporary file in the same directory, fsync, rename over the old file, fsync of the
directory - a crash at any moment leaves either the previous or the new file, never a mix. Loading verifies
the format, schema version, sizes, checksum and internal consistency, and (when told what to expect) the
bundle fingerprint and embedding dimension; every failure is a :class:`GalleryError` saying what is wrong.

Concurrency: mutations hold the gallery's lock and replace an immutable internal state in one assignment;
readers (``snapshot()``, ``labels``, ``classes()``) take no lock and always see one consistent state. A
failed mutation (bad input, or a failed autosave) leaves the previous state in memory and on disk.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import datetime as _dt
import hashlib
import json
import os
import secrets
import struct
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from metaedge import kernels
from metaedge.runtime.fileio import fsync_dir

__all__ = ["Gallery", "ClassInfo", "ClassMatrix", "GalleryError", "GalleryCorruptError", "GalleryMismatchError",
           "GalleryVersionError", "UnknownLabelError", "check_label", "SCHEMA_VERSION", "FORMAT",
           "MAX_LABEL_LENGTH", "DEFAULT_SUPPORT_CAP"]

FORMAT = "metaedge.gallery"
SCHEMA_VERSION = 1
MAX_LABEL_LENGTH = 128
DEFAULT_SUPPORT_CAP = 20
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; a bigger length field means "not this format"


class GalleryError(ValueError):
    """A gallery cannot be used; the message says what is wrong and, where it can, what to do."""


class GalleryCorruptError(GalleryError):
    """The file is not a gallery, is truncated, or its contents do not match its checksum."""


class GalleryMismatchError(GalleryError):
    """The gallery was made for another bundle (fingerprint, embedding dimension or metric differ)."""


class GalleryVersionError(GalleryError):
    """The file was written by a newer metaedge with a schema this version does not know."""


class UnknownLabelError(KeyError):
    """A label that is not enrolled. A KeyError (mapping semantics) with a readable message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown label"


def check_label(label: Any, what: str = "label") -> str:
    """A valid class label: a non-empty str of at most MAX_LABEL_LENGTH characters, no control characters,
    no leading/trailing whitespace. Returned unchanged (NFC-normalised) or a TypeError/ValueError."""
    if not isinstance(label, str):
        raise TypeError(f"`{what}`: expected a str, got {type(label).__name__}")
    if label == "" or label.strip() == "":
        raise ValueError(f"`{what}`: expected a non-empty label, got {label!r}")
    if label != label.strip():
        raise ValueError(f"`{what}`: leading or trailing whitespace is not allowed, got {label!r}")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"`{what}`: at most {MAX_LABEL_LENGTH} characters, got {len(label)} "
                         f"({label[:20]!r}...)")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in label):
        raise ValueError(f"`{what}`: control characters (newlines, tabs, ...) are not allowed, got {label!r}")
    return unicodedata.normalize("NFC", label)


def _nfc(label):
    """Labels are stored NFC-normalised (see check_label), so look-ups normalise too: 'é' typed as e + accent
    finds the class enrolled as the single character."""
    return unicodedata.normalize("NFC", label) if isinstance(label, str) else label


def _utc(ts: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(float(ts), tz=_dt.timezone.utc)


@dataclass(frozen=True)
class ClassInfo:
    label: str
    shots: int              # images enrolled in total (the prototype is their mean)
    support: int            # embeddings kept for adaptation (<= support_cap)
    enrolled_at: _dt.datetime
    updated_at: _dt.datetime
    adapted: bool           # its row of the adapted weights came from the last adapt() (not stale)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["enrolled_at"], d["updated_at"] = self.enrolled_at.isoformat(), self.updated_at.isoformat()
        return d


@dataclass(frozen=True)
class ClassMatrix:
    """What ``predict`` scores against: one consistent, read-only view of the classes.

    ``weights[C, d]`` are the prototypes (``metric`` = the bundle's) or, after ``adapt``, the adapted cosine
    head (``metric`` = ``"cosine"``). Never modified after creation; mutations publish a new one.
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

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def weights(self) -> np.ndarray:
        """Read-only ``[C, d]`` view of the class weights."""
        return _readonly(self.kernel_weights)

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


class _Rows:
    """Growable row storage for copy-on-write matrices: appending new rows writes past the end of the
    views that published snapshots hold, so it needs no copy; anything else copies."""
    __slots__ = ("buf", "used")

    def __init__(self, buf: np.ndarray, used: int):
        self.buf, self.used = buf, used

    @staticmethod
    def fresh(rows: np.ndarray, capacity: int | None = None) -> tuple[np.ndarray, "_Rows"]:
        n, d = rows.shape
        cap = max(16, capacity or 0, n)
        buf = np.empty((cap, d), np.float32)
        buf[:n] = rows
        owner = _Rows(buf, n)
        return buf[:n], owner

    @staticmethod
    def append(view: np.ndarray, owner: "_Rows | None", rows: np.ndarray) -> tuple[np.ndarray, "_Rows"]:
        n, m = view.shape[0], rows.shape[0]
        if owner is not None and owner.used == n and n + m <= owner.buf.shape[0] and view.base is owner.buf:
            owner.buf[n:n + m] = rows
            owner.used = n + m
            return owner.buf[:n + m], owner
        return _Rows.fresh(np.concatenate([view, rows]), capacity=2 * (n + m))


@dataclass(frozen=True)
class _State:
    names: tuple[str, ...]
    uids: np.ndarray            # int64 [C]: stable ids (survive renames) that seed the reservoir sampling
    protos: np.ndarray          # float32 [C, d] (a view of protos_rows.buf)
    protos_rows: _Rows | None
    counts: np.ndarray          # int64 [C]
    enrolled_at: np.ndarray     # float64 [C]
    updated_at: np.ndarray      # float64 [C]
    support: dict               # uid -> float32 [m, d] read-only
    adapted: np.ndarray | None  # float32 [C, d] (view of adapted_rows.buf)
    adapted_rows: _Rows | None
    adapted_fresh: np.ndarray | None  # bool [C]
    adaptation: dict | None     # settings and losses of the last adapt()
    thresholds: dict            # {"prototypes": float|None, "adapted": float|None}
    next_uid: int
    version: int
    matrix: ClassMatrix | None = None

    def index(self, label: str) -> int:
        try:
            return self.names.index(_nfc(label))
        except ValueError:
            raise UnknownLabelError(f"no class {label!r} in the gallery") from None


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


def _payload_digest(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "payload_sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"\0{name}|{a.dtype.name}|{list(a.shape)}\0".encode())
        h.update(a.data)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def atomic_write_bytes(path: str, write, mode_from: str | None = None) -> None:
    """Create ``path`` atomically: ``write(tmp_path)`` fills a temporary file in the same directory, which is
    fsynced, renamed over ``path`` and the directory fsynced. On any error the old ``path`` is untouched."""
    path = os.path.realpath(path)  # replace the target of a symlink, not the link
    directory, base = os.path.split(path)
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if mode_from and os.path.exists(mode_from):
            os.chmod(tmp, os.stat(mode_from).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
    _remove_stale_temps(directory, base)


def _remove_stale_temps(directory: str, base: str) -> None:
    """Temporary files left by processes that died mid-save (SIGKILL, power loss) - not by live writers."""
    prefix = f".{base}."
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        parts = name[len(prefix):-len(".tmp")].split(".")
        if len(parts) == 2 and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def _parse_header(data: bytes, where: str) -> tuple[dict, dict, int]:
    """safetensors header checks with messages that say what is wrong: (tensor entries, metadata, data start)."""
    if len(data) == 0:
        raise GalleryCorruptError(f"{where}: the file is empty (0 bytes) - not a gallery, or a save that never "
                                  f"completed")
    if len(data) < 8:
        raise GalleryCorruptError(f"{where}: truncated ({len(data)} bytes; a gallery starts with an 8-byte header "
                                  f"length)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER_BYTES or n < 2:
        raise GalleryCorruptError(f"{where}: not a metaedge gallery (not a safetensors file: header length {n})")
    if 8 + n > len(data):
        if data[8:9] in (b"{", b""):
            raise GalleryCorruptError(f"{where}: truncated: the header needs {8 + n} bytes, the file has "
                                      f"{len(data)}")
        raise GalleryCorruptError(f"{where}: not a metaedge gallery (not a safetensors file)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GalleryCorruptError(f"{where}: not a metaedge gallery, or a damaged one (header is not valid JSON: "
                                  f"{exc})") from None
    if not isinstance(header, dict):
        raise GalleryCorruptError(f"{where}: not a metaedge gallery (header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GalleryCorruptError(f"{where}: not a metaedge gallery (a safetensors file without the "
                                  f"format={FORMAT!r} marker; is it a model checkpoint?)")
    try:
        end = max([int(t["data_offsets"][1]) for t in header.values()] + [0])
    except (KeyError, TypeError, ValueError, IndexError):
        raise GalleryCorruptError(f"{where}: damaged header (bad tensor entries)") from None
    available = len(data) - 8 - n
    if available < end:
        raise GalleryCorruptError(f"{where}: truncated: {available} bytes of tensor data, {end} expected "
                                  f"(an interrupted copy?)")
    if available > end:
        raise GalleryCorruptError(f"{where}: {available - end} unexpected bytes after the tensor data")
    return header, meta, 8 + n


_EXPECTED = {"prototypes": ("float32", 2), "counts": ("int64", 1), "uids": ("int64", 1),
             "enrolled_at": ("float64", 1), "updated_at": ("float64", 1), "support": ("float32", 2),
             "support_labels": ("int64", 1)}
_OPTIONAL = {"adapted_weights": ("float32", 2), "adapted_fresh": ("uint8", 1)}


class Gallery:
    """Enrolled classes (see the module docstring). Create one empty, or ``Gallery.load(path)`` /
    ``Gallery.open(path, ...)`` a saved one.

    ``embedding_dim``/``metric``/``fingerprint`` come from the bundle (``fingerprint`` = its ONNX sha256: a
    gallery only makes sense with the network that produced its embeddings). ``support_cap``: embeddings kept
    per class for ``adapt`` (reservoir sampling seeded by ``seed``). ``path`` + ``autosave=True``: every
    successful change is saved before the call returns.
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
        if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint):
            raise ValueError(f"`fingerprint`: expected a non-empty str (the bundle's ONNX sha256), got {fingerprint!r}")
        self.embedding_dim = int(embedding_dim)
        self.metric = metric
        self.fingerprint = fingerprint
        self.support_cap = int(support_cap)
        self.seed = int(seed)
        self.path = os.fspath(path) if path is not None else None
        self.autosave = bool(autosave)
        self.created_at = time.time()
        self._lock = threading.RLock()
        self._depth = 0
        d = self.embedding_dim
        protos, rows = _Rows.fresh(np.zeros((0, d), np.float32))
        self._state = self._with_matrix(_State(
            names=(), uids=np.zeros(0, np.int64), protos=protos, protos_rows=rows, counts=np.zeros(0, np.int64),
            enrolled_at=np.zeros(0), updated_at=np.zeros(0), support={}, adapted=None, adapted_rows=None,
            adapted_fresh=None, adaptation=None, thresholds={"prototypes": None, "adapted": None}, next_uid=0,
            version=0))

    # ------------------------------------------------------------------ reading (lock-free, consistent)
    @property
    def labels(self) -> list[str]:
        return list(self._state.names)

    def __len__(self) -> int:
        return len(self._state.names)

    def __contains__(self, label) -> bool:
        return _nfc(label) in self._state.names

    def __repr__(self) -> str:
        return (f"Gallery({len(self)} classes, dim={self.embedding_dim}, metric={self.metric!r}, "
                f"adapted={self.adapted}, path={self.path!r})")

    @property
    def version(self) -> int:
        """Increases with every change (for callers that cache derived data)."""
        return self._state.version

    @property
    def adapted(self) -> bool:
        return self._state.adapted is not None

    @property
    def adaptation(self) -> dict | None:
        a = self._state.adaptation
        return dict(a) if a else None

    @property
    def thresholds(self) -> dict:
        return dict(self._state.thresholds)

    def snapshot(self) -> ClassMatrix:
        """The current classes as one immutable ``ClassMatrix`` (what ``predict`` uses)."""
        return self._state.matrix

    def prototypes(self) -> np.ndarray:
        """Read-only ``[C, d]`` class means of the raw embeddings (class order = ``labels``)."""
        return _readonly(self._state.protos)

    def counts(self) -> np.ndarray:
        return _readonly(self._state.counts)

    def adapted_weights(self) -> np.ndarray | None:
        s = self._state
        return None if s.adapted is None else _readonly(s.adapted)

    def support_set(self) -> tuple[np.ndarray, np.ndarray]:
        """All stored support embeddings ``[M, d]`` and their class indices ``[M]`` (class order = labels)."""
        s = self._state
        parts = [s.support.get(int(u), np.zeros((0, self.embedding_dim), np.float32)) for u in s.uids]
        if not parts:
            return np.zeros((0, self.embedding_dim), np.float32), np.zeros(0, np.int64)
        labels = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(parts)])
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32), labels

    @staticmethod
    def _info(s: _State, i: int) -> ClassInfo:
        sup = s.support.get(int(s.uids[i]))
        return ClassInfo(label=s.names[i], shots=int(s.counts[i]), support=0 if sup is None else len(sup),
                         enrolled_at=_utc(s.enrolled_at[i]), updated_at=_utc(s.updated_at[i]),
                         adapted=bool(s.adapted_fresh[i]) if s.adapted_fresh is not None else False)

    def classes(self) -> list[ClassInfo]:
        s = self._state
        return [self._info(s, i) for i in range(len(s.names))]

    def class_info(self, label: str) -> ClassInfo:
        """One class's ``ClassInfo`` (UnknownLabelError if it is not enrolled)."""
        s = self._state
        return self._info(s, s.index(label))

    # ------------------------------------------------------------------ changing (lock, copy-on-write)
    @contextlib.contextmanager
    def transaction(self) -> Iterator["Gallery"]:
        """Group changes: all happen (and are autosaved once) or none (state restored on any exception)."""
        with self._lock:
            before = self._state
            self._depth += 1
            try:
                yield self
                if self._depth == 1 and self.autosave and self.path and self._state is not before:
                    self._save_locked(self.path)
            except BaseException:
                self._state = before
                raise
            finally:
                self._depth -= 1

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

    def _reservoir(self, current: np.ndarray | None, new: np.ndarray, seen: int, uid: int) -> np.ndarray:
        """Algorithm R per class: after n shots every one of them is in the memory with probability cap/n.
        The draw for shot i depends only on (seed, uid, i), so reloading a gallery changes nothing."""
        cap = self.support_cap
        rows = [] if current is None else list(current)
        for j, e in enumerate(new):
            i = seen + j
            if len(rows) < cap:
                rows.append(e)
            else:
                r = int(np.random.default_rng((self.seed, uid, i)).integers(0, i + 1))
                if r < cap:
                    rows[r] = e
        arr = np.array(rows, np.float32).reshape(len(rows), self.embedding_dim)
        arr.flags.writeable = False
        return arr

    def add(self, label: str, embeddings: np.ndarray, *, now: float | None = None) -> bool:
        """Enroll embeddings ``[n, d]`` under ``label``: a new class, or more shots of an existing one
        (exact running mean). Returns True if the class is new. Bad input changes nothing."""
        label = check_label(label)
        emb = self._check_embeddings(embeddings)
        now = time.time() if now is None else float(now)
        with self.transaction():
            s = self._state
            if label in s.names:
                i = s.index(label)
                uid = int(s.uids[i])
                protos, rows = _Rows.fresh(s.protos)  # copy: published snapshots still read the old rows
                counts = s.counts.copy()
                kernels.update_prototypes(protos, counts, emb, np.full(len(emb), i, np.int64))
                support = dict(s.support)
                support[uid] = self._reservoir(s.support.get(uid), emb, int(s.counts[i]), uid)
                updated = s.updated_at.copy()
                updated[i] = now
                adapted, adapted_rows, fresh = s.adapted, s.adapted_rows, s.adapted_fresh
                if adapted is not None:  # the adapted row no longer reflects the class: re-imprint it
                    adapted, adapted_rows = _Rows.fresh(adapted)
                    adapted[i] = kernels.l2_normalize(protos[i:i + 1].copy())[0]
                    fresh = fresh.copy()
                    fresh[i] = False
                self._state = self._with_matrix(dataclasses.replace(
                    s, protos=protos, protos_rows=rows, counts=counts, support=support, updated_at=updated,
                    adapted=adapted, adapted_rows=adapted_rows, adapted_fresh=fresh, version=s.version + 1,
                    matrix=None))
                return False
            proto, count = kernels.class_prototypes(emb, np.zeros(len(emb), np.int64), 1)
            uid = s.next_uid
            protos, rows = _Rows.append(s.protos, s.protos_rows, proto)
            support = dict(s.support)
            if self.support_cap > 0:
                support[uid] = self._reservoir(None, emb, 0, uid)
            adapted, adapted_rows, fresh = s.adapted, s.adapted_rows, s.adapted_fresh
            if adapted is not None:  # imprint the new class into the adapted head
                adapted, adapted_rows = _Rows.append(adapted, adapted_rows, kernels.l2_normalize(proto))
                fresh = np.append(fresh, False)
            self._state = self._with_matrix(dataclasses.replace(
                s, names=s.names + (label,), uids=np.append(s.uids, uid), protos=protos, protos_rows=rows,
                counts=np.append(s.counts, count), enrolled_at=np.append(s.enrolled_at, now),
                updated_at=np.append(s.updated_at, now), support=support, adapted=adapted, adapted_rows=adapted_rows,
                adapted_fresh=fresh, next_uid=uid + 1, version=s.version + 1, matrix=None))
            return True

    def remove(self, label: str) -> None:
        """Forget a class (its prototype, support memory and adapted row)."""
        with self.transaction():
            s = self._state
            i = s.index(label)
            keep = np.arange(len(s.names)) != i
            protos, rows = _Rows.fresh(s.protos[keep])
            support = dict(s.support)
            support.pop(int(s.uids[i]), None)
            adapted, adapted_rows, fresh = s.adapted, s.adapted_rows, s.adapted_fresh
            if adapted is not None:
                if keep.sum() == 0:
                    adapted = adapted_rows = fresh = None
                else:
                    adapted, adapted_rows = _Rows.fresh(adapted[keep])
                    fresh = fresh[keep]
            self._state = self._with_matrix(dataclasses.replace(
                s, names=s.names[:i] + s.names[i + 1:], uids=s.uids[keep], protos=protos, protos_rows=rows,
                counts=s.counts[keep], enrolled_at=s.enrolled_at[keep], updated_at=s.updated_at[keep],
                support=support, adapted=adapted, adapted_rows=adapted_rows, adapted_fresh=fresh,
                adaptation=s.adaptation if adapted is not None else None, version=s.version + 1, matrix=None))

    def rename(self, old: str, new: str) -> None:
        new = check_label(new, "new")
        with self.transaction():
            s = self._state
            i = s.index(old)
            if new == s.names[i]:
                return
            if new in s.names:
                raise ValueError(f"`new`: a class {new!r} already exists (forget it first, or enroll its images "
                                 f"under {old!r})")
            names = s.names[:i] + (new,) + s.names[i + 1:]
            self._state = self._with_matrix(dataclasses.replace(s, names=names, version=s.version + 1, matrix=None))

    def clear(self) -> None:
        """Forget every class (settings such as support_cap and thresholds are kept)."""
        with self.transaction():
            s = self._state
            protos, rows = _Rows.fresh(np.zeros((0, self.embedding_dim), np.float32))
            self._state = self._with_matrix(dataclasses.replace(
                s, names=(), uids=np.zeros(0, np.int64), protos=protos, protos_rows=rows,
                counts=np.zeros(0, np.int64), enrolled_at=np.zeros(0), updated_at=np.zeros(0), support={},
                adapted=None, adapted_rows=None, adapted_fresh=None, adaptation=None, version=s.version + 1,
                matrix=None))

    def set_adapted(self, weights: np.ndarray, info: dict | None = None, *, expected_version: int | None = None):
        """Install adapted classifier weights ``[C, d]`` (rows in ``labels`` order). ``expected_version``: fail
        if the classes changed since the caller read them."""
        with self.transaction():
            s = self._state
            if expected_version is not None and s.version != expected_version:
                raise RuntimeError("the gallery changed while the weights were computed; run adapt again")
            w = np.asarray(weights)
            if w.shape != s.protos.shape:
                raise ValueError(f"`weights`: expected shape {list(s.protos.shape)}, got {list(w.shape)}")
            if not np.isfinite(w).all():
                raise ValueError("`weights`: contains NaN or Inf (diverged adaptation? lower lr); nothing changed")
            if len(s.names) == 0:
                raise ValueError("no classes to adapt")
            adapted, rows = _Rows.fresh(np.asarray(w, np.float32))
            info = json.loads(json.dumps(info or {}))  # JSON-able, detached copy
            self._state = self._with_matrix(dataclasses.replace(
                s, adapted=adapted, adapted_rows=rows, adapted_fresh=np.ones(len(s.names), bool), adaptation=info,
                version=s.version + 1, matrix=None))

    def clear_adapted(self) -> None:
        with self.transaction():
            s = self._state
            if s.adapted is None:
                return
            self._state = self._with_matrix(dataclasses.replace(
                s, adapted=None, adapted_rows=None, adapted_fresh=None, adaptation=None, version=s.version + 1,
                matrix=None))

    def set_threshold(self, mode: str, value: float | None) -> None:
        """Store the open-set threshold calibrated for ``mode`` (``"prototypes"`` or ``"adapted"``)."""
        if mode not in ("prototypes", "adapted"):
            raise ValueError(f"`mode`: expected 'prototypes' or 'adapted', got {mode!r}")
        if value is not None:
            value = float(value)
            if not np.isfinite(value):
                raise ValueError(f"`value`: expected a finite threshold, got {value}")
        with self.transaction():
            s = self._state
            thresholds = dict(s.thresholds)
            thresholds[mode] = value
            self._state = dataclasses.replace(s, thresholds=thresholds, version=s.version + 1)

    def _with_matrix(self, s: _State) -> _State:
        if s.adapted is not None:
            m = ClassMatrix(s.names, s.adapted, "cosine", True, s.version)
        else:
            m = ClassMatrix(s.names, s.protos, self.metric, False, s.version)
        return dataclasses.replace(s, matrix=m)

    # ------------------------------------------------------------------ persistence
    def _serialize(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        from metaedge import __version__
        s = self._state
        parts = [s.support.get(int(u), np.zeros((0, self.embedding_dim), np.float32)) for u in s.uids]
        support = (np.ascontiguousarray(np.concatenate(parts), np.float32) if parts
                   else np.zeros((0, self.embedding_dim), np.float32))
        support_labels = (np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(parts)]) if parts
                          else np.zeros(0, np.int64))
        tensors = {"prototypes": np.ascontiguousarray(s.protos), "counts": s.counts, "uids": s.uids,
                   "enrolled_at": s.enrolled_at, "updated_at": s.updated_at, "support": support,
                   "support_labels": support_labels}
        if s.adapted is not None:
            tensors["adapted_weights"] = np.ascontiguousarray(s.adapted)
            tensors["adapted_fresh"] = s.adapted_fresh.astype(np.uint8)
        tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        state = {"names": list(s.names), "next_uid": s.next_uid, "support_cap": self.support_cap, "seed": self.seed,
                 "thresholds": s.thresholds, "adaptation": s.adaptation, "created_at": self.created_at,
                 "saved_at": time.time()}
        meta = {"format": FORMAT, "schema_version": str(SCHEMA_VERSION), "bundle_fingerprint": self.fingerprint or "",
                "metric": self.metric, "embedding_dim": str(self.embedding_dim), "metaedge_version": __version__,
                "state": json.dumps(state, ensure_ascii=False, allow_nan=False)}
        # Refuse to write a state that would not load back (never replace a good file with a bad one).
        for name in ("prototypes", "support"):
            if not np.isfinite(tensors[name]).all():
                raise GalleryError(f"refusing to save: `{name}` contains NaN or Inf")
        if "adapted_weights" in tensors and not np.isfinite(tensors["adapted_weights"]).all():
            raise GalleryError("refusing to save: `adapted_weights` contains NaN or Inf")
        meta["payload_sha256"] = _payload_digest(tensors, meta)
        return tensors, meta

    def save(self, path: str | os.PathLike | None = None) -> str:
        """Write the gallery atomically to ``path`` (default: ``self.path``); returns the path written.
        A gallery without a path adopts the one given here (for later autosaves)."""
        with self._lock:
            target = os.fspath(path) if path is not None else self.path
            if target is None:
                raise ValueError("save(): this gallery has no path; pass one")
            self._save_locked(target)
            if self.path is None:
                self.path = target
            return target

    def _save_locked(self, target: str) -> None:
        from metaedge._optional import require
        st = require("safetensors.numpy", "saving a gallery")
        tensors, meta = self._serialize()
        directory = os.path.dirname(os.path.abspath(target))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"cannot save the gallery to {target!r}: directory {directory!r} does not exist")
        atomic_write_bytes(target, lambda tmp: st.save_file(tensors, tmp, metadata=meta), mode_from=target)

    def to_bytes(self) -> bytes:
        from metaedge._optional import require
        tensors, meta = self._serialize()
        return require("safetensors.numpy", "saving a gallery").save(tensors, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, fingerprint: str | None = None, embedding_dim: int | None = None,
             metric: str | None = None, autosave: bool = False) -> "Gallery":
        """Read and verify a saved gallery. ``fingerprint``/``embedding_dim``/``metric``: what the bundle in use
        says; a gallery made for another bundle is a GalleryMismatchError. Missing file: FileNotFoundError."""
        path = os.fspath(path)
        if os.path.isdir(path):
            raise GalleryError(f"{path!r} is a directory, not a gallery file")
        with open(path, "rb") as f:
            data = f.read()
        g = cls.from_bytes(data, where=path, fingerprint=fingerprint, embedding_dim=embedding_dim, metric=metric)
        g.path, g.autosave = path, bool(autosave)
        return g

    @classmethod
    def open(cls, path: str | os.PathLike, *, embedding_dim: int, metric: str = "cosine",
             fingerprint: str | None = None, support_cap: int = DEFAULT_SUPPORT_CAP, seed: int = 0,
             autosave: bool = True) -> "Gallery":
        """Load ``path`` if it exists (verified against the bundle's fingerprint/dim/metric), else a new empty
        gallery that will be written there on the first save."""
        if os.path.exists(path):
            g = cls.load(path, fingerprint=fingerprint, embedding_dim=embedding_dim, metric=metric,
                         autosave=autosave)
            if g.fingerprint is None and fingerprint is not None:
                g.fingerprint = fingerprint
            return g
        return cls(embedding_dim, metric, fingerprint, support_cap=support_cap, seed=seed, path=path,
                   autosave=autosave)

    def check_compatible(self, *, fingerprint: str | None, embedding_dim: int | None, metric: str | None,
                         where: str | None = None) -> None:
        """GalleryMismatchError unless this gallery was made with the given bundle."""
        where = where or self.path or "gallery"
        if embedding_dim is not None and int(embedding_dim) != self.embedding_dim:
            raise GalleryMismatchError(
                f"{where}: made for embeddings of dimension {self.embedding_dim}, but this bundle produces "
                f"{embedding_dim} - it belongs to another model; use a new gallery file for this bundle")
        if fingerprint is not None and self.fingerprint and fingerprint != self.fingerprint:
            raise GalleryMismatchError(
                f"{where}: made for another bundle (fingerprint {self.fingerprint[:12]}..., this bundle "
                f"{fingerprint[:12]}...); its prototypes are meaningless with this network - re-enroll into a new "
                f"gallery file")
        if metric is not None and metric != self.metric:
            raise GalleryMismatchError(f"{where}: made for metric {self.metric!r}, this bundle uses {metric!r}")

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "gallery", fingerprint: str | None = None,
                   embedding_dim: int | None = None, metric: str | None = None) -> "Gallery":
        header, meta, _ = _parse_header(data, where)
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise GalleryCorruptError(f"{where}: damaged metadata (schema_version "
                                      f"{meta.get('schema_version')!r})") from None
        if version > SCHEMA_VERSION:
            raise GalleryVersionError(f"{where}: written with gallery schema {version} by metaedge "
                                      f"{meta.get('metaedge_version', '?')}; this metaedge reads schema <= "
                                      f"{SCHEMA_VERSION}: upgrade metaedge")
        if version < 1:
            raise GalleryCorruptError(f"{where}: damaged metadata (schema_version {version})")
        from metaedge._optional import require
        st = require("safetensors.numpy", "loading a gallery")
        try:
            tensors = st.load(bytes(data))
        except Exception as exc:  # the Rust parser's errors are varied; all mean "damaged"
            raise GalleryCorruptError(f"{where}: damaged tensor data ({exc})") from None
        expected = meta.get("payload_sha256", "")
        actual = _payload_digest(tensors, meta)
        if expected != actual:
            raise GalleryCorruptError(f"{where}: checksum mismatch (stored {expected[:12] or 'none'}..., computed "
                                      f"{actual[:12]}...): the file is corrupted; restore a backup or re-enroll")
        try:
            g = cls._from_parts(tensors, meta, where)
        except GalleryError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise GalleryCorruptError(f"{where}: inconsistent contents ({type(exc).__name__}: {exc})") from None
        g.check_compatible(fingerprint=fingerprint, embedding_dim=embedding_dim, metric=metric, where=where)
        return g

    @classmethod
    def _from_parts(cls, tensors: dict, meta: dict, where: str) -> "Gallery":
        def bad(msg: str):
            raise GalleryCorruptError(f"{where}: inconsistent contents: {msg}")

        for name, (dtype, ndim) in {**_EXPECTED, **_OPTIONAL}.items():
            if name not in tensors:
                if name in _EXPECTED:
                    bad(f"tensor {name!r} is missing")
                continue
            t = tensors[name]
            if t.dtype.name != dtype or t.ndim != ndim:
                bad(f"tensor {name!r} is {t.dtype.name} {t.ndim}-d, expected {dtype} {ndim}-d")
        state = json.loads(meta["state"])
        dim, metric = int(meta["embedding_dim"]), meta["metric"]
        names = tuple(state["names"])
        c = len(names)
        protos = tensors["prototypes"]
        if protos.shape != (c, dim):
            bad(f"prototypes {list(protos.shape)} for {c} classes of dimension {dim}")
        for name in ("counts", "uids", "enrolled_at", "updated_at"):
            if tensors[name].shape != (c,):
                bad(f"{name} has shape {list(tensors[name].shape)}, expected [{c}]")
        if len(set(names)) != c:
            bad("duplicate class names")
        for n in names:
            check_label(n, "class name")
        counts, uids = tensors["counts"], tensors["uids"]
        if (counts < 1).any():
            bad("a class with no shots")
        if len(set(uids.tolist())) != c or (c and (uids.min() < 0 or uids.max() >= int(state["next_uid"]))):
            bad("class ids are not unique or out of range")
        if not np.isfinite(protos).all():
            bad("non-finite prototypes")
        support, slabels = tensors["support"], tensors["support_labels"]
        if support.ndim != 2 or support.shape[1] != dim or slabels.shape != (support.shape[0],):
            bad(f"support {list(support.shape)} / labels {list(slabels.shape)}")
        if len(slabels) and (slabels.min() < 0 or slabels.max() >= c):
            bad("support labels out of range")
        if not np.isfinite(support).all():
            bad("non-finite support embeddings")
        g = cls(dim, metric, meta.get("bundle_fingerprint") or None, support_cap=int(state["support_cap"]),
                seed=int(state["seed"]))
        g.created_at = float(state.get("created_at", time.time()))
        support_by_uid = {}
        order = np.argsort(slabels, kind="stable")  # one pass, not a scan of all rows per class
        bounds = np.cumsum(np.bincount(slabels, minlength=c))[:-1] if c else []
        per_class = np.split(np.asarray(support, np.float32)[order], bounds) if c else []
        for i in range(c):
            rows = per_class[i]
            if len(rows) > max(g.support_cap, 0) or len(rows) > counts[i]:
                bad(f"class {names[i]!r} has {len(rows)} support embeddings (cap {g.support_cap}, "
                    f"{int(counts[i])} shots)")
            if len(rows):
                rows.flags.writeable = False
                support_by_uid[int(uids[i])] = rows
        adapted = adapted_rows = fresh = None
        if "adapted_weights" in tensors:
            w = tensors["adapted_weights"]
            if w.shape != (c, dim) or not np.isfinite(w).all():
                bad(f"adapted weights {list(w.shape)}")
            if tensors.get("adapted_fresh") is None or tensors["adapted_fresh"].shape != (c,):
                bad("adapted_fresh missing or of the wrong shape")
            adapted, adapted_rows = _Rows.fresh(w)
            fresh = tensors["adapted_fresh"].astype(bool)
        p, rows = _Rows.fresh(protos)
        thresholds = {"prototypes": None, "adapted": None}
        thresholds.update({k: (None if v is None else float(v)) for k, v in (state.get("thresholds") or {}).items()
                           if k in thresholds})
        g._state = g._with_matrix(_State(
            names=names, uids=np.array(uids, np.int64), protos=p, protos_rows=rows, counts=np.array(counts, np.int64),
            enrolled_at=np.array(tensors["enrolled_at"]), updated_at=np.array(tensors["updated_at"]),
            support=support_by_uid, adapted=adapted, adapted_rows=adapted_rows, adapted_fresh=fresh,
            adaptation=state.get("adaptation"), thresholds=thresholds, next_uid=int(state["next_uid"]), version=0))
        return g
