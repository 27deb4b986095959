"""The CUDA path of EdgeClassifier: pre-processing on the GPU when the backend's output lives there, top-k
against a device copy of the class matrix, results equal to the CPU path. Skipped without a usable GPU."""
import numpy as np
import pytest

from tests.runtime.doubles import CudaProjectionBackend, Glyphs, ProjectionBackend, make_classifier

cuda = pytest.importorskip("metaedge.cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cuda.is_available(), reason="no usable CUDA device / CUDA build")]


def test_gpu_path_matches_cpu_path():
    glyphs = Glyphs(6, size=20, seed=4)
    gpu_backend = CudaProjectionBackend((1, 16, 16), 32)
    gpu = make_classifier(backend=gpu_backend)
    cpu = make_classifier(backend=ProjectionBackend((1, 16, 16), 32))
    assert gpu._pre_device == "cuda"
    for k in range(6):
        shots = glyphs.sample(k, 4)
        gpu.enroll(f"g{k}", shots)
        cpu.enroll(f"g{k}", shots)
    assert gpu_backend.inputs_on_gpu
    np.testing.assert_allclose(gpu.gallery.prototypes(), cpu.gallery.prototypes(), rtol=1e-5, atol=1e-5)
    queries = np.concatenate([glyphs.sample(k, 3) for k in range(6)])
    pg, pc = gpu.predict(queries, k=3), cpu.predict(queries, k=3)
    assert [p.label for p in pg] == [p.label for p in pc]
    np.testing.assert_allclose([p.score for p in pg], [p.score for p in pc], rtol=1e-4, atol=1e-5)
    gpu.adapt(steps=5)
    cpu.adapt(steps=5)
    assert [p.label for p in gpu.predict(queries)] == [p.label for p in cpu.predict(queries)]
