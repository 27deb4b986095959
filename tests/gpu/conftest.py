"""GPU tests: marked `gpu`, skipped with the reason when CUDA cannot run here.

Nothing touches the GPU at import or collection: the availability probe runs in a fixture, at test time.
Inputs are made on the host with seeded numpy generators and moved with DeviceArray.from_numpy, so every test
runs without torch; the interop tests import torch themselves and skip without it.
"""
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _require_cuda():
    from metaedge import cuda
    if not cuda.is_available():
        pytest.skip(f"no usable CUDA: {cuda.why_unavailable()}")


@pytest.fixture
def rng():
    return np.random.default_rng(20240607)


@pytest.fixture
def gpu():
    """gpu(x) -> DeviceArray copy of a numpy array."""
    from metaedge.cuda import DeviceArray
    return DeviceArray.from_numpy


@pytest.fixture
def torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch is installed but cannot use CUDA here")
    return torch
