"""A stand-in network for benchmarks and tests: a fixed random projection of the pixels, numpy only.

``ProjectionBackend`` is NOT a model: it embeds the pre-processed pixels with a fixed random projection (seeded),
so images that look alike get nearby embeddings. It implements ``metaedge.runtime.backends.base.Backend``
exactly as a real backend must (float32 NCHW in, ``[b, dim]`` out), so what surrounds the network - the
gallery store, top-k, the SDK's bookkeeping - can be timed (``metaedge.bench.gallery``) and tested without
torch, ONNX Runtime or a trained bundle.
"""
from __future__ import annotations

import threading

import numpy as np

from metaedge.runtime.backends.base import Backend, InputSpec
from metaedge.runtime.spec import ModelSpec, PreprocessSpec

__all__ = ["ProjectionBackend", "make_spec", "make_classifier", "FINGERPRINT"]

FINGERPRINT = "test-double-" + "0" * 52


class ProjectionBackend(Backend):
    name = "test-double"

    def __init__(self, input_shape=(1, 16, 16), dim: int = 32, seed: int = 0, nan_on_call: int | None = None):
        self._shape = tuple(input_shape)
        self._dim = dim
        rng = np.random.default_rng(seed)
        self._proj = (rng.standard_normal((int(np.prod(self._shape)), dim)) / np.sqrt(np.prod(self._shape))
                      ).astype(np.float32)
        self.calls = 0
        self.closed = False
        self.nan_on_call = nan_on_call
        self._lock = threading.Lock()

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec("images", self._shape)

    @property
    def embedding_dim(self) -> int:
        return self._dim

    def embed(self, batch):
        assert isinstance(batch, np.ndarray) and batch.dtype == np.float32, "backend contract: float32 numpy"
        assert batch.ndim == 4 and batch.shape[1:] == self._shape, f"backend contract: got {batch.shape}"
        with self._lock:
            self.calls += 1
            call = self.calls
        out = batch.reshape(len(batch), -1) @ self._proj
        if self.nan_on_call is not None and call >= self.nan_on_call:
            out[:] = np.nan
        return out

    def describe(self) -> str:
        return f"test-double projection {self._shape}->{self._dim}"

    def close(self) -> None:
        self.closed = True


def make_spec(size=(16, 16), color: str = "gray", dim: int = 32, metric: str = "cosine", **extra) -> ModelSpec:
    channels = 1 if color == "gray" else 3
    return ModelSpec(backbone="test-double", embedding_dim=dim,
                     preprocess=PreprocessSpec(size=tuple(size), color=color, mean=(0.5,) * channels,
                                               std=(0.25,) * channels), metric=metric, extra=extra).validate()


def make_classifier(gallery=None, dim: int = 32, metric: str = "cosine", size=(16, 16), color: str = "gray",
                    backend=None, **kwargs):
    from metaedge.runtime.classifier import EdgeClassifier
    spec = make_spec(size=size, color=color, dim=dim, metric=metric)
    backend = backend or ProjectionBackend((spec.preprocess.channels, *size), dim)
    kwargs.setdefault("fingerprint", FINGERPRINT)
    return EdgeClassifier(backend, gallery=gallery, spec=spec, **kwargs)
