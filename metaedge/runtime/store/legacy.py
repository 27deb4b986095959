"""Gallery files of schema 1 (metaedge 0.1: one safetensors file rewritten per change), read for conversion.

They open read-only (a :class:`Gallery` over an in-memory copy) and convert to the store with
``metaedge classes migrate`` / :meth:`Gallery.migrate`. Layout: tensors ``prototypes [C, d] f32``,
``counts``, ``uids [C] i64``, ``enrolled_at``/``updated_at [C] f64``, ``support [M, d] f32`` +
``support_labels [M] i64``, and when adapted ``adapted_weights [C, d] f32`` + ``adapted_fresh [C] u8``;
metadata ``format = "metaedge.gallery"``, ``schema_version = "1"``, ``bundle_fingerprint``, ``metric``,
``embedding_dim``, ``metaedge_version``, ``state`` (JSON: names, next_uid, support_cap, seed, thresholds,
adaptation, created_at) and ``payload_sha256``. Every field is checked for type and range, so a file whose
checksum is valid but whose values are not (a huge uid counter, a NaN threshold, a lone surrogate in a label,
shots at INT64_MAX) is refused with a message naming the field instead of failing later.
"""
from __future__ import annotations

import numpy as np

from metaedge.runtime.fileio import parse_json
from metaedge.runtime.store.checks import (MAX_EMBEDDING_DIM, MAX_ID, MAX_SUPPORT_CAP, check_fingerprint, check_int,
                                          check_settings, check_thresholds, check_time_field)
from metaedge.runtime.store.container import check_schema, read_container
from metaedge.runtime.store.db import FORMAT
from metaedge.runtime.store.errors import GalleryCorruptError
from metaedge.runtime.store.packs import ClassSet, check_classes, split_support

__all__ = ["read_legacy", "LEGACY_SCHEMA", "MAX_LEGACY_BYTES"]

LEGACY_SCHEMA = 1
MAX_LEGACY_BYTES = 64 * 1024 ** 3
_EXPECTED = {"prototypes": "F32", "counts": "I64", "uids": "I64", "enrolled_at": "F64", "updated_at": "F64",
             "support": "F32", "support_labels": "I64"}
_OPTIONAL = {"adapted_weights": "F32", "adapted_fresh": "U8"}


def _state(meta: dict, where: str) -> dict:
    try:
        state = parse_json(meta.get("state", ""), f"{where}: state")
    except ValueError as exc:
        raise GalleryCorruptError(f"{where}: damaged metadata (state: {exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("names"), list):
        raise GalleryCorruptError(f"{where}: damaged metadata (state has no list of class names)")
    return state


def _check_header(entries: dict, meta: dict, where: str) -> None:
    check_schema(meta, where, LEGACY_SCHEMA, "a gallery file")
    state = _state(meta, where)
    c = len(state["names"])
    try:
        dim = int(meta.get("embedding_dim", ""))
        cap = int(state.get("support_cap"))
    except (TypeError, ValueError):
        raise GalleryCorruptError(f"{where}: damaged metadata (embedding_dim / support_cap)") from None
    check_int(dim, 1, MAX_EMBEDDING_DIM, f"{where}: embedding_dim")
    check_int(cap, 0, MAX_SUPPORT_CAP, f"{where}: support_cap")
    for name, dtype in {**_EXPECTED, **_OPTIONAL}.items():
        e = entries.get(name)
        if e is None:
            if name in _EXPECTED:
                raise GalleryCorruptError(f"{where}: inconsistent contents: tensor {name!r} is missing")
            continue
        if e["dtype"] != dtype:
            raise GalleryCorruptError(f"{where}: inconsistent contents: tensor {name!r} is {e['dtype']}, expected "
                                      f"{dtype}")
    shapes = {k: v["shape"] for k, v in entries.items()}
    want = {"prototypes": [c, dim], "counts": [c], "uids": [c], "enrolled_at": [c], "updated_at": [c]}
    if "adapted_weights" in entries:
        want.update(adapted_weights=[c, dim], adapted_fresh=[c])
    for name, shape in want.items():
        if shapes.get(name) != shape:
            raise GalleryCorruptError(f"{where}: inconsistent contents: {name} has shape {shapes.get(name)}, "
                                      f"expected {shape} ({c} classes of dimension {dim})")
    m = shapes["support"]
    if len(m) != 2 or m[1] != dim or m[0] > c * cap or shapes["support_labels"] != [m[0]]:
        raise GalleryCorruptError(f"{where}: inconsistent contents: support {m} / labels {shapes['support_labels']} "
                                  f"for {c} classes of at most {cap} embeddings")


def read_legacy(path: str) -> ClassSet:
    """The classes and settings of a schema-1 gallery file, every field checked."""
    where = str(path)
    tensors, meta = read_container(where, FORMAT, "gallery", max_bytes=MAX_LEGACY_BYTES,
                                   check_header=lambda e, m: _check_header(e, m, where))
    state = _state(meta, where)
    names = state["names"]
    dim, metric = int(meta["embedding_dim"]), meta.get("metric")
    seed = state.get("seed")
    check_settings(embedding_dim=dim, metric=metric, support_cap=int(state["support_cap"]), seed=seed, where=where)
    next_uid = check_int(state.get("next_uid"), 0, MAX_ID, f"{where}: next_uid")
    uids = np.array(tensors["uids"])
    if len(set(uids.tolist())) != len(uids) or (len(uids) and (uids.min() < 0 or uids.max() >= next_uid)):
        raise GalleryCorruptError(f"{where}: class ids are not unique or not below next_uid ({next_uid})")
    if len(uids) > 1 and not (np.diff(uids) > 0).all():
        raise GalleryCorruptError(f"{where}: class ids are not in enrollment order")
    adaptation = state.get("adaptation")
    if adaptation is not None and not isinstance(adaptation, dict):
        raise GalleryCorruptError(f"{where}: adaptation: expected an object or null")
    created = state.get("created_at")
    adapted = fresh = None
    if "adapted_weights" in tensors:
        adapted = np.array(tensors["adapted_weights"])
        fresh = np.array(tensors["adapted_fresh"])
        if not np.isfinite(adapted).all():
            raise GalleryCorruptError(f"{where}: non-finite adapted weights")
        if fresh.size and fresh.max() > 1:
            raise GalleryCorruptError(f"{where}: adapted_fresh holds values other than 0/1")
        fresh = fresh.astype(bool)
    cs = ClassSet(embedding_dim=dim, metric=metric,
                  fingerprint=check_fingerprint(meta.get("bundle_fingerprint"), f"{where}: bundle_fingerprint"),
                  labels=list(names), shots=np.array(tensors["counts"]), enrolled_at=np.array(tensors["enrolled_at"]),
                  updated_at=np.array(tensors["updated_at"]), prototypes=np.array(tensors["prototypes"]),
                  support=split_support(tensors["support"], np.array(tensors["support_labels"]), len(names), where),
                  support_cap=int(state["support_cap"]), seed=seed,
                  created_at=None if created is None else check_time_field(created, f"{where}: created_at"), uids=uids,
                  next_uid=next_uid, adapted=adapted, fresh=fresh, adaptation=adaptation,
                  thresholds=check_thresholds(state.get("thresholds") or {}, f"{where}: thresholds"))
    return check_classes(cs, where)
