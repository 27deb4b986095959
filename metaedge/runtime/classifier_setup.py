"""What ``EdgeClassifier.__init__`` decides before the first frame: which bundle, whether the backend fits the
model spec, which gallery (and whether the classifier owns it), the manifest's unknown threshold, and where the
pre-processing runs."""
from __future__ import annotations

import math
import os

from metaedge.runtime.backends.base import Backend
from metaedge.runtime.gallery import Gallery, GalleryMismatchError
from metaedge.runtime.spec import ModelSpec


def load_bundle(bundle):
    """A ``Bundle`` from a directory path, or the ``Bundle`` given."""
    from metaedge.runtime.bundle import Bundle
    if isinstance(bundle, (str, os.PathLike)):
        return Bundle.load(bundle)
    if isinstance(bundle, Bundle):
        return bundle
    raise TypeError(f"`bundle`: expected a bundle directory, a metaedge.Bundle or a Backend, got "
                    f"{type(bundle).__name__}")


def check_backend(backend: Backend, spec: ModelSpec) -> None:
    """The backend's input shape and embedding size are what ``spec`` says."""
    if int(backend.embedding_dim) != spec.embedding_dim:
        raise GalleryMismatchError(f"backend {backend.describe()} produces embeddings of dimension "
                                   f"{backend.embedding_dim}, the model spec says {spec.embedding_dim}")
    shape = tuple(backend.input_spec.shape)
    if shape != tuple(spec.input_shape):
        raise ValueError(f"backend {backend.describe()} takes input {list(shape)}, the model spec's pre-processing "
                         f"produces {list(spec.input_shape)}")


def open_gallery(gallery, spec: ModelSpec, fingerprint, *, autosave: bool, support_cap: int, seed: int,
                 legacy_fingerprints: tuple[str, ...]) -> tuple[Gallery, bool]:
    """``(gallery, owned)``: an in-memory gallery for None, the file opened for a path (owned: the classifier
    closes it), or the ``Gallery`` given after checking it belongs to this model."""
    dim, metric = spec.embedding_dim, spec.metric
    if gallery is None:
        return Gallery(dim, metric, fingerprint, support_cap=support_cap, seed=seed), False
    if isinstance(gallery, Gallery):
        gallery.check_compatible(fingerprint=fingerprint, embedding_dim=dim, metric=metric,
                                 legacy_fingerprints=legacy_fingerprints, adopt=True)
        return gallery, False
    if isinstance(gallery, (str, os.PathLike)):
        return Gallery.open(gallery, embedding_dim=dim, metric=metric, fingerprint=fingerprint,
                            legacy_fingerprints=legacy_fingerprints, support_cap=support_cap, seed=seed,
                            autosave=autosave), True
    raise TypeError(f"`gallery`: expected None, a file path or a Gallery, got {type(gallery).__name__}")


def default_threshold(manifest: dict, spec: ModelSpec) -> float | None:
    """The bundle's unknown threshold (manifest ``open_set``, manifest, model spec), if it has a finite one."""
    for source in (manifest.get("open_set") or {}, manifest, spec.extra):
        value = source.get("unknown_threshold") if isinstance(source, dict) else None
        if value is not None:
            try:
                v = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(v):
                return v
    return None


def preprocess_device(backend: Backend) -> str:
    """``cuda`` when the backend's embeddings live on the GPU and our CUDA kernels load, else ``cpu``."""
    if getattr(backend, "output_device", "cpu") != "cuda":
        return "cpu"
    try:
        from metaedge import cuda
        return "cuda" if cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"
