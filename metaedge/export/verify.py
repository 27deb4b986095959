"""Parity of an exported ONNX file with the torch model it came from, on seeded random inputs and on real
images pre-processed exactly as on the device (``ModelSpec.preprocess``).

Reported per input set: max and mean absolute error, max error relative to the largest reference value, and
the smallest cosine similarity between matching embedding rows (what nearest-prototype matching sees).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from metaedge.runtime.images import read_image_file
from metaedge.runtime.spec import ModelSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Parity:
    inputs: str           # which input set
    samples: int
    max_abs: float
    mean_abs: float
    max_rel: float        # max_abs / max |reference|
    min_cosine: float

    def to_dict(self) -> dict:
        return {k: (round(v, 9) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        return (f"{self.inputs:<14} n={self.samples:<4} max abs {self.max_abs:.2e}  mean abs {self.mean_abs:.2e}  "
                f"max rel {self.max_rel:.2e}  min cosine {self.min_cosine:.7f}")


def compare(reference: np.ndarray, candidate: np.ndarray, inputs: str) -> Parity:
    ref = np.asarray(reference, np.float64)
    got = np.asarray(candidate, np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"{inputs}: output shape {got.shape} differs from the reference's {ref.shape}")
    if not np.all(np.isfinite(got)):
        return Parity(inputs, len(ref), float("inf"), float("inf"), float("inf"), float("-inf"))
    diff = np.abs(ref - got)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    dots = np.sum(ref * got, axis=1)
    # Two all-zero rows are identical embeddings; a zero row against a non-zero one is a total mismatch.
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0),
                   np.where(np.linalg.norm(ref - got, axis=1) == 0, 1.0, 0.0))
    return Parity(inputs, len(ref), float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0,
                  float(diff.max(initial=0.0) / scale) if scale > 0 else 0.0, float(cos.min(initial=1.0)))


def random_inputs(spec: ModelSpec, seed: int = 0, batches: Sequence[int] = (1, 7)) -> list[tuple[str, np.ndarray]]:
    """Seeded inputs in two flavours: uniform pixels pushed through the spec's mean/std (what real
    pre-processed images look like) and standard normal (wider range). Several batch sizes exercise the
    dynamic batch axis."""
    rng = np.random.default_rng(seed)
    c, h, w = spec.input_shape
    mean = np.asarray(spec.preprocess.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.preprocess.std, np.float32).reshape(-1, 1, 1)
    out = []
    for b in batches:
        pixels = rng.random((b, c, h, w), dtype=np.float32)
        out.append((f"uniform b={b}", ((pixels - mean) / std).astype(np.float32)))
        out.append((f"normal b={b}", rng.standard_normal((b, c, h, w), dtype=np.float32)))
    return out


def _decode(data: bytes, name: str) -> np.ndarray:
    from metaedge.runtime.images import open_image
    with open_image(data, f"image {name}") as im:
        if im.mode in ("1", "L", "I", "I;16", "F", "LA"):
            im = im.convert("L")
        elif im.mode not in ("RGB", "RGBA"):
            im = im.convert("RGB")
        arr = np.array(im, dtype=np.uint8)  # a writable copy: PIL hands out read-only buffers
    if arr.ndim not in (2, 3):
        raise ValueError(f"image {name}: unexpected decoded shape {arr.shape}")
    return arr


def _spread(items: list, limit: int) -> list:
    """``limit`` items evenly spread over a sorted list (many classes rather than the first one's shots)."""
    if len(items) <= limit:
        return items
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


def load_images(source, limit: int = 32) -> list[np.ndarray]:
    """uint8 images from a directory (recursive), a .zip of images, a list of files, or a list/array of
    uint8 arrays. At most ``limit``, spread evenly over the sorted file list."""
    if source is None:
        return []
    if isinstance(source, np.ndarray):
        source = list(source) if source.ndim == 4 or (source.ndim == 3 and source.shape[-1] not in (1, 3, 4)) \
            else [source]
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise ValueError(f"images: no image files ({', '.join(IMAGE_SUFFIXES)}) under {path}")
            return [_decode(read_image_file(p, str(p)), str(p)) for p in _spread(files, limit)]
        if path.suffix.lower() == ".zip" and path.is_file():
            with zipfile.ZipFile(path) as zf:
                names = sorted(n for n in zf.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
                if not names:
                    raise ValueError(f"images: no image files inside {path}")
                return [_decode(zf.read(n), f"{path}:{n}") for n in _spread(names, limit)]
        if path.is_file():
            return [_decode(read_image_file(path, str(path)), str(path))]
        raise ValueError(f"images: {path} is not an image file, a directory or a .zip")
    items = list(source)
    out = []
    for i, item in enumerate(items[:limit] if len(items) > limit else items):
        if isinstance(item, (str, os.PathLike)):
            out.append(_decode(read_image_file(item, str(item)), str(item)))
        else:
            arr = np.asarray(item)
            if arr.dtype != np.uint8:
                raise TypeError(f"images[{i}]: expected uint8 pixels, got {arr.dtype}")
            out.append(arr)
    return out


def preprocess_images(spec: ModelSpec, images: Iterable[np.ndarray]) -> np.ndarray:
    """The device's pre-processing (``metaedge.kernels.preprocess`` driven by the spec), image by image
    since sizes may differ."""
    batch = [spec.preprocess.apply(np.ascontiguousarray(img)) for img in images]
    if not batch:
        return np.zeros((0, *spec.input_shape), np.float32)
    return np.stack(batch).astype(np.float32, copy=False)


def ort_cpu_session(path: str | os.PathLike):
    from metaedge._optional import require
    ort = require("onnxruntime", "verifying an exported ONNX file")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def check_parity(reference: Callable[[np.ndarray], np.ndarray], candidate: Callable[[np.ndarray], np.ndarray],
                 spec: ModelSpec, *, images: np.ndarray | None = None, seed: int = 0) -> list[Parity]:
    """Run both on the seeded inputs and, when given, on pre-processed real images ``[n, C, H, W]``."""
    sets = random_inputs(spec, seed)
    if images is not None and len(images):
        sets.append(("real images", images))
    return [compare(reference(x), candidate(x), name) for name, x in sets]


def summarize(results: list[Parity], tolerance_abs: float | None = None,
              min_cosine: float | None = None) -> dict:
    worst_abs = max(r.max_abs for r in results)
    worst_cos = min(r.min_cosine for r in results)
    out = {"max_abs": worst_abs, "min_cosine": worst_cos, "max_rel": max(r.max_rel for r in results),
           "checks": [r.to_dict() for r in results]}
    if tolerance_abs is not None:
        out["tolerance_abs"] = tolerance_abs
    if min_cosine is not None:
        out["tolerance_min_cosine"] = min_cosine
    out["passed"] = ((tolerance_abs is None or worst_abs <= tolerance_abs)
                     and (min_cosine is None or worst_cos >= min_cosine))
    out["real_images"] = sum(r.samples for r in results if r.inputs == "real images")
    return out
