"""The interface every inference backend implements: float32 NCHW batch in, embeddings out."""
from __future__ import annotations

import abc
from dataclasses import dataclass


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (package, GPU, engine or library missing); the message says why and is what
    ``open_backend`` records in its selection log."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, int, int]   # (channels, height, width); the batch axis is dynamic
    dtype: str = "float32"


def host_batch(batch, chw: tuple[int, int, int]):
    """``batch`` as a numpy ``[b, C, H, W]`` array (one ``[C, H, W]`` image gets a batch axis) with the
    network's ``chw``, any float dtype (backends convert); raises ValueError/TypeError saying what it expected."""
    import numpy as np
    arr = np.asarray(batch)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(chw):
        raise ValueError(f"batch: expected [b, {', '.join(map(str, chw))}] (NCHW), got shape {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"batch: expected float32 values (pre-processed images), got {arr.dtype}")
    return arr


class Backend(abc.ABC):
    """Runs a bundle's embedding network.

    ``embed`` takes ``[b, C, H, W]`` float32 (a numpy array, or a CUDA array for backends whose
    ``output_device`` is ``"cuda"``) and returns ``[b, embedding_dim]`` float32 on ``output_device``:
    numpy for ``"cpu"``, a ``metaedge.cuda.DeviceArray`` for ``"cuda"``.
    """

    name: str = "base"
    # Backends built from a bundle set these two in __init__; others override the properties.
    _input: InputSpec
    _dim: int

    @property
    def input_spec(self) -> InputSpec:
        return self._input

    @property
    def embedding_dim(self) -> int:
        return self._dim

    @property
    def output_device(self) -> str:
        return "cpu"

    @abc.abstractmethod
    def embed(self, batch): ...

    def warmup(self, batch_size: int = 1) -> None:
        import numpy as np
        self.embed(np.zeros((batch_size, *self.input_spec.shape), np.float32))

    def describe(self) -> str:
        """One line for logs and `metaedge info`: backend, version, device, precision."""
        return self.name

    def close(self) -> None:
        """Release sessions, engines and device memory. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
