"""torch backend, for development: runs the torch model itself (e.g. to compare with the exported bundle).

The bundle holds only ONNX, so this backend needs the model object (``metaedge.train.load_checkpoint(dir)``
gives one); it is the only backend module that imports torch, and only when one is created.
"""
from __future__ import annotations

import numpy as np

from metaedge._optional import require
from metaedge.runtime.backends.base import Backend, BackendUnavailable, InputSpec
from metaedge.runtime.spec import ModelSpec


class TorchBackend(Backend):
    """``model``: a torch module mapping ``[b, C, H, W]`` to ``[b, dim]`` with a ``.spec`` (or pass ``spec``).
    ``device``: ``"cpu"`` or ``"cuda"``; embeddings come back as numpy either way."""

    name = "torch"

    def __init__(self, model, *, spec: ModelSpec | None = None, device: str = "cpu"):
        torch = require("torch", "the torch backend")
        if model is None:
            raise BackendUnavailable("no torch model given (a bundle holds only ONNX; pass model=, e.g. "
                                     "metaedge.train.load_checkpoint(checkpoint_dir))")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        spec = spec or getattr(model, "spec", None)
        if not isinstance(spec, ModelSpec):
            raise TypeError("model: has no .spec (metaedge.runtime.spec.ModelSpec); pass spec=")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch reports no usable CUDA device")
        self._torch = torch
        self._device = torch.device(device)
        self._model = model.eval().to(self._device)
        self._spec = spec
        self._input = InputSpec(spec.input_name, tuple(spec.input_shape))

    @property
    def input_spec(self) -> InputSpec:
        return self._input

    @property
    def embedding_dim(self) -> int:
        return self._spec.embedding_dim

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def embed(self, batch) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("torch backend is closed")
        arr = np.asarray(batch)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or tuple(arr.shape[1:]) != self._input.shape:
            raise ValueError(f"batch: expected [b, {', '.join(map(str, self._input.shape))}] (NCHW), got shape "
                             f"{list(arr.shape)}")
        x = self._torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(self._device)
        with self._torch.inference_mode():
            return self._model(x).float().cpu().numpy()

    def describe(self) -> str:
        return f"torch: torch {self._torch.__version__} eager on {self._device} ({self._spec.backbone})"

    def close(self) -> None:
        self._model = None
