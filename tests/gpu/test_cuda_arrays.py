"""metaedge.cuda on a real GPU: DeviceArray life cycle, copies, views, streams, mapped memory, and
__cuda_array_interface__ interop with torch in both directions without copies (same data pointer)."""
import numpy as np
import pytest

from metaedge import cuda, kernels
from metaedge.cuda import DeviceArray

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.int32, np.uint8])
@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5), (2, 0, 4), (7, 1, 3)])
def test_round_trip_keeps_values_shape_and_dtype(rng, dtype, shape):
    host = (rng.standard_normal(shape) * 50).astype(dtype)
    arr = DeviceArray.from_numpy(host)
    assert arr.shape == shape and arr.dtype == np.dtype(dtype) and arr.nbytes == host.nbytes
    back = arr.to_numpy()
    assert back.dtype == host.dtype and back.shape == host.shape
    np.testing.assert_array_equal(back, host)


def test_zeros_are_zero_and_empty_has_the_shape():
    z = DeviceArray.zeros((4, 3), np.int64)
    assert (z.to_numpy() == 0).all()
    e = DeviceArray.empty((2, 3, 4), np.float16)
    assert e.shape == (2, 3, 4) and e.to_numpy().shape == (2, 3, 4)


def test_free_and_context_manager_release_and_forbid_use():
    with DeviceArray.from_numpy(np.arange(6, dtype=np.float32)) as arr:
        assert arr.to_numpy().sum() == 15
    assert arr.freed
    with pytest.raises(ValueError, match="freed"):
        arr.to_numpy()
    arr.free()  # a second free is a no-op


def test_views_share_memory_with_their_base():
    base = DeviceArray.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
    row = base[1]
    assert row.shape == (4,) and row.ptr == base.ptr + 16
    np.testing.assert_array_equal(row.to_numpy(), [4, 5, 6, 7])
    np.testing.assert_array_equal(base[-1].to_numpy(), [8, 9, 10, 11])
    flat = base.reshape(-1)
    assert flat.shape == (12,) and flat.ptr == base.ptr
    with pytest.raises(IndexError):
        base[3]
    with pytest.raises(ValueError):
        base.reshape(5, 3)


def test_cuda_array_interface_v3_fields():
    arr = DeviceArray.from_numpy(np.ones((2, 3), np.float16))
    cai = arr.__cuda_array_interface__
    assert cai["version"] == 3 and cai["shape"] == (2, 3) and cai["typestr"] == "<f2"
    assert cai["data"] == (arr.ptr, False) and cai["strides"] is None
    assert cai["stream"] == 1  # legacy default stream is spelled 1 in v3 (0 is disallowed)
    assert cuda.shape_of(arr) == (2, 3)


def test_copy_is_a_separate_buffer():
    a = DeviceArray.from_numpy(np.arange(5, dtype=np.int64))
    b = a.copy()
    assert b.ptr != a.ptr
    np.testing.assert_array_equal(b.to_numpy(), np.arange(5))


def test_stream_orders_work_and_arrays_remember_it(rng, gpu):
    with cuda.Stream() as stream:
        x = DeviceArray.from_numpy(rng.standard_normal((64, 32)).astype(np.float32), stream=stream)
        assert x.stream == stream.handle
        out = kernels.l2_normalize(x)
        assert out.stream == stream.handle  # outputs follow their input's stream
        stream.synchronize()
        np.testing.assert_allclose(np.linalg.norm(out.to_numpy(), axis=1), 1.0, rtol=1e-5)


def test_mapped_memory_is_visible_to_host_and_kernels(rng):
    x = rng.standard_normal((16, 8)).astype(np.float32)
    arr = DeviceArray.from_numpy(x, memory="mapped")
    assert arr.memory == "mapped"
    np.testing.assert_array_equal(arr.host, x)
    out = kernels.l2_normalize(arr)
    out.synchronize()
    np.testing.assert_allclose(out.to_numpy(), x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-5)
    arr.host[0, 0] = 123.0  # host writes reach the device view of the same bytes
    assert arr.to_numpy()[0, 0] == 123.0


def test_pinned_host_array_round_trip(rng):
    pinned = cuda.host_empty((4, 4), np.float32)
    pinned[...] = rng.standard_normal((4, 4))
    np.testing.assert_array_equal(DeviceArray.from_numpy(pinned).to_numpy(), pinned)


