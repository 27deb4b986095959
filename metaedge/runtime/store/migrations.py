"""Upgrades of older store schemas, in place, when a store is opened for writing.

Each step is one write transaction that re-reads the schema version inside it (another process may have
upgraded the file meanwhile), changes only what the new schema adds, bumps the generation and appends a
``migrate`` entry to the audit trail (readers of the new generation reload everything). A store opened
read-only is read as it is (``Store.schema`` says which schema; readers supply what it lacks).

- 2 -> 3: the ``calibration`` table (the embeddings unknown thresholds are calibrated from) and the
  ``open_set`` record (how each head's threshold was set). Existing thresholds are recorded as ``migrated``:
  they were calibrated without a stored calibration set, so ``adapt`` cannot re-calibrate them.
"""
from __future__ import annotations

import time

from metaedge.runtime.store.errors import GalleryCorruptError

__all__ = ["upgrade"]


def _two_to_three(store) -> dict:
    from metaedge.runtime.fileio import parse_json
    from metaedge.runtime.store.checks import check_thresholds
    from metaedge.runtime.store.db import _SCHEMA, migrated_open_set
    conn = store.conn
    conn.execute(_SCHEMA[("table", "calibration")])
    row = conn.execute("SELECT value FROM meta WHERE key = 'thresholds'").fetchone()
    try:
        thresholds = check_thresholds(parse_json(row[0], "thresholds"), f"{store.path}: thresholds")
    except (TypeError, ValueError) as exc:
        raise GalleryCorruptError(f"{store.path}: setting 'thresholds' is not valid: {exc}") from None
    store.set_meta(open_set=migrated_open_set(thresholds), schema_version="3")
    return {"kept_thresholds": {k: v for k, v in thresholds.items() if v is not None}}


_STEPS = {2: _two_to_three}


def upgrade(store) -> None:
    """Bring ``store`` (opened for writing) to the current schema, one audited transaction per step."""
    from metaedge.runtime.store.audit import default_actor
    from metaedge.runtime.store.db import SCHEMA_VERSION
    conn = store.conn
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                break
            detail = {"from_schema": version, "to_schema": version + 1, **_STEPS[version](store)}
            generation = store.generation() + 1
            store.set_meta(generation=generation)
            store.record(generation, time.time(), "migrate", default_actor(), detail=detail)
            conn.execute(f"PRAGMA user_version={version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    store.schema = SCHEMA_VERSION
