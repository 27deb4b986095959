"""Which TensorRT engine in ``bundle/engines/`` may be loaded here, and the bookkeeping around it.

A serialized TensorRT plan only runs on the TensorRT version and GPU it was built with, and it encodes one
ONNX file, one precision and one batch range. Each plan therefore has a JSON sidecar holding its
``EngineKey`` and the plan's sha256; an engine is used only when every key field equals this machine's and
the plan's bytes still match. Anything else is rebuilt, and the log says why (DESIGN §6/§7).
Pure Python: no TensorRT needed, so all of it is unit-tested anywhere.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from metaedge.runtime.fileio import atomic_write_bytes, atomic_write_json, read_json, sha256_bytes, sha256_file

SIDECAR_SCHEMA = 1
PRECISIONS = ("fp16", "fp32")
PLAN_SUFFIX = ".plan"
SIDECAR_SUFFIX = ".json"
MAX_SIDECAR_BYTES = 1024 * 1024
MAX_PLAN_BYTES = 16 * 1024 ** 3   # a TensorRT plan; hostile or sparse files beyond it are refused unread

log = logging.getLogger("metaedge.engine")

_FIELD_LABELS = {
    "onnx_sha256": "ONNX sha256",
    "tensorrt_version": "TensorRT version",
    "cuda_version": "CUDA version",
    "gpu_name": "GPU",
    "compute_capability": "compute capability",
    "precision": "precision",
    "max_batch": "max batch",
    "opt_batch": "optimised batch",
}


class EngineCacheError(ValueError):
    """An engine key or sidecar is malformed."""


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized plan depends on. Two engines are interchangeable iff their keys are equal."""
    onnx_sha256: str
    tensorrt_version: str
    cuda_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    max_batch: int
    opt_batch: int = 1  # the profile's optimum shape: it changes the chosen kernels, so it is part of the key

    def __post_init__(self):
        if not re.fullmatch(r"[0-9a-f]{64}", str(self.onnx_sha256)):
            raise EngineCacheError(f"onnx_sha256: expected 64 lowercase hex digits, got {self.onnx_sha256!r}")
        for name in ("tensorrt_version", "cuda_version", "gpu_name", "compute_capability"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise EngineCacheError(f"{name}: expected a non-empty string, got {value!r}")
        if self.precision not in PRECISIONS:
            raise EngineCacheError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.max_batch, int) or isinstance(self.max_batch, bool) or self.max_batch < 1:
            raise EngineCacheError(f"max_batch: expected a positive int, got {self.max_batch!r}")
        if not isinstance(self.opt_batch, int) or isinstance(self.opt_batch, bool) \
                or not 1 <= self.opt_batch <= self.max_batch:
            raise EngineCacheError(f"opt_batch: expected an int in 1..max_batch ({self.max_batch}), "
                                   f"got {self.opt_batch!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EngineKey":
        if not isinstance(d, dict):
            raise EngineCacheError(f"engine key: expected an object, got {type(d).__name__}")
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise EngineCacheError(f"engine key: missing {', '.join(missing)}")
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    def digest(self) -> str:
        return sha256_bytes(json.dumps(self.to_dict(), sort_keys=True).encode())[:16]

    @property
    def file_stem(self) -> str:
        """Readable and unique: ``fp16-b32-sm87-trt10.3.0-<digest>``."""
        cc = re.sub(r"[^0-9]", "", self.compute_capability)
        trt = re.sub(r"[^0-9A-Za-z.]", "", self.tensorrt_version)
        opt = f"o{self.opt_batch}" if self.opt_batch != 1 else ""
        return f"{self.precision}-b{self.max_batch}{opt}-sm{cc}-trt{trt}-{self.digest()}"

    def same_config(self, other: "EngineKey") -> bool:
        """Same request (precision and batch profile): the engines differ only in where/what they were built for."""
        return (self.precision, self.max_batch, self.opt_batch) == (other.precision, other.max_batch, other.opt_batch)

    def differences(self, cached: "EngineKey") -> list[str]:
        """Human-readable reasons why ``cached`` cannot stand in for ``self``."""
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(cached, f.name)
            if mine != theirs:
                if f.name == "onnx_sha256":
                    mine, theirs = mine[:12], theirs[:12]
                out.append(f"{_FIELD_LABELS[f.name]} {theirs} (here: {mine})")
        return out


@dataclass
class EngineLookup:
    path: Path | None                 # the plan to load, or None when one must be built
    sidecar: dict | None
    rebuild_reasons: list[str]        # why engines built for this request could not be used


def plan_path(engines_dir: str | Path, key: EngineKey) -> Path:
    return Path(engines_dir) / (key.file_stem + PLAN_SUFFIX)


def sidecar_path(engines_dir: str | Path, key: EngineKey) -> Path:
    return Path(engines_dir) / (key.file_stem + SIDECAR_SUFFIX)


def read_sidecar(path: Path) -> tuple[EngineKey, dict]:
    try:
        data = read_json(path, "engine sidecar", MAX_SIDECAR_BYTES)
    except (OSError, ValueError) as exc:
        raise EngineCacheError(f"unreadable engine sidecar {path.name}: {exc}") from None
    if not isinstance(data, dict):
        raise EngineCacheError(f"engine sidecar {path.name}: expected an object")
    schema = data.get("schema")
    if not isinstance(schema, int) or schema < 1:
        raise EngineCacheError(f"engine sidecar {path.name}: missing or bad schema {schema!r}")
    if schema > SIDECAR_SCHEMA:
        raise EngineCacheError(f"engine sidecar {path.name} has schema {schema}, newer than this metaedge reads "
                               f"({SIDECAR_SCHEMA})")
    key = EngineKey.from_dict(data.get("key"))
    if not re.fullmatch(r"[0-9a-f]{64}", str(data.get("plan_sha256", ""))):
        raise EngineCacheError(f"engine sidecar {path.name}: missing plan_sha256")
    return key, data


def list_engines(engines_dir: str | Path) -> list[dict]:
    """Every sidecar in ``engines_dir`` as ``{"file", "key", "plan_bytes", "built_at", "error"}``."""
    engines_dir = Path(engines_dir)
    out = []
    if not engines_dir.is_dir():
        return out
    for side in sorted(engines_dir.glob("*" + SIDECAR_SUFFIX)):
        plan = side.with_suffix(PLAN_SUFFIX)
        entry: dict = {"file": plan.name}
        try:
            key, data = read_sidecar(side)
        except EngineCacheError as exc:
            entry["error"] = str(exc)
        else:
            entry.update(key=key.to_dict(), built_at=data.get("built_at"), build_seconds=data.get("build_seconds"))
            entry["plan_bytes"] = plan.stat().st_size if plan.exists() else None
            if not plan.exists():
                entry["error"] = "plan file missing"
        out.append(entry)
    return out


def find_engine(engines_dir: str | Path, key: EngineKey, *, verify_plan: bool = True) -> EngineLookup:
    """The cached plan for ``key``, or why none of the cached plans for this request can be used."""
    engines_dir = Path(engines_dir)
    reasons: list[str] = []
    if not engines_dir.is_dir():
        return EngineLookup(None, None, ["no engine cached yet"])
    for side in sorted(engines_dir.glob("*" + SIDECAR_SUFFIX)):
        plan = side.with_suffix(PLAN_SUFFIX)
        try:
            cached, data = read_sidecar(side)
        except EngineCacheError as exc:
            if plan.exists():
                reasons.append(f"{plan.name}: {exc}")
            continue
        if not cached.same_config(key):
            continue  # another precision or batch range: a different engine, not a stale one
        if cached != key:
            reasons.append(f"{plan.name} was built for " + ", ".join(key.differences(cached)))
            continue
        if not plan.exists():
            reasons.append(f"{plan.name} is missing (its sidecar is there)")
            continue
        try:
            plan_ok = not verify_plan or sha256_file(plan, MAX_PLAN_BYTES, "TensorRT plan") == data["plan_sha256"]
        except (OSError, ValueError) as exc:
            reasons.append(f"{plan.name} is unreadable ({exc})")
            continue
        if not plan_ok:
            reasons.append(f"{plan.name} is damaged (sha256 differs from its sidecar)")
            continue
        return EngineLookup(plan, data, reasons)
    if not reasons:
        reasons.append(f"no {key.precision} engine with max batch {key.max_batch} cached yet")
    return EngineLookup(None, None, reasons)


def write_engine(engines_dir: str | Path, key: EngineKey, plan: bytes, **info) -> Path:
    """Store a plan and then its sidecar; the sidecar is the commit marker, so a crash in between leaves an
    orphan plan that is never loaded."""
    if not plan:
        raise EngineCacheError("refusing to cache an empty TensorRT plan")
    path = plan_path(engines_dir, key)
    atomic_write_bytes(path, bytes(plan))
    atomic_write_json(sidecar_path(engines_dir, key), {
        "schema": SIDECAR_SCHEMA, "key": key.to_dict(), "plan_sha256": sha256_bytes(bytes(plan)),
        "plan_bytes": len(plan), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info})
    return path


def ensure_engine(engines_dir: str | Path, key: EngineKey, build: Callable[[], bytes], *, force: bool = False,
                  logger: logging.Logger | None = None) -> Path:
    """Return the cached plan for ``key``; build (``build()`` -> plan bytes), cache and return it otherwise."""
    logger = logger or log
    lookup = EngineLookup(None, None, ["rebuild requested"]) if force else find_engine(engines_dir, key)
    if lookup.path is not None:
        logger.info("TensorRT engine: using cached %s", lookup.path.name)
        return lookup.path
    logger.warning("TensorRT engine: building %s, max batch %d, for %s (sm %s), TensorRT %s - this takes minutes "
                   "on a Jetson. Why: %s", key.precision, key.max_batch, key.gpu_name, key.compute_capability,
                   key.tensorrt_version, "; ".join(lookup.rebuild_reasons))
    start = time.perf_counter()
    plan = build()
    seconds = time.perf_counter() - start
    path = write_engine(engines_dir, key, plan, build_seconds=round(seconds, 1))
    logger.warning("TensorRT engine: built %s (%.1f MiB) in %.0f s", path.name, len(plan) / 2**20, seconds)
    return path
