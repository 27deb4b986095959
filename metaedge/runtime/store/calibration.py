"""The open-set record of a gallery: the calibration set (the embeddings its unknown thresholds were calibrated
from, table ``calibration``), each head's threshold (``thresholds``) and how it was set (``open_set``), and the
changes of them - calibrate, set by hand, re-calibrate the adapted head when ``adapt`` installs a new one,
drop it at a reset.

Thresholds live per head because scores do: a euclidean gallery's prototype scores are minus squared distances,
its adapted head's are cosine similarities, and even on one scale a fine-tuned head moves the scores. Keeping
the calibration embeddings (not just the threshold) is what lets ``adapt`` put the new head's threshold at the
same target false-accept rate, from the same images, inside the transaction that installs the head.

:class:`OpenSet` is a mixin of :class:`~metaedge.runtime.store.gallery.Gallery` (like ``Changes``).
"""
from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from metaedge.runtime.openset import (HEADS, CalibrationSet, HeadCalibration, OpenSetState, calibrate_head,
                                      open_set_state)
from metaedge.runtime.store.checks import MAX_CALIBRATION_ROWS
from metaedge.runtime.store.db import _crc
from metaedge.runtime.store.errors import GalleryCorruptError
from metaedge.runtime.store.labels import nfc
from metaedge.runtime.store.state import State

__all__ = ["OpenSet", "write_calibration", "load_calibration"]

ROLES = ("known", "other")


def write_calibration(store, cset: CalibrationSet) -> None:
    """Replace the stored calibration set: one row per class of known images (uid NULL: unlabelled) and one of
    other images."""
    conn = store.conn
    conn.execute("DELETE FROM calibration")
    groups = [("known", None if uid < 0 else int(uid), cset.known[cset.known_uids == uid])
              for uid in np.unique(cset.known_uids)]
    groups.append(("other", None, cset.other))
    for role, uid, rows in groups:
        if len(rows):
            blob = np.ascontiguousarray(rows, np.float32).tobytes()
            conn.execute("INSERT INTO calibration (role, uid, rows, embeddings, crc) VALUES (?, ?, ?, ?, ?)",
                         (role, uid, len(rows), blob, _crc(f"{role}|{uid}|{len(rows)}", blob)))


def load_calibration(store) -> CalibrationSet | None:
    """The stored calibration set (None if there is none), every row's size, checksum and values checked."""
    if store.schema < 3:
        return None
    d, where = store.dim, store.path
    bad = store.conn.execute(
        "SELECT seq, role, rows, length(embeddings) FROM calibration WHERE NOT (role IN ('known', 'other') AND "
        "typeof(rows) = 'integer' AND rows BETWEEN 1 AND ? AND typeof(embeddings) = 'blob' AND "
        "length(embeddings) = rows * ? AND (uid IS NULL OR (typeof(uid) = 'integer' AND uid >= 0)) AND "
        "typeof(crc) = 'integer') LIMIT 1", (MAX_CALIBRATION_ROWS, 4 * d)).fetchone()
    if bad:
        raise GalleryCorruptError(f"{where}: calibration row {bad[0]}: role {bad[1]!r}, {bad[2]!r} rows in {bad[3]!r} "
                                  f"bytes (dimension {d}, at most {MAX_CALIBRATION_ROWS} rows)")
    totals = dict(store.conn.execute("SELECT role, sum(rows) FROM calibration GROUP BY role").fetchall())
    if any(v > MAX_CALIBRATION_ROWS for v in totals.values()):
        raise GalleryCorruptError(f"{where}: calibration set of {totals} rows (at most {MAX_CALIBRATION_ROWS} each)")
    parts: dict[str, list] = {"known": [], "other": []}
    uids = []
    for role, uid, rows, blob, crc in store.conn.execute("SELECT role, uid, rows, embeddings, crc FROM calibration "
                                                         "ORDER BY seq"):
        if crc != _crc(f"{role}|{uid}|{rows}", blob):
            raise GalleryCorruptError(f"{where}: a calibration row ({role}) fails its checksum (damaged file)")
        arr = np.frombuffer(blob, np.float32).reshape(rows, d)
        if not np.isfinite(arr).all():
            raise GalleryCorruptError(f"{where}: non-finite calibration embeddings")
        parts[role].append(arr)
        if role == "known":
            uids.append(np.full(rows, -1 if uid is None else uid, np.int64))
    if not parts["known"] and not parts["other"]:
        return None

    def stack(arrays):
        return np.ascontiguousarray(np.concatenate(arrays)) if arrays else np.zeros((0, d), np.float32)
    return CalibrationSet(stack(parts["known"]), np.concatenate(uids) if uids else np.zeros(0, np.int64),
                          stack(parts["other"]))


