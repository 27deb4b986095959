"""The seam between the server and the gallery's audit trail: who made a change, and the history.

Every change the server makes runs inside ``trail.change(actor, op, ...)`` and ``GET /v1/history`` reads
``trail.history()``; nothing else in the server knows how the gallery records changes.

* A gallery with an audit trail of its own (the shared SQLite store: ``Gallery.acting_as(actor)`` and
  ``Gallery.history(label=, limit=)``) records the change itself, attributed to ``actor``, in the same
  transaction; the history is the store's, shared by every process and kept across restarts.
* A gallery without one (the single-file format) gets the server's own record: the changes made through this
  server process since it started, kept in memory (``source: "server"`` in the response). Such a gallery
  cannot be shared by several writing processes anyway (``metaedge serve`` refuses ``--workers N`` on it
  unless ``--read-only``).

``shared`` says whether other processes see this gallery's changes (the store re-reads them at the next
predict) - the condition for several writing workers.
"""
from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import threading
import time
from typing import Iterator

__all__ = ["AuditTrail"]

_SERVER_RECORD_SIZE = 10_000


class AuditTrail:
    def __init__(self, gallery):
        self._gallery = gallery
        self.native = callable(getattr(gallery, "acting_as", None)) and callable(getattr(gallery, "history", None))
        self.shared = callable(getattr(gallery, "refresh", None))
        self._entries: collections.deque = collections.deque(maxlen=_SERVER_RECORD_SIZE)
        self._seq = 0
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        return "gallery" if self.native else "server"

    @contextlib.contextmanager
    def change(self, actor: str, op: str, label: str | None = None, shots: int | None = None,
               detail: dict | None = None) -> Iterator[None]:
        """Run a change of the gallery on behalf of ``actor`` (in the calling thread)."""
        if self.native:
            with self._gallery.acting_as(actor):
                yield
            return
        yield
        with self._lock:  # recorded once the change went through
            self._seq += 1
            self._entries.append({"seq": self._seq, "version": getattr(self._gallery, "version", None),
                                  "at": _dt.datetime.fromtimestamp(time.time(), _dt.timezone.utc).isoformat(),
                                  "op": op, "label": label, "uid": None, "shots": shots, "actor": actor,
                                  "detail": detail})

    def history(self, label: str | None = None, limit: int | None = None) -> list[dict]:
        """Entries oldest first, as dicts (``label``: only that class; ``limit``: the latest ones)."""
        if self.native:
            return [e.to_dict() for e in self._gallery.history(label=label, limit=limit)]
        with self._lock:
            entries = [e for e in self._entries if label is None or e["label"] == label
                       or (e["detail"] or {}).get("new") == label]
        return entries[-limit:] if limit else entries