def test_bad_dtype_and_shape_are_clear_errors():
    with pytest.raises(TypeError, match="dtype"):
        DeviceArray.empty((2,), np.float64)
    with pytest.raises(ValueError, match="shape"):
        DeviceArray.empty((-1, 2))
    with pytest.raises(TypeError, match="float64"):
        DeviceArray.from_numpy(np.zeros(3))


def test_torch_tensor_goes_in_without_a_copy(torch_cuda, rng):
    torch = torch_cuda
    protos = torch.tensor(rng.standard_normal((10, 6)), dtype=torch.float32, device="cuda")
    counts = torch.ones(10, dtype=torch.int64, device="cuda")
    emb = torch.tensor(rng.standard_normal((3, 6)), dtype=torch.float32, device="cuda")
    labels = torch.tensor([2, 2, 7], dtype=torch.int64, device="cuda")
    before_ptr = protos.data_ptr()
    expected = protos.cpu().numpy().astype(np.float64)
    e = emb.cpu().numpy().astype(np.float64)
    expected[2] = (expected[2] + e[0] + e[1]) / 3
    expected[7] = (expected[7] + e[2]) / 2
    kernels.update_prototypes(protos, counts, emb, labels)  # in place through the interface: same memory
    torch.cuda.synchronize()
    assert protos.data_ptr() == before_ptr
    np.testing.assert_allclose(protos.cpu().numpy(), expected, rtol=1e-6, atol=1e-6)
    assert counts.cpu().tolist() == [1, 1, 3, 1, 1, 1, 1, 2, 1, 1]


def test_device_array_goes_into_torch_without_a_copy(torch_cuda, rng):
    torch = torch_cuda
    x = rng.standard_normal((5, 7)).astype(np.float32)
    arr = DeviceArray.from_numpy(x)
    t = torch.as_tensor(arr, device="cuda")
    assert t.data_ptr() == arr.ptr
    np.testing.assert_array_equal(t.cpu().numpy(), x)
    t.mul_(2)  # writes through torch are seen by the DeviceArray
    torch.cuda.synchronize()
    np.testing.assert_array_equal(arr.to_numpy(), 2 * x)


def test_kernel_results_on_torch_inputs_are_device_arrays_that_torch_can_wrap(torch_cuda, rng):
    torch = torch_cuda
    q = torch.tensor(rng.standard_normal((3, 16)), dtype=torch.float32, device="cuda")
    p = torch.tensor(rng.standard_normal((50, 16)), dtype=torch.float16, device="cuda")
    scores, idx = kernels.topk(q, p, k=4, metric="dot")
    assert isinstance(scores, DeviceArray) and scores.shape == (3, 4)
    ref = (q.double() @ p.double().T).topk(4, dim=1)
    np.testing.assert_allclose(torch.as_tensor(scores, device="cuda").cpu().numpy(), ref.values.cpu().numpy(),
                               rtol=1e-5, atol=1e-4)


def test_wrap_rejects_non_contiguous_torch_tensors(torch_cuda):
    torch = torch_cuda
    t = torch.zeros((4, 6), device="cuda")[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda.as_device_array(t)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.l2_normalize(t)


def test_wrapped_foreign_arrays_keep_device_and_pointer(torch_cuda):
    torch = torch_cuda
    t = torch.arange(6, dtype=torch.float32, device="cuda")
    view = cuda.as_device_array(t)
    assert view.ptr == t.data_ptr() and view.device_index == t.device.index
    view.free()  # must not free torch's memory
    assert t.sum().item() == 15


def test_a_cuda_fault_is_a_python_error_not_an_abort(tmp_path):
    # A kernel reading a bogus device pointer leaves the CUDA context unusable, so it runs in a child process.
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import numpy as np
        from metaedge import kernels
        from metaedge.cuda import DeviceArray
        class Bogus:
            __cuda_array_interface__ = {"shape": (1024, 64), "typestr": "<f4", "data": (0x10, False),
                                        "version": 3, "strides": None}
            device_index = 0
        out = DeviceArray.empty((1024, 64), np.float32)
        try:
            from metaedge._native import native
            native().l2_normalize(Bogus(), out, 1e-12)
            out.to_numpy()
        except RuntimeError as exc:
            print("RAISED", exc)
    """)
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "RAISED CUDA error" in proc.stdout, proc.stdout + proc.stderr
