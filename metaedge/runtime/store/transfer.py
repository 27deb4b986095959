"""Classes in and out of a gallery: class packs, copies of the store, conversion of old gallery files.

A mixin of :class:`~metaedge.runtime.store.gallery.Gallery`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from metaedge.runtime.fileio import as_write_error, atomic_write
from metaedge.runtime.store import files
from metaedge.runtime.store.audit import default_actor
from metaedge.runtime.store.checks import MAX_SHOTS
from metaedge.runtime.store.db import Store
from metaedge.runtime.store.errors import (GalleryError, GalleryMismatchError, GalleryWriteError,
                                           LabelConflictError)
from metaedge.runtime.store.packs import ClassSet, pack_bytes, read_pack
from metaedge.runtime.store.changes import check_time
from metaedge.runtime.store.state import ClassRecord, imprint

__all__ = ["Transfers", "ImportReport", "CONFLICT_POLICIES", "populate_from_legacy"]

CONFLICT_POLICIES = ("fail", "skip", "replace", "merge")


@dataclass(frozen=True)
class ImportReport:
    added: list[str]
    replaced: list[str]
    merged: list[str]
    skipped: list[str]          # conflicts left as they were (policy "skip")
    unchanged: list[str]        # identical to the class already here

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Transfers:
    """Class packs, copies and conversions of a gallery (see the module docstring)."""

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
        now = time.time() if now is None else check_time(now)
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
                raise as_write_error(exc, backup, GalleryWriteError) from None
            except BaseException:
                files._discard(tmp)
                raise
            files.install(tmp, target, replace=True)
        elif not files.install(tmp, target):
            raise ValueError(f"{target}: appeared while the conversion was written; nothing replaced")
        return target


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
