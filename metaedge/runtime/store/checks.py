"""The ranges every stored field must be in, checked when galleries, old gallery files and class packs are read
(so whatever loads can be written back); each failure a GalleryCorruptError naming the field."""
from __future__ import annotations

import math
from typing import Any

from metaedge import kernels
from metaedge.runtime.store.errors import GalleryCorruptError

__all__ = ["check_int", "check_time_field", "check_thresholds", "check_open_set", "check_fingerprint", "check_settings",
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


HOWS = ("calibrated", "recalibrated", "set", "migrated")
MAX_CALIBRATION_ROWS = 5000   # known images, and again other images, kept per gallery (a seeded sample of more)


def _check_rate(value, what: str, *, none_ok: bool = False, open_interval: bool = False):
    if value is None and none_ok:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        0 < value < 1 if open_interval else 0 <= value <= 1)
    if not ok:
        raise GalleryCorruptError(f"{what}: expected a number in {'(0, 1)' if open_interval else '[0, 1]'}, "
                                  f"got {value!r}")
    return float(value)


def check_open_set(value: Any, what: str) -> dict:
    """The open-set record: ``{"heads": {head: {"how", "at", figures...}}, "calibration": null | {...}}``."""
    if not isinstance(value, dict) or set(value) != {"heads", "calibration"} or not isinstance(value["heads"], dict):
        raise GalleryCorruptError(f"{what}: expected {{'heads': {{...}}, 'calibration': ...}}, got {str(value)[:80]}")
    heads = {}
    for head, entry in value["heads"].items():
        where = f"{what}: head {head!r}"
        if head not in ("prototypes", "adapted") or not isinstance(entry, dict) or entry.get("how") not in HOWS:
            raise GalleryCorruptError(f"{where}: expected 'prototypes' or 'adapted' with 'how' one of {HOWS}")
        out = {"how": entry["how"]}
        if "at" in entry:
            out["at"] = check_time_field(entry["at"], f"{where}: at")
        for key in ("fpr", "known_accept_rate", "target_fpr"):
            if key in entry:
                out[key] = _check_rate(entry[key], f"{where}: {key}", open_interval=key == "target_fpr")
        if "known_correct_rate" in entry:
            out["known_correct_rate"] = _check_rate(entry["known_correct_rate"], f"{where}: known_correct_rate",
                                                    none_ok=True)
        for key in ("n_known", "n_negative"):
            if key in entry:
                out[key] = check_int(entry[key], 0, 2 * MAX_CALIBRATION_ROWS, f"{where}: {key}")
        if "negatives" in entry:
            if entry["negatives"] not in ("others", "impostors"):
                raise GalleryCorruptError(f"{where}: negatives: expected 'others' or 'impostors'")
            out["negatives"] = entry["negatives"]
        heads[head] = out
    cal = value["calibration"]
    if cal is not None:
        if not isinstance(cal, dict) or cal.get("negatives") not in ("others", "impostors"):
            raise GalleryCorruptError(f"{what}: calibration: expected an object with negatives 'others' or "
                                      f"'impostors', got {str(cal)[:80]}")
        cal = {"negatives": cal["negatives"],
               "target_fpr": _check_rate(cal.get("target_fpr"), f"{what}: calibration: target_fpr",
                                         open_interval=True),
               "at": check_time_field(cal.get("at"), f"{what}: calibration: at"),
               "version": check_int(cal.get("version"), 0, MAX_ID, f"{what}: calibration: version"),
               "classes": check_int(cal.get("classes"), 0, MAX_ID, f"{what}: calibration: classes"),
               **{key: check_int(cal.get(key), 0, MAX_ID, f"{what}: calibration: {key}")
                  for key in ("known", "other", "known_given", "other_given")}}
    return {"heads": heads, "calibration": cal}


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
