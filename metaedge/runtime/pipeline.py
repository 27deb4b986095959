"""FramePipeline: the one route a frame takes - pixel format, regions of interest, resize policy, pre-processing,
the network, then top-k against a snapshot of the classes.

``EdgeClassifier`` builds one per classifier (its pixel format, resize policy and YUV matrix bound in) and sends
everything through it: a camera frame goes straight in; lists of files, PIL images and mixed arrays are decoded
and grouped into batches first (:mod:`metaedge.runtime.images`), and each batch goes in the same way.

The contract of :meth:`FramePipeline.embed` / :meth:`FramePipeline.topk` ("already validated" by type only):
``frames`` is a numpy ``uint8`` array or a CUDA array laid out as the pixel format says (one frame or a batch;
the native kernel checks the layout and raises ``ValueError``/``TypeError`` naming what is wrong), and
``rois`` is ``None`` or what ``metaedge.kernels.as_rois`` returns. Nothing else is converted on the way: the
per-frame cost is one native pre-processing call, the backend, and one native top-k call.

Pre-processing runs where the network's output lives: on the CPU for CPU backends; on the GPU for backends
whose output is a CUDA array (host frames are uploaded first, CUDA frames - e.g. a jetson-utils ``cudaImage``
or a torch tensor - are read in place through ``__cuda_array_interface__``).
"""
from __future__ import annotations

import time

import numpy as np

from metaedge import kernels
from metaedge.runtime.spec import ModelSpec

__all__ = ["FramePipeline", "frame_is_single"]

_FLOAT32 = np.dtype(np.float32)


def frame_is_single(frames, pixel_format: str) -> bool:
    """True when ``frames`` is one frame of ``pixel_format`` rather than a batch (a leading axis): gray and nv12
    frames are 2-d (gray also ``[h, w, 1]``), the others 3-d."""
    ndim = frames.ndim if isinstance(frames, np.ndarray) else len(kernels._cuda().shape_of(frames))
    if pixel_format == "nv12":
        return ndim == 2
    return ndim == 2 or ndim == 3


class FramePipeline:
    """Pre-processing + backend + top-k of frames, bound once (see the module docstring).

    ``spec``: the bundle's ``ModelSpec``; ``resize_mode`` overrides its resize policy (``None``: the bundle's).
    ``pixel_format``: the default layout of frames (``"auto"``: gray/rgb/rgba by channel count); every call may
    name another. ``device``: ``"cpu"`` or ``"cuda"`` - where pre-processing runs (the backend's output device).
    ``max_batch``: frames or boxes per backend call.
    """

    def __init__(self, spec: ModelSpec, backend, *, pixel_format: str = "auto", resize_mode: str | None = None,
                 yuv_matrix: str = "bt601", device: str = "cpu", max_batch: int = 32):
        pre = spec.preprocess if resize_mode is None else spec.preprocess.replace(resize_mode=resize_mode)
        self.spec = spec
        self.preprocess_spec = pre
        self.preprocessor = pre.preprocessor_for(pixel_format, yuv_matrix)
        self.pixel_format = pixel_format
        self.device = device
        self.max_batch = int(max_batch)
        self._backend = backend
        self._host_preprocess = self.preprocessor.frame_batch  # native, checks the frames
        self._embed = backend.embed
        self._dim = spec.embedding_dim

    def __repr__(self) -> str:
        p = self.preprocess_spec
        return (f"FramePipeline(pixel_format={self.pixel_format!r}, resize={p.resize_mode!r}, "
                f"antialias={p.antialias}, size={p.size}, device={self.device!r})")

    # ------------------------------------------------------------------ pre-processing + network
    def network_input(self, frames, rois=None, pixel_format: str | None = None):
        """``[n, C, H, W]`` float32 network input (numpy, or a DeviceArray on the GPU path)."""
        if self.device == "cuda":
            from metaedge import cuda
            if isinstance(frames, np.ndarray):
                frames = cuda.DeviceArray.from_numpy(frames if frames.flags.c_contiguous
                                                     else np.ascontiguousarray(frames))
            batch = self.preprocessor(frames, rois=rois, pixel_format=pixel_format)
            return batch if rois is not None or not frame_is_single(frames, pixel_format or self.pixel_format) \
                else batch.reshape((1, *batch.shape))
        if not isinstance(frames, np.ndarray):  # a CUDA frame for a CPU network: bring it over once
            frames = kernels._cuda().as_device_array(frames).to_numpy()
        return self._host_preprocess(frames, rois, pixel_format)

    def embed(self, frames, rois=None, pixel_format: str | None = None) -> tuple[list, list[float]]:
        """Embeddings of the frames (or boxes) in backend-sized chunks: ``([e, ...], [preprocess, network]
        seconds)``; each ``e`` is ``[m, d]`` on the backend's output device, checked for its shape."""
        t0 = time.perf_counter()
        chunks = [(frames, rois)]
        if rois is not None and len(rois) > self.max_batch:
            chunks = [(frames, rois[i:i + self.max_batch]) for i in range(0, len(rois), self.max_batch)]
        elif rois is None and not frame_is_single(frames, pixel_format or self.pixel_format) \
                and frames.shape[0] > self.max_batch:
            chunks = [(frames[i:i + self.max_batch], None) for i in range(0, frames.shape[0], self.max_batch)]
        batches = [self.network_input(f, r, pixel_format) for f, r in chunks]
        t1 = time.perf_counter()
        out = []
        for batch in batches:
            e = self._embed(batch)
            if tuple(e.shape) != (batch.shape[0], self._dim):
                raise RuntimeError(f"backend {self._backend.describe()} returned embeddings of shape "
                                   f"{list(e.shape)} for {batch.shape[0]} images, expected "
                                   f"[{batch.shape[0]}, {self._dim}]")
            out.append(e)
        return out, [t1 - t0, time.perf_counter() - t1]

    # ------------------------------------------------------------------ top-k
    def match(self, snapshot, emb, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of embeddings ``[m, d]`` against a ``ClassMatrix`` snapshot -> host ``(scores, indices)``."""
        if type(emb) is np.ndarray:
            if emb.dtype is not _FLOAT32 or not emb.flags.c_contiguous:
                emb = np.ascontiguousarray(emb, dtype=np.float32)
            topk = snapshot.host_topk or snapshot.first_host_topk  # the per-frame matcher, packed on first reuse
            try:  # the native call finds NaN/Inf in its scoring pass: no separate pass over the embeddings
                return topk(emb, k)
            except ValueError:
                _raise_if_not_finite(emb)
                raise
        scores, indices = kernels.topk(emb, snapshot.device_weights(), k, snapshot.metric)
        return scores.to_numpy(), indices.to_numpy()

    def topk(self, snapshot, frames, rois, k: int, pixel_format: str | None = None):
        """-> ``(scores [n, k], indices [n, k], [preprocess, network, top-k] seconds)`` for the frames or boxes."""
        embs, (t_pre, t_net) = self.embed(frames, rois, pixel_format)
        t0 = time.perf_counter()
        if len(embs) == 1:
            scores, indices = self.match(snapshot, embs[0], k)
        else:
            parts = [self.match(snapshot, e, k) for e in embs]
            scores, indices = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return scores, indices, [t_pre, t_net, time.perf_counter() - t0]


def _raise_if_not_finite(emb: np.ndarray) -> None:
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise ValueError(f"image {int(np.argmax(bad))}: the network produced NaN/Inf embeddings (extreme pixel "
                         f"values, or a broken engine); nothing was changed")
