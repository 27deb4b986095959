"""Loads the compiled extension metaedge._C with an error that says how to build it."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def native():
    try:
        from metaedge import _C
    except ImportError as exc:  # pragma: no cover - exercised only on a broken install
        raise ImportError(
            "metaedge's compiled kernels (metaedge._C) are missing or fail to load: "
            f"{exc}. Build them with `pip install .` (or `python setup.py build_ext --inplace` in a checkout); "
            "METAEDGE_CUDA=0 gives a CPU-only build."
        ) from exc
    return _C
