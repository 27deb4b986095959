"""A gallery's compact class matrices: the int8 copy (``metaedge.compact``) kept in step with its states, so large
galleries are matched below the float32 bandwidth floor - exactly.

One :class:`~metaedge.compact.CompactClassMatrix` per scored matrix (the prototypes, and the adapted head when
there is one), made the first time a snapshot of a large enough gallery is scored (the matching policy: from
``AUTO_COMPACT_MIN_BYTES`` of float32 classes, or ``METAEDGE_MATCHING`` / ``Gallery.matching``). When a later
snapshot is made, the copy is brought up to that state by a diff - classes added, removed, or whose vectors
changed (the per-class generation the store records) - each O(d), never a rebuild; an adapt (a new head)
re-encodes the head's copy. The diff runs on whatever state is snapshotted, so rolled-back transactions and
other processes' changes need nothing special.

A snapshot scores through its copy at the version it was bound to; if a newer snapshot changed the copy since,
``topk_at_version`` says so and the frame is scored from the snapshot's own float32 rows instead: exact either
way. Results are identical to ``kernels.topk`` on the snapshot's rows (docs/matching.md).
"""
from __future__ import annotations

import threading

import numpy as np

from metaedge import kernels

__all__ = ["CompactMatching"]


class _Copy:
    """One compact matrix and which class sits at each of its rows (uid, and the vector generation it holds)."""
    __slots__ = ("matrix", "uids", "gens", "head")

    def __init__(self, matrix):
        self.matrix = matrix
        self.uids = np.zeros(0, np.int64)
        self.gens = np.zeros(0, np.int64)
        self.head = None  # for the adapted head: the adaptation settings the rows come from


class CompactMatching:
    """The compact copies of one gallery (see the module docstring). ``method``: ``"auto"``, ``"compact"`` or
    ``"fp32"`` (None: the ``METAEDGE_MATCHING`` environment variable, else ``"auto"``)."""

    def __init__(self, metric: str, dim: int, method: str | None = None):
        self.metric, self.dim = metric, dim
        self.method = method
        self._copies: dict[str, _Copy] = {}
        self._lock = threading.Lock()

    def _wanted(self, rows: np.ndarray) -> bool:
        from metaedge.compact import AUTO_COMPACT_MIN_BYTES, MATCHING_METHODS, _method_from_env
        method = self.method or _method_from_env()
        if method not in MATCHING_METHODS:
            raise ValueError(f"`matching`: expected one of {MATCHING_METHODS}, got {method!r}")
        if method == "fp32" or len(rows) == 0:
            return False
        return method == "compact" or rows.nbytes >= AUTO_COMPACT_MIN_BYTES

    def bind(self, state, matrix) -> None:
        """Attach the compact per-frame top-k to ``matrix``, the freshly made snapshot of ``state``, when the
        policy wants it for this size (else leave the snapshot's float32 matcher)."""
        adapted = state.adapted is not None
        rows = state.adapted[:state.count] if adapted else state.protos[:state.count]
        kind = "adapted" if adapted else "prototypes"
        if not self._wanted(rows):
            self._copies.pop(kind, None)  # (a gallery that shrank below the switch point frees its copy)
            return
        with self._lock:
            version, order, compact = self._sync(kind, state, rows, adapted)
        weights, metric = matrix.kernel_weights, matrix.metric

        def compact_topk(queries, k, _compact=compact, _version=version, _order=order):
            got = _compact.topk_at_version(_version, queries, k)
            if got is None:  # the copy moved on to a newer state: this snapshot's own rows, still exact
                return kernels.topk(queries, weights, k, metric)
            scores, indices = got
            return scores, _order[indices]
        object.__setattr__(matrix, "host_topk", compact_topk)
        object.__setattr__(matrix, "compact", compact)

    def _sync(self, kind: str, state, rows: np.ndarray, adapted: bool):
        """The copy of ``kind`` brought to ``state``: (its version, compact index -> state index, matrix)."""
        from metaedge.compact import CompactClassMatrix
        metric = "cosine" if adapted else self.metric
        copy = self._copies.get(kind)
        uids = state.uids[:state.count]
        gens = state.rec["vector_gen"][:state.count]
        head = dict(state.adaptation or {}) if adapted else None  # (compared by value: a reload is not a new head)
        if copy is None or (adapted and copy.head != head):
            # first use, or a new adapted head (every row changed): encode the rows once
            copy = _Copy(CompactClassMatrix.from_rows(np.ascontiguousarray(rows), metric,
                                                      capacity=max(16, len(rows) + len(rows) // 8),
                                                      method="compact"))
            copy.uids, copy.gens, copy.head = uids.copy(), gens.copy(), head
            self._copies[kind] = copy
        else:
            self._apply_diff(copy, uids, gens, rows)
        # state index of each compact row: the state keeps uids ascending
        order = np.searchsorted(uids, copy.uids)
        return copy.matrix.version, order, copy.matrix

    @staticmethod
    def _apply_diff(copy: _Copy, uids: np.ndarray, gens: np.ndarray, rows: np.ndarray) -> None:
        m = copy.matrix
        # removed: in the copy, not in the state (swap-removes: the last row moves into the hole)
        gone = np.flatnonzero(~np.isin(copy.uids, uids))
        if len(gone):
            c_uids, c_gens = list(copy.uids), list(copy.gens)
            for i in sorted(gone.tolist(), reverse=True):  # from the end: earlier holes stay valid
                moved = m.remove(i)
                if moved is not None:
                    c_uids[i], c_gens[i] = c_uids[moved], c_gens[moved]
                c_uids.pop()
                c_gens.pop()
            copy.uids, copy.gens = np.asarray(c_uids, np.int64), np.asarray(c_gens, np.int64)
        # changed: same class, another vector generation
        pos = np.searchsorted(uids, copy.uids)
        if len(pos):
            changed = np.flatnonzero(gens[pos] != copy.gens)
            if len(changed):
                m.replace(changed, rows[pos[changed]])
                copy.gens[changed] = gens[pos[changed]]
        # added: in the state, not in the copy (appended in state order)
        new = np.flatnonzero(~np.isin(uids, copy.uids))
        if len(new):
            m.add(rows[new])
            copy.uids = np.concatenate([copy.uids, uids[new]])
            copy.gens = np.concatenate([copy.gens, gens[new]])
