"""Who changed a gallery, and the audit trail's entries as callers see them."""
from __future__ import annotations

import getpass
import os
import socket
import sys
from dataclasses import dataclass

from metaedge.runtime.store.db import AuditRow

__all__ = ["AuditEntry", "default_actor", "entry_of"]


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


def entry_of(r: AuditRow) -> AuditEntry:
    return AuditEntry(r.seq, r.generation, r.at, r.op, r.label, r.uid, r.shots, r.actor, r.detail)
