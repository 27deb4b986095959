"""The ranges every stored field must be in, checked when galleries, old gallery files and class packs are read
(so whatever loads can be written back); each failure a GalleryCorruptError naming the field."""
from __future__ import annotations

import math
from typing import Any

from metaedge import kernels
from metaedge.runtime.store.errors import GalleryCorruptError

__all__ = ["check_int", "check_time_field", "check_thresholds", "check_fingerprint", "check_settings",
           "MAX_EMBEDDING_DIM", "MAX_SUPPORT_CAP", "MAX_SHOTS", "MAX_ID", "MAX_TIME", "MAX_FINGERPRINT"]

MAX_EMBEDDING_DIM = 65536
MAX_SUPPORT_CAP = 10_000
MAX_SHOTS = 2 ** 48           # far beyond any enrollment; keeps running means and sums exact in int64
MAX_ID = 2 ** 62
MAX_TIME = 253402300799.0     # 9999-12-31T23:59:59Z
MAX_FINGERPRINT = 256


def check_int(value, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise GalleryCorruptError(f"{what}: expected an integer in [{lo}, {hi}], got {value!r}")
    return value


def check_time_field(value, what: str) -> float:
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, float) or not math.isfinite(value) or not 0.0 <= value <= MAX_TIME:
        raise GalleryCorruptError(f"{what}: expected a time in seconds since 1970 (0..{MAX_TIME:.0f}), "
                                  f"got {value!r}")
    return value


def check_thresholds(value: Any, what: str) -> dict:
    if not isinstance(value, dict) or set(value) - {"prototypes", "adapted"}:
        raise GalleryCorruptError(f"{what}: expected {{'prototypes': number|null, 'adapted': number|null}}, "
                                  f"got {value!r}")
    out = {"prototypes": None, "adapted": None}
    for key, v in value.items():
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise GalleryCorruptError(f"{what}: threshold {key!r} must be a finite number or null, got {v!r}")
            v = float(v)
        out[key] = v
    return out


def check_fingerprint(value: Any, what: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) > MAX_FINGERPRINT or not value.isascii() or not value.isprintable():
        raise GalleryCorruptError(f"{what}: expected a printable ASCII string of at most {MAX_FINGERPRINT} "
                                  f"characters, got {str(value)[:80]!r}")
    return value


def check_settings(*, embedding_dim, metric, support_cap, seed, where: str) -> None:
    """The construction settings of a gallery, as a load checks them (GalleryCorruptError naming the field)."""
    check_int(embedding_dim, 1, MAX_EMBEDDING_DIM, f"{where}: embedding_dim")
    if metric not in kernels.METRICS:
        raise GalleryCorruptError(f"{where}: metric: expected one of {kernels.METRICS}, got {metric!r}")
    check_int(support_cap, 0, MAX_SUPPORT_CAP, f"{where}: support_cap")
    check_int(seed, 0, 2 ** 63 - 1, f"{where}: seed")
