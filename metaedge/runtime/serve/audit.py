"""The seam between the server and the gallery's audit trail: who made a change, and the history.

Every change the server makes runs inside ``trail.change(actor)`` and ``GET /v1/history`` reads
``trail.history()``; nothing else in the server knows how the gallery records changes. The gallery store
records each change itself, in the change's own transaction, attributed to the actor of the calling thread
(``Gallery.acting_as``): the token's name, or ``anonymous@ADDRESS`` without access control. The trail is the
store's: shared by every process that opens the gallery (server workers, CLI commands, apps) and kept across
restarts.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["AuditTrail"]


class AuditTrail:
    def __init__(self, gallery):
        self._gallery = gallery

    @contextlib.contextmanager
    def change(self, actor: str) -> Iterator[None]:
        """Run a change of the gallery on behalf of ``actor`` (in the calling thread)."""
        with self._gallery.acting_as(actor):
            yield

    def history(self, label: str | None = None, limit: int | None = None) -> list[dict]:
        """Entries oldest first, as dicts (``label``: only those naming that class; ``limit``: the latest)."""
        return [e.to_dict() for e in self._gallery.history(label=label, limit=limit)]
