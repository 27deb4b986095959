"""TEST DOUBLES for the runtime: a deterministic stand-in for a real network, and synthetic images.

``ProjectionBackend`` (a fixed random projection of the pixels, numpy only; it ships as
``metaedge.bench.projection`` because the benchmarks time the SDK around it too) is NOT a model, but it
implements the ``Backend`` contract exactly, so the SDK can be tested without torch, ONNX Runtime or a trained
bundle. ``CudaProjectionBackend`` plays a GPU backend; ``Glyphs`` draws synthetic classes.
"""
from __future__ import annotations

import numpy as np

from metaedge.bench.projection import FINGERPRINT, ProjectionBackend, make_classifier, make_spec  # noqa: F401


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
