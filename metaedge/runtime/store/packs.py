"""Class packs: enrolled classes in one checksummed safetensors file, to move them between the devices of a fleet.

A pack (``format = "metaedge.classpack"``, schema 1) holds, per class: label, shots, prototype, enrollment
and update times and its support memory; and the bundle fingerprint, metric and embedding dimension it was
made with - a pack only imports into a gallery of the same bundle. Adapted heads are not packed (a head is
trained on all the classes of one gallery together); imported classes are imprinted into an adapted gallery,
as enrolled ones are.

Tensors: ``prototypes [C, d] f32``, ``shots [C] i64``, ``enrolled_at``/``updated_at [C] f64``,
``support [M, d] f32`` + ``support_labels [M] i64`` (class index). Metadata: ``format``, ``schema_version``,
``bundle_fingerprint``, ``metric``, ``embedding_dim``, ``support_cap``, ``labels`` (JSON), ``exported_at``,
``source`` (who exported it), ``metaedge_version``, ``payload_sha256``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from metaedge.runtime.fileio import parse_json
from metaedge.runtime.store.checks import (MAX_EMBEDDING_DIM, MAX_SHOTS, MAX_SUPPORT_CAP, check_fingerprint, check_int,
                                          check_settings, check_time_field)
from metaedge.runtime.store.container import check_schema, read_container, write_container
from metaedge.runtime.store.errors import GalleryCorruptError
from metaedge.runtime.store.labels import check_label

__all__ = ["ClassSet", "read_pack", "pack_bytes", "PACK_FORMAT", "PACK_SCHEMA", "MAX_PACK_BYTES"]

PACK_FORMAT = "metaedge.classpack"
PACK_SCHEMA = 1
MAX_PACK_BYTES = 64 * 1024 ** 3


@dataclass
class ClassSet:
    """Classes read from (or to be written to) a file, with the settings they were made with."""
    embedding_dim: int
    metric: str
    fingerprint: str | None
    labels: list[str]
    shots: np.ndarray                 # int64 [C]
    enrolled_at: np.ndarray           # float64 [C]
    updated_at: np.ndarray            # float64 [C]
    prototypes: np.ndarray            # float32 [C, d]
    support: list[np.ndarray]         # float32 [m_i, d] per class
    support_cap: int
    # the rest only in old gallery files (schema 1)
    seed: int = 0
    created_at: float | None = None
    uids: np.ndarray | None = None
    next_uid: int | None = None
    adapted: np.ndarray | None = None
    fresh: np.ndarray | None = None
    adaptation: dict | None = None
    thresholds: dict = field(default_factory=lambda: {"prototypes": None, "adapted": None})

    def __len__(self) -> int:
        return len(self.labels)


def check_classes(cs: ClassSet, where: str) -> ClassSet:
    """Every field of every class in range (GalleryCorruptError naming the class and field)."""
    c, d = len(cs.labels), cs.embedding_dim
    seen = set()
    for i, label in enumerate(cs.labels):
        try:
            if check_label(label, "label") != label:
                raise ValueError("not NFC-normalised")
        except (TypeError, ValueError) as exc:
            raise GalleryCorruptError(f"{where}: class {i}: invalid label {label!r}: {exc}") from None
        if label in seen:
            raise GalleryCorruptError(f"{where}: duplicate class label {label!r}")
        seen.add(label)
        check_int(int(cs.shots[i]), 1, MAX_SHOTS, f"{where}: class {label!r}: shots")
        check_time_field(float(cs.enrolled_at[i]), f"{where}: class {label!r}: enrolled_at")
        check_time_field(float(cs.updated_at[i]), f"{where}: class {label!r}: updated_at")
        rows = cs.support[i]
        if rows.shape[1:] != (d,) or len(rows) > min(cs.support_cap, int(cs.shots[i])):
            raise GalleryCorruptError(f"{where}: class {label!r} has {len(rows)} support embeddings (cap "
                                      f"{cs.support_cap}, {int(cs.shots[i])} shots)")
        if not np.isfinite(rows).all():
            raise GalleryCorruptError(f"{where}: class {label!r}: non-finite support embeddings")
    if cs.prototypes.shape != (c, d) or not np.isfinite(cs.prototypes).all():
        raise GalleryCorruptError(f"{where}: prototypes {list(cs.prototypes.shape)} (expected [{c}, {d}], finite)")
    return cs


def split_support(support: np.ndarray, labels: np.ndarray, classes: int, where: str) -> list[np.ndarray]:
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise GalleryCorruptError(f"{where}: support labels out of range")
    order = np.argsort(labels, kind="stable")
    bounds = np.cumsum(np.bincount(labels, minlength=classes))[:-1] if classes else []
    return [np.array(p, np.float32) for p in np.split(np.asarray(support, np.float32)[order], bounds)] \
        if classes else []


def _check_pack_header(entries: dict, meta: dict, where: str) -> tuple[list, int, int]:
    check_schema(meta, where, PACK_SCHEMA, "a class pack")
    try:
        labels = parse_json(meta["labels"], f"{where}: labels")
        dim, cap = int(meta["embedding_dim"]), int(meta["support_cap"])
    except (KeyError, ValueError) as exc:
        raise GalleryCorruptError(f"{where}: damaged metadata ({exc})") from None
    if not isinstance(labels, list):
        raise GalleryCorruptError(f"{where}: damaged metadata (labels is not a list)")
    check_int(dim, 1, MAX_EMBEDDING_DIM, f"{where}: embedding_dim")
    check_int(cap, 0, MAX_SUPPORT_CAP, f"{where}: support_cap")
    c = len(labels)
    expected = {"prototypes": ("F32", [c, dim]), "shots": ("I64", [c]), "enrolled_at": ("F64", [c]),
                "updated_at": ("F64", [c])}
    for name, (dtype, shape) in expected.items():
        e = entries.get(name)
        if e is None or e["dtype"] != dtype or e["shape"] != shape:
            raise GalleryCorruptError(f"{where}: tensor {name!r} is {e and (e['dtype'], e['shape'])}, expected "
                                      f"{dtype} {shape}")
    sup, sl = entries.get("support"), entries.get("support_labels")
    if (sup is None or sup["dtype"] != "F32" or len(sup["shape"]) != 2 or sup["shape"][1] != dim
            or sup["shape"][0] > c * cap or sl is None or sl["dtype"] != "I64" or sl["shape"] != [sup["shape"][0]]):
        raise GalleryCorruptError(f"{where}: support tensors do not fit {c} classes of at most {cap} embeddings "
                                  f"of dimension {dim}")
    if set(entries) - set(expected) - {"support", "support_labels"}:
        raise GalleryCorruptError(f"{where}: unexpected tensors {sorted(set(entries) - set(expected))}")
    return labels, dim, cap


def read_pack(path: str) -> ClassSet:
    """A class pack, every byte and field checked."""
    where = str(path)
    header_facts: dict = {}

    def check(entries, meta):
        header_facts["labels"], header_facts["dim"], header_facts["cap"] = _check_pack_header(entries, meta, where)

    tensors, meta = read_container(where, PACK_FORMAT, "class pack", max_bytes=MAX_PACK_BYTES, check_header=check)
    metric = meta.get("metric")
    check_settings(embedding_dim=header_facts["dim"], metric=metric, support_cap=header_facts["cap"], seed=0,
                   where=where)
    labels = header_facts["labels"]
    cs = ClassSet(embedding_dim=header_facts["dim"], metric=metric,
                  fingerprint=check_fingerprint(meta.get("bundle_fingerprint"), f"{where}: bundle_fingerprint"),
                  labels=list(labels), shots=np.array(tensors["shots"]), enrolled_at=np.array(tensors["enrolled_at"]),
                  updated_at=np.array(tensors["updated_at"]), prototypes=np.array(tensors["prototypes"]),
                  support=split_support(tensors["support"], np.array(tensors["support_labels"]), len(labels), where),
                  support_cap=header_facts["cap"])
    return check_classes(cs, where)


def pack_bytes(cs: ClassSet, source: str) -> bytes:
    from metaedge import __version__
    parts = cs.support
    d = cs.embedding_dim
    support = np.concatenate(parts) if parts else np.zeros((0, d), np.float32)
    support_labels = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(parts)]) if parts \
        else np.zeros(0, np.int64)
    tensors = {"prototypes": np.asarray(cs.prototypes, np.float32).reshape(len(cs), d),
               "shots": np.asarray(cs.shots, np.int64), "enrolled_at": np.asarray(cs.enrolled_at, np.float64),
               "updated_at": np.asarray(cs.updated_at, np.float64),
               "support": np.asarray(support, np.float32).reshape(-1, d), "support_labels": support_labels}
    meta = {"format": PACK_FORMAT, "schema_version": str(PACK_SCHEMA), "bundle_fingerprint": cs.fingerprint or "",
            "metric": cs.metric, "embedding_dim": str(d), "support_cap": str(cs.support_cap),
            "labels": json.dumps(cs.labels, ensure_ascii=False), "exported_at": repr(time.time()),
            "source": source, "metaedge_version": __version__}
    return write_container(tensors, meta)