def _sample(n: int, seed: int) -> np.ndarray:
    """Rows kept of ``n`` (all, or a seeded sample of MAX_CALIBRATION_ROWS in their order)."""
    if n <= MAX_CALIBRATION_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_CALIBRATION_ROWS, replace=False))


class OpenSet:
    """The open-set API of a gallery (see the module docstring)."""

    def open_set(self) -> OpenSetState:
        """The open-set state: the head predictions use, its stored threshold and how it was set, each head's
        record, and the stored calibration set's settings (a classifier adds its bundle manifest's threshold
        and overrides: ``EdgeClassifier.open_set()``)."""
        adapted, thresholds, record = self.open_set_record()
        return open_set_state(adapted=adapted, metric=self.metric, thresholds=thresholds, record=record)

    def open_set_record(self) -> tuple[bool, dict, dict]:
        """(adapted, thresholds per head, the stored open-set record), read consistently."""
        with self._reading() as s:
            return s.adapted is not None, dict(s.thresholds), self._store.meta().open_set

    def calibration_set(self) -> CalibrationSet | None:
        """The embeddings the thresholds were calibrated from (None: calibrated without them, or never)."""
        with self._reading():
            return load_calibration(self._store)

    def set_calibration(self, known, other: np.ndarray | None = None, target_fpr: float = 0.05
                        ) -> dict[str, HeadCalibration]:
        """Calibrate the unknown threshold of every head (the prototypes, and the adapted head if there is one)
        from embeddings, at ``target_fpr``, and keep the embeddings for re-calibrating later heads.

        ``known``: ``{label: embeddings [n, d]}`` of enrolled classes, or an array of embeddings of enrolled
        classes without labels. ``other``: embeddings of images of none of the classes; without them the
        negatives are impostor scores (needs the labelled form and >= 2 classes). At most
        ``MAX_CALIBRATION_ROWS`` known and as many other embeddings are kept (a seeded sample of more); the
        thresholds are computed from what is kept. Returns ``{head: HeadCalibration}``."""
        target_fpr = float(target_fpr)
        if not 0 < target_fpr < 1:
            raise ValueError(f"`target_fpr`: expected a number in (0, 1), got {target_fpr}")
        other = None if other is None else self._check_embeddings(other, "other")
        with self.transaction():
            s, store = self._work, self._store
            if len(s) == 0:
                raise ValueError("no classes enrolled yet; enroll some before calibrating")
            if isinstance(known, Mapping):
                if not known:
                    raise ValueError("`known`: empty mapping; pass {label: embeddings} of enrolled classes")
                embs, uids = [], []
                for label, emb in known.items():
                    uid = store.uid_of(nfc(label)) if isinstance(label, str) else None
                    if uid is None:
                        raise ValueError(f"`known`: {label!r} is not an enrolled class")
                    embs.append(self._check_embeddings(emb, f"known[{label!r}]"))
                    uids.append(np.full(len(embs[-1]), uid, np.int64))
                known_emb, known_uids = np.concatenate(embs), np.concatenate(uids)
            else:
                known_emb = self._check_embeddings(known, "known")
                known_uids = np.full(len(known_emb), -1, np.int64)
            negatives = "others" if other is not None else "impostors"
            keep = _sample(len(known_emb), self.seed)
            other_keep = _sample(0 if other is None else len(other), self.seed + 1)
            cset = CalibrationSet(known_emb[keep], known_uids[keep],
                                  other[other_keep] if other is not None else np.zeros((0, self.embedding_dim),
                                                                                       np.float32))
            results = self._calibrate_heads(s, cset, target_fpr, negatives)
            if "prototypes" not in results:
                raise ValueError("no negatives to calibrate on: pass images of none of the classes (`other`), or "
                                 "labelled images of enrolled classes with at least 2 classes enrolled")
            now = time.time()
            thresholds = {h: results[h].threshold if h in results else None for h in HEADS}
            record = {"heads": {h: {"how": "calibrated", "at": now, **_figures(r)} for h, r in results.items()},
                      "calibration": {"negatives": negatives, "target_fpr": target_fpr, "at": now,
                                      "version": self._gen, "classes": len(s), "known": len(cset.known),
                                      "other": len(cset.other), "known_given": len(known_emb),
                                      "other_given": 0 if other is None else len(other)}}
            write_calibration(store, cset)
            store.set_meta(thresholds=thresholds, open_set=record)
            self._audit("threshold", detail={"calibrated": True, "target_fpr": target_fpr, "negatives": negatives,
                                             "thresholds": thresholds, "known": len(cset.known),
                                             "other": len(cset.other)})
            self._changed(s.with_settings(self._gen, thresholds=thresholds))
        return results

    def _calibrate_heads(self, s: State, cset: CalibrationSet, target_fpr: float, negatives: str,
                         heads=HEADS) -> dict[str, HeadCalibration]:
        out = {}
        for head in heads:
            if head == "adapted" and s.adapted is None:
                continue
            weights, metric = (s.protos, self.metric) if head == "prototypes" else (s.adapted, "cosine")
            r = calibrate_head(head, np.ascontiguousarray(weights, np.float32), metric, s.uids, cset, target_fpr,
                               negatives)
            if r is not None:
                out[head] = r
        return out

    def set_threshold(self, mode: str, value: float | None) -> None:
        """Set the open-set threshold of head ``mode`` (``"prototypes"`` or ``"adapted"``) by hand (``None``
        removes it). A hand-set threshold is kept as it is by later ``adapt`` runs."""
        if mode not in HEADS:
            raise ValueError(f"`mode`: expected 'prototypes' or 'adapted', got {mode!r}")
        if value is not None:
            value = float(value)
            if not np.isfinite(value):
                raise ValueError(f"`value`: expected a finite threshold, got {value}")
        with self.transaction():
            s = self._work
            thresholds = dict(s.thresholds)
            thresholds[mode] = value
            record = self._store.meta().open_set
            if value is None:
                record["heads"].pop(mode, None)
            else:
                record["heads"][mode] = {"how": "set", "at": time.time()}
            self._store.set_meta(thresholds=thresholds, open_set=record)
            self._audit("threshold", detail={"mode": mode, "value": value})
            self._changed(s.with_settings(self._gen, thresholds=thresholds))

    def _adapted_threshold(self, s: State, adapted: np.ndarray | None) -> tuple[dict, dict | None]:
        """Inside the transaction that installs the adapted head ``adapted`` (None: removes it) on state ``s``:
        the new thresholds, written with the open-set record, and the adapted head's record entry (None: it has
        no threshold). A calibrated threshold is re-calibrated from the stored set at its target false-accept
        rate; a hand-set one is kept; one calibrated without a stored set is dropped (it was another head's)."""
        store = self._store
        record = store.meta().open_set
        thresholds = dict(s.thresholds)
        entry = record["heads"].get("adapted")
        calibration = record["calibration"]
        if entry is not None and entry["how"] == "set":
            return thresholds, {**entry, "threshold": thresholds["adapted"]}
        thresholds["adapted"], entry = None, None
        cset = load_calibration(store) if adapted is not None and calibration is not None else None
        if cset is not None:
            new = s.with_adapted(adapted, np.zeros(len(s), bool), None, s.generation)
            r = self._calibrate_heads(new, cset, calibration["target_fpr"], calibration["negatives"], ("adapted",))
            if r:
                thresholds["adapted"] = r["adapted"].threshold
                entry = {"how": "recalibrated", "at": time.time(), **_figures(r["adapted"])}
        if entry is None:
            record["heads"].pop("adapted", None)
        else:
            record["heads"]["adapted"] = entry
        store.set_meta(thresholds=thresholds, open_set=record)
        return thresholds, None if entry is None else {**entry, "threshold": thresholds["adapted"]}


def _figures(r: HeadCalibration) -> dict:
    return {k: v for k, v in r.summary().items() if k != "threshold"}
