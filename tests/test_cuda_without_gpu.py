"""metaedge.cuda where no GPU can run (CI, this machine): importing never fails or touches the driver,
is_available() is False with a reason, and CUDA requests fail with errors that say why and what to do.
The DeviceArray bookkeeping that needs no GPU (views, the array interface) is checked on fake buffers."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from metaedge import cuda, kernels

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_gpu():
    if cuda.is_available():
        pytest.skip("a usable GPU is present; these tests describe machines without one")


def test_import_never_uses_the_native_extension():
    # metaedge._C replaced by a module that fails on any use: importing must not use it (so no driver call).
    code = textwrap.dedent("""
        import sys, types
        class Trap(types.ModuleType):
            def __getattr__(self, name):
                raise AssertionError(f"metaedge._C.{name} was used at import time")
        sys.modules["metaedge._C"] = Trap("metaedge._C")
        import metaedge, metaedge.cuda, metaedge.kernels
        print("clean import")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "clean import" in proc.stdout


def test_import_and_probe_in_a_fresh_interpreter():
    code = "import metaedge, metaedge.cuda as c, metaedge.kernels; print('ok', c.is_available())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok ")


def test_is_available_is_false_with_a_reason(no_gpu):
    assert cuda.is_available() is False
    reason = cuda.why_unavailable()
    assert isinstance(reason, str) and len(reason) > 10
    assert cuda.device_count() == 0


def test_allocation_raises_a_clear_error(no_gpu):
    for make in (lambda: cuda.DeviceArray.empty((2, 3)), lambda: cuda.DeviceArray.zeros(4),
                 lambda: cuda.DeviceArray.from_numpy(np.ones(3, np.float32)), cuda.Stream,
                 lambda: cuda.host_empty((2,))):
        with pytest.raises(cuda.CudaUnavailableError) as info:
            make()
        assert "CUDA is not available" in str(info.value)
        assert cuda.why_unavailable() in str(info.value)


class FakeCudaArray:
    """Looks like a CUDA array to metaedge (the interface only; never dereferenced here)."""

    def __init__(self, shape, typestr="<f4"):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0xDEAD0000, False),
                                         "version": 3, "strides": None}


def test_kernels_with_cuda_inputs_fail_clearly_without_a_gpu(no_gpu):
    with pytest.raises(cuda.CudaUnavailableError, match="CUDA is not available"):
        kernels.l2_normalize(FakeCudaArray((4, 8)))
    with pytest.raises(cuda.CudaUnavailableError):
        kernels.topk(FakeCudaArray((2, 8)), FakeCudaArray((10, 8)), k=3)


def test_cpu_only_build_names_the_rebuild(no_gpu):
    from metaedge._native import native
    C = native()
    if C.cuda_built:
        pytest.skip("this extension has CUDA kernels; the CPU-only message is for METAEDGE_CUDA=0 builds")
    assert "METAEDGE_CUDA=1" in cuda.why_unavailable()
    with pytest.raises(ValueError, match="built without CUDA.*METAEDGE_CUDA=1"):
        C.l2_normalize(FakeCudaArray((4, 8)), FakeCudaArray((4, 8)), 1e-12)


def test_mixing_host_and_cuda_arrays_names_both():
    with pytest.raises(ValueError, match=r"`protos` is a host array but `queries` is a CUDA array"):
        kernels.topk(FakeCudaArray((2, 8)), np.ones((10, 8), np.float32), k=1)
    with pytest.raises(ValueError, match=r"`labels` is a host array but `emb` is a CUDA array"):
        kernels.class_prototypes(FakeCudaArray((2, 8)), [0, 1], 2)
    with pytest.raises(ValueError, match=r"`support` is a host array but `weights`"):
        kernels.adapt_head(FakeCudaArray((2, 8)), np.ones((3, 8), np.float32), [0, 1, 1])


def _fake_array(shape, dtype=np.float32, offset=0):
    buf = cuda._Buffer.foreign(0x7000_0000, device=0, stream=0)
    return cuda.DeviceArray(buffer=buf, offset=offset, shape=shape, dtype=dtype, device=0, stream=0)


def test_device_array_views_and_interface_without_a_gpu():
    a = _fake_array((3, 4), np.float16)
    assert a.nbytes == 24 and a.ndim == 2 and len(a) == 3 and a.size == 12
    assert a[2].ptr == a.ptr + 2 * 4 * 2 and a[-1].ptr == a[2].ptr and a[1].shape == (4,)
    assert a.reshape(-1).shape == (12,) and a.reshape((2, 6)).shape == (2, 6) and a.reshape(4, -1).shape == (4, 3)
    with pytest.raises(ValueError):
        a.reshape(5, -1)
    with pytest.raises(IndexError):
        a[3]
    assert a[1:3].shape == (2, 4) and a[1:3].ptr == a[1].ptr and a[1:].shape == (2, 4) and a[2:1].shape == (0, 4)
    assert a[:-1].shape == (2, 4) and a[:].ptr == a.ptr
    with pytest.raises(TypeError, match="integer or a slice"):
        a[0:3:2]
    with pytest.raises(TypeError, match="integer or a slice"):
        a[0, 1]
    cai = a.__cuda_array_interface__
    assert cai == {"shape": (3, 4), "typestr": "<f2", "data": (a.ptr, False), "version": 3, "strides": None,
                   "stream": 1}
    assert cuda.shape_of(a) == (3, 4) and cuda.shape_of(FakeCudaArray((5, 2))) == (5, 2)
    a.free()  # foreign memory: forgets it, frees nothing
    with pytest.raises(ValueError, match="freed"):
        a.ptr


def test_stream_argument_forms():
    class TorchLikeStream:
        cuda_stream = 0x1234
    assert cuda._stream_handle(None) == 0
    assert cuda._stream_handle(0x55) == 0x55
    assert cuda._stream_handle(TorchLikeStream()) == 0x1234
    with pytest.raises(TypeError, match="stream"):
        cuda._stream_handle("fast")


def test_contiguity_rule_matches_the_native_one():
    assert cuda._is_c_contiguous((3, 4), (16, 4), 4)
    assert cuda._is_c_contiguous((3, 1), (4, 999), 4)  # size-1 axes may have any stride
    assert not cuda._is_c_contiguous((3, 4), (4, 12), 4)
