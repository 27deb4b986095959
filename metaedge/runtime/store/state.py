"""The in-memory side of a gallery: an immutable :class:`State` per store generation, and the class maths.

A ``State`` is what readers see without a lock: labels, the per-class records, the prototype matrix and the
adapted head, the settings, and - made on first use - the :class:`ClassMatrix` predict scores against. A
change builds a new ``State`` from the old one; matrices are shared with it through :class:`Rows` (an appended
class needs no copy, a rewritten row copies once per transaction). Support embeddings are not held here: they
live in the store and are read when a change or ``adapt`` needs them.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metaedge import kernels
from metaedge.runtime.store.errors import UnknownLabelError
from metaedge.runtime.store.labels import nfc
from metaedge.runtime.store.matrix import ClassMatrix, LabelRows, Rows

__all__ = ["State", "ClassInfo", "ClassRecord", "RECORD", "reservoir", "imprint", "build_state", "empty_state"]

# One record per class, in enrollment order (= ascending uid).
RECORD = np.dtype([("shots", "<i8"), ("enrolled_at", "<f8"), ("updated_at", "<f8"), ("vector_gen", "<i8"),
                   ("support", "<i8"), ("fresh", "?")])


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
class ClassRecord:
    """One class as the store holds it (a row of ``classes``)."""
    uid: int
    label: str
    shots: int
    prototype: np.ndarray           # float32 [d]
    enrolled_at: float
    updated_at: float
    adapted: np.ndarray | None      # float32 [d]: its row of the adapted head
    fresh: bool                     # adapted row from the last adapt() (not re-imprinted since)
    support: int                    # support embeddings kept
    vector_gen: int                 # generation of the last change of its prototype


def reservoir(current: np.ndarray | None, new: np.ndarray, seen: int, uid: int, cap: int, seed: int,
              dim: int) -> np.ndarray:
    """Algorithm R per class: after n shots every one of them is in the memory with probability cap/n.
    The draw for shot i depends only on (seed, uid, i), so the memory does not depend on how the shots were
    split into enroll calls, nor on which process enrolled them."""
    rows = [] if current is None else list(current)
    for j, e in enumerate(new):
        i = seen + j
        if len(rows) < cap:
            rows.append(e)
        else:
            r = int(np.random.default_rng((seed, uid, i)).integers(0, i + 1))
            if r < cap:
                rows[r] = e
    return np.array(rows, np.float32).reshape(len(rows), dim)


@dataclass(frozen=True)
class State:
    """The classes at one store generation. Per class (enrollment order): ``labels`` (the first ``count`` items of
    a list shared with other states), ``uids`` (int64, ascending), ``rec`` (RECORD), ``protos`` and ``adapted``
    (float32 [C, d]); the settings; and caches made on first use (``names``, ``matrix``, ``positions``)."""
    generation: int
    count: int
    labels: LabelRows
    uids: np.ndarray                # int64 [C], ascending (a view of uid_rows.buf)
    uid_rows: Rows
    rec: np.ndarray                 # RECORD [C] (a view of rec_rows.buf)
    rec_rows: Rows
    protos: np.ndarray              # float32 [C, d]
    protos_rows: Rows
    adapted: np.ndarray | None      # float32 [C, d] or None (not adapted)
    adapted_rows: Rows | None
    adaptation: dict | None         # settings and losses of the last adapt()
    thresholds: dict                # {"prototypes": float|None, "adapted": float|None}
    metric: str
    # made on first use, then kept (a cache, not state)
    matrix: ClassMatrix | None = field(default=None, compare=False)
    positions: dict | None = field(default=None, compare=False)
    hint: tuple | None = field(default=None, compare=False)  # (label, index) of the class the last change touched

    def __len__(self) -> int:
        return self.count

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """The labels as a tuple (made once per state, when a reader asks)."""
        return tuple(self.labels.items[:self.count])

    def label(self, i: int) -> str:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return self.labels.items[i]

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> ClassMatrix:
        m = self.matrix
        if m is None:
            if self.adapted is not None:
                m = ClassMatrix(self.names, self.adapted, "cosine", True, self.generation)
                self.adapted_rows.shared = True
            else:
                m = ClassMatrix(self.names, self.protos, self.metric, False, self.generation)
                self.protos_rows.shared = True
            object.__setattr__(self, "matrix", m)
        return m

    def share(self) -> "State":
        """Mark every buffer as seen by someone else (rewrites must copy); returns self."""
        self.labels.shared = self.uid_rows.shared = self.rec_rows.shared = self.protos_rows.shared = True
        if self.adapted_rows is not None:
            self.adapted_rows.shared = True
        return self

    def find(self, label: str) -> int | None:
        label = nfc(label)
        if self.hint is not None and self.hint[0] == label:  # the class just changed: no index of all labels
            return self.hint[1]
        p = self.positions
        if p is None:
            p = {name: i for i, name in enumerate(self.names)}
            object.__setattr__(self, "positions", p)
        return p.get(label)

    def index(self, label: str) -> int:
        i = self.find(label)
        if i is None:
            raise UnknownLabelError(f"no class {label!r} in the gallery")
        return i

    def position(self, uid: int) -> int | None:
        i = int(np.searchsorted(self.uids, uid))
        return i if i < self.count and int(self.uids[i]) == uid else None

    def info(self, i: int) -> ClassInfo:
        r = self.rec[i]
        return ClassInfo(label=self.label(i), shots=int(r["shots"]), support=int(r["support"]),
                         enrolled_at=_utc(r["enrolled_at"]), updated_at=_utc(r["updated_at"]),
                         adapted=bool(r["fresh"]) if self.adapted is not None else False)

    def record(self, i: int) -> ClassRecord:
        r = self.rec[i]
        return ClassRecord(int(self.uids[i]), self.label(i), int(r["shots"]), self.protos[i].copy(),
                           float(r["enrolled_at"]), float(r["updated_at"]),
                           None if self.adapted is None else self.adapted[i].copy(), bool(r["fresh"]),
                           int(r["support"]), int(r["vector_gen"]))

    # ------------------------------------------------------------------ building new states
    def _next(self, **changes) -> "State":
        return dataclasses.replace(self, **{"matrix": None, "positions": None, "hint": None, **changes})

    def with_generation(self, generation: int) -> "State":
        """The same classes as of another store generation (nothing changed that this state shows)."""
        return self._next(generation=generation)

    def upsert(self, records: list[ClassRecord], generation: int) -> "State":
        """Rewrite the classes of ``records`` that exist here and append the others (in uid order). Rows are
        copied only where their contents change (a rename copies no matrix)."""
        s = self
        labels, count = s.labels, s.count
        uids, uid_rows = s.uids, s.uid_rows
        rec, rec_rows = s.rec, s.rec_rows
        protos, protos_rows = s.protos, s.protos_rows
        adapted, adapted_rows = s.adapted, s.adapted_rows
        new, hint = [], None
        for r in records:
            i = s.position(r.uid)
            if i is None:
                new.append(r)
                continue
            rec, rec_rows = Rows.writable(rec, rec_rows)
            rec[i] = _record_row(r)
            if not np.array_equal(protos[i], r.prototype):
                protos, protos_rows = Rows.writable(protos, protos_rows)
                protos[i] = r.prototype
            if adapted is not None:
                row = r.adapted if r.adapted is not None else imprint(r.prototype)
                if not np.array_equal(adapted[i], row):
                    adapted, adapted_rows = Rows.writable(adapted, adapted_rows)
                    adapted[i] = row
            if labels.items[i] != r.label:
                labels = LabelRows.writable(labels, count)
                labels.items[i] = r.label
            hint = (r.label, i)
        for r in sorted(new, key=lambda r: r.uid):
            uids, uid_rows = Rows.append(uids, uid_rows, np.array([r.uid], np.int64))
            rec, rec_rows = Rows.append(rec, rec_rows, np.array([_record_row(r)], RECORD))
            protos, protos_rows = Rows.append(protos, protos_rows, r.prototype[None])
            if adapted is not None:
                row = r.adapted if r.adapted is not None else imprint(r.prototype)
                adapted, adapted_rows = Rows.append(adapted, adapted_rows, row[None])
            labels = LabelRows.append(labels, count, r.label)
            hint = (r.label, count)
            count += 1
        return s._next(generation=generation, count=count, labels=labels, uids=uids, uid_rows=uid_rows, rec=rec,
                       rec_rows=rec_rows, protos=protos, protos_rows=protos_rows, adapted=adapted,
                       adapted_rows=adapted_rows, hint=hint if len(records) == 1 else None)

    def without(self, uids: set[int], generation: int) -> "State":
        """These classes removed (uids not here are ignored): one copy of each array, no temporaries."""
        drop = np.isin(self.uids, np.fromiter(uids, np.int64, len(uids)))
        if not drop.any():
            return self.with_generation(generation)
        keep = ~drop
        n = int(keep.sum())
        # the runs of kept rows: a few slice copies (memcpy speed), where a mask would gather row by row
        edges = np.flatnonzero(np.diff(np.concatenate([[False], keep, [False]]).astype(np.int8)))
        runs = list(zip(edges[::2].tolist(), edges[1::2].tolist()))

        def kept(a: np.ndarray) -> tuple[np.ndarray, Rows]:
            buf = np.empty((Rows.room(n), *a.shape[1:]), a.dtype)
            at = 0
            for start, stop in runs:
                buf[at:at + stop - start] = a[start:stop]
                at += stop - start
            return buf[:n], Rows(buf, n)
        uid_view, uid_rows = kept(self.uids)
        rec, rec_rows = kept(self.rec)
        protos, protos_rows = kept(self.protos)
        adapted = adapted_rows = None
        adaptation = self.adaptation
        if self.adapted is not None and n:
            adapted, adapted_rows = kept(self.adapted)
        elif self.adapted is not None:
            adaptation = None
        labels = LabelRows(list(itertools.compress(self.labels.items[:self.count], keep.tolist())))
        return self._next(generation=generation, count=n, labels=labels, uids=uid_view, uid_rows=uid_rows, rec=rec,
                          rec_rows=rec_rows, protos=protos, protos_rows=protos_rows, adapted=adapted,
                          adapted_rows=adapted_rows, adaptation=adaptation)

    def with_adapted(self, adapted: np.ndarray | None, fresh: np.ndarray, adaptation: dict | None,
                     generation: int) -> "State":
        """A new adapted head (``None``: back to prototypes) with its per-class fresh flags."""
        rec, rec_rows = Rows.fresh(self.rec)
        rec["fresh"] = fresh
        adapted_rows = None
        if adapted is not None:
            adapted, adapted_rows = Rows.fresh(np.asarray(adapted, np.float32))
        return self._next(generation=generation, rec=rec, rec_rows=rec_rows, adapted=adapted,
                          adapted_rows=adapted_rows, adaptation=adaptation)

    def with_settings(self, generation: int, **settings: Any) -> "State":
        """New thresholds and/or adaptation info (``thresholds=``, ``adaptation=``)."""
        return self._next(generation=generation, **settings)


def _record_row(r: ClassRecord):
    return (r.shots, r.enrolled_at, r.updated_at, r.vector_gen, r.support, r.fresh)


def imprint(prototype: np.ndarray) -> np.ndarray:
    """A class's row of an adapted head before it was trained on: its normalised prototype."""
    return kernels.l2_normalize(np.array(prototype, np.float32)[None])[0]


def build_state(generation: int, names: list[str], uids: np.ndarray, rec: np.ndarray, protos: np.ndarray,
                adapted: np.ndarray | None, adaptation: dict | None, thresholds: dict, metric: str) -> State:
    """A state over freshly loaded arrays (``uids`` int64 [C] ascending, ``rec`` RECORD [C],
    ``protos``/``adapted`` float32 [C, d])."""
    uids, uid_rows = Rows.fresh(np.asarray(uids, np.int64))
    rec, rec_rows = Rows.fresh(rec)
    protos, protos_rows = Rows.fresh(np.asarray(protos, np.float32))
    adapted_rows = None
    if adapted is not None:
        adapted, adapted_rows = Rows.fresh(np.asarray(adapted, np.float32))
    return State(generation, len(names), LabelRows(list(names)), uids, uid_rows, rec, rec_rows, protos, protos_rows,
                 adapted, adapted_rows, adaptation, dict(thresholds), metric)


def empty_state(dim: int, metric: str, generation: int = 0, thresholds: dict | None = None) -> State:
    return build_state(generation, [], np.zeros(0, np.int64), np.zeros(0, RECORD), np.zeros((0, dim), np.float32),
                       None, None, thresholds or {"prototypes": None, "adapted": None}, metric)
