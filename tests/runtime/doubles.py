"""TEST DOUBLES for the runtime: a deterministic stand-in for a real network, and synthetic images.

``ProjectionBackend`` is NOT a model: it embeds the pre-processed pixels with a fixed random projection
(seeded), so images that look alike get nearby embeddings. It implements ``metaedge.runtime.backends.base.
Backend`` exactly as a real backend must (float32 NCHW in, [b, dim] out), with numpy only - so the SDK can
be tested without torch, ONNX Runtime or a trained bundle.
"""
from __future__ import annotations

import threading

import numpy as np

from metaedge.runtime.backends.base import Backend, InputSpec
from metaedge.runtime.spec import ModelSpec, PreprocessSpec

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


class Glyphs:
    """Synthetic classes: each class a random blocky template; each sample the template with a small shift
    and pixel noise. Distinct classes are far apart in any random projection; samples of one class close."""

    def __init__(self, num_classes: int, size: int = 20, seed: int = 0, channels: int = 1):
        rng = np.random.default_rng(seed)
        coarse = rng.random((num_classes, size // 4, size // 4, channels)) > 0.5
        self.templates = np.kron(coarse, np.ones((1, 4, 4, 1))).astype(np.float32) * 255
        self.size, self.channels = size, channels
        self._rng = np.random.default_rng(seed + 1)

    def sample(self, cls: int, n: int) -> np.ndarray:
        out = []
        for _ in range(n):
            img = np.roll(self.templates[cls], tuple(self._rng.integers(-1, 2, 2)), axis=(0, 1))
            img = img + self._rng.normal(0, 20, img.shape)
            out.append(np.clip(img, 0, 255).astype(np.uint8))
        return np.stack(out)


class CudaProjectionBackend(ProjectionBackend):
    """TEST DOUBLE of a GPU backend (TensorRT-like): takes the pre-processed batch on the GPU and returns the
    embeddings there as a ``metaedge.cuda.DeviceArray`` (the projection itself runs on the host)."""
    name = "test-double-cuda"

    @property
    def output_device(self) -> str:
        return "cuda"

    def embed(self, batch):
        from metaedge import cuda
        host = batch if isinstance(batch, np.ndarray) else cuda.DeviceArray.wrap(batch).to_numpy()
        self.inputs_on_gpu = not isinstance(batch, np.ndarray)
        return cuda.DeviceArray.from_numpy(super().embed(np.ascontiguousarray(host, np.float32)))
