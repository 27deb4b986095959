"""The changes of a gallery: enroll, forget, rename, clear, adapt - each one transaction (thresholds and the
calibration set: :mod:`.calibration`).

A mixin of :class:`~metaedge.runtime.store.gallery.Gallery` (the class that owns the store, the in-memory state and
:meth:`transaction`): every method here runs inside a transaction, computes its rows from the caught-up working
state, writes only them through the store, appends to the audit trail and hands the new state to
``_changed``.
"""
from __future__ import annotations

import json
import time

import numpy as np

from metaedge import kernels
from metaedge.runtime.fileio import parse_json
from metaedge.runtime.store.checks import MAX_SHOTS, MAX_TIME
from metaedge.runtime.store.errors import UnknownLabelError
from metaedge.runtime.store.labels import check_label, nfc
from metaedge.runtime.store.state import ClassRecord, State, empty_state, imprint, reservoir

__all__ = ["Changes", "check_time"]


def check_time(now, what: str = "now") -> float:
    try:
        v = float(now)
    except (TypeError, ValueError):
        raise TypeError(f"`{what}`: expected a number (Unix time), got {type(now).__name__}") from None
    if not np.isfinite(v) or not 0 <= v <= MAX_TIME:
        raise ValueError(f"`{what}`: expected a Unix time in [0, {MAX_TIME:.0f}], got {now!r}")
    return v


class Changes:
    """The mutation API of a gallery (see the module docstring)."""

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
        now = time.time() if now is None else check_time(now)
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
                    classes: np.ndarray | None = None) -> dict | None:
        """Install adapted classifier weights: rows in ``labels`` order, or - with ``classes`` (the uids of a
        :class:`TrainingSet`) - in that order. ``expected_version``: the version the weights were computed
        from; classes enrolled, re-enrolled or forgotten since are imprinted (as if changed after the adapt) when
        ``classes`` is given, else the change is refused with a RuntimeError.

        The adapted head's unknown threshold is set in the same transaction: re-calibrated from the stored
        calibration set at its target false-accept rate, kept if set by hand, else none. Returns its open-set
        record (``{"threshold", "how", figures...}``), or None when the head has no threshold."""
        w = np.asarray(weights)
        if w.dtype.kind != "f" or w.ndim != 2 or w.shape[1] != self.embedding_dim:
            raise ValueError(f"`weights`: expected float [C, {self.embedding_dim}], got {w.dtype} {list(w.shape)}")
        if not np.isfinite(w).all():
            raise ValueError("`weights`: contains NaN or Inf (diverged adaptation? lower lr); nothing changed")
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
            thresholds, head = self._adapted_threshold(s, adapted)
            self._audit("adapt", detail={**{k: v for k, v in info.items() if k != "losses"},
                                         "classes": len(s), "trained": int(fresh.sum()),
                                         "unknown_threshold": None if head is None else head["threshold"],
                                         "threshold_how": None if head is None else head["how"]})
            self._changed(s.with_adapted(adapted, fresh, info, self._gen).with_settings(self._gen,
                                                                                        thresholds=thresholds))
        return head

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
            thresholds, _ = self._adapted_threshold(s, None)
            self._audit("reset_adaptation")
            self._changed(s.with_adapted(None, fresh, None, self._gen).with_settings(self._gen,
                                                                                     thresholds=thresholds))
