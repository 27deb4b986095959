"""TensorRT on a real GPU: build engines for a small bundle and compare them with ONNX Runtime.

Skipped unless ``import tensorrt`` works and metaedge's CUDA kernels see a GPU. tools/gpu_check.sh runs it
on a lent GPU machine. Nothing touches the GPU at import or collection time.
"""
import logging

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _requirements():
    try:
        import tensorrt
    except ImportError as exc:
        pytest.skip(f"TensorRT is not installed: {exc}")
    try:
        from metaedge import cuda
    except ImportError as exc:
        pytest.skip(f"metaedge.cuda is not available: {exc}")
    if not cuda.is_available():
        pytest.skip("no CUDA device / metaedge built without CUDA")
    for module in ("torch", "onnx", "onnxscript", "onnxruntime"):  # the export half of the round trip
        pytest.importorskip(module)
    return tensorrt


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory):
    trt = _requirements()
    import torch

    from metaedge.export import export_bundle
    from metaedge.runtime.tensorrt_engine import tensorrt_major
    from metaedge.train import build_backbone
    torch.manual_seed(0)
    model = build_backbone("conv4", input_size=28, invert=True, metric="cosine").eval()
    # the fp16 ONNX is what TensorRT 11 builds fp16 from; 10.x uses the builder flag (and saves the export)
    return export_bundle(model, tmp_path_factory.mktemp("trt") / "bundle",
                         fp16_onnx=tensorrt_major(trt.__version__) >= 11)


def _cosine_rows(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _reference(bundle, x):
    from metaedge.runtime.backends.onnxruntime import OnnxRuntimeBackend
    with OnnxRuntimeBackend(bundle) as ort:
        return ort.embed(x)


@pytest.mark.parametrize("precision,min_cos", [("fp32", 0.9999), ("fp16", 0.999)])
def test_engine_matches_onnxruntime(trt_bundle, precision, min_cos, caplog):
    trt = _requirements()
    from metaedge import cuda
    from metaedge.export import build_engine
    from metaedge.runtime.backends.tensorrt import TensorRTBackend
    messages = []
    with caplog.at_level(logging.INFO, logger="metaedge.engine"):
        path = build_engine(trt_bundle, precision=precision, max_batch=8, progress=messages.append)
        again = build_engine(trt_bundle, precision=precision, max_batch=8)
    assert path == again and path.exists() and "using cached" in caplog.text
    assert messages, "the build reported no progress"

    x = np.random.default_rng(0).random((11, 1, 28, 28), dtype=np.float32)  # 11 > max batch: two chunks
    expected = _reference(trt_bundle, x)
    with TensorRTBackend(trt_bundle, precision=precision, max_batch=8) as backend:
        assert backend.output_device == "cuda" and backend.max_batch == 8
        assert backend.key.tensorrt_version == trt.__version__
        out = backend.embed(x)
        assert hasattr(out, "__cuda_array_interface__")
        got = out.to_numpy()
        assert got.shape == (11, 64) and np.all(np.isfinite(got))
        cos = _cosine_rows(got, expected)
        scale = np.abs(expected).max()
        print(f"TensorRT {trt.__version__} {precision}: min cosine {cos.min():.6f}, "
              f"max abs {np.abs(got - expected).max():.2e} (scale {scale:.2e})")
        assert cos.min() >= min_cos
        assert np.abs(got - expected).max() <= (2e-2 if precision == "fp16" else 2e-3) * scale
        # a CUDA array goes in without a host round trip and gives the same result
        dev_x = cuda.DeviceArray.from_numpy(x)
        np.testing.assert_allclose(backend.embed(dev_x).to_numpy(), got, rtol=1e-5, atol=1e-6)


def test_auto_backend_picks_tensorrt(trt_bundle):
    _requirements()
    from metaedge.runtime.backends import open_backend
    backend = open_backend(trt_bundle, max_batch=8)
    assert backend.name == "tensorrt", backend.selection_log
    backend.close()


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    """conv4 with its INT8 Q/DQ models, calibrated on seeded glyph-like images (the held-out check is skipped:
    this test compares TensorRT with ONNX Runtime on the same Q/DQ file)."""
    _requirements()
    pytest.importorskip("onnxruntime.quantization")
    import torch

    from metaedge.export import Int8Options, export_bundle
    from metaedge.train import build_backbone
    torch.manual_seed(0)
    model = build_backbone("conv4", input_size=28, invert=True, metric="cosine").eval()
    rng = np.random.default_rng(0)
    calib = [np.where(rng.random((28, 28)) < 0.2, 0, 255).astype(np.uint8) for _ in range(64)]
    return export_bundle(model, tmp_path_factory.mktemp("trt-int8") / "bundle",
                         int8=Int8Options(calibration=calib, targets=("tensorrt",)))


def test_int8_engine_from_the_qdq_model_matches_onnxruntime_on_it(int8_bundle):
    """TensorRT's explicit quantisation (10.x: INT8 flag; 11.x: strongly typed) of model.int8.trt.onnx against
    ONNX Runtime running the same Q/DQ file (the same quantised arithmetic, other kernels)."""
    trt = _requirements()
    import onnxruntime

    from metaedge.export import build_engine
    from metaedge.runtime.backends.tensorrt import TensorRTBackend
    path = build_engine(int8_bundle, precision="int8", max_batch=8)
    assert path.name.startswith("int8-b8-")
    x = int8_bundle.spec.preprocess.apply(
        np.where(np.random.default_rng(1).random((11, 28, 28, 1)) < 0.2, 0, 255).astype(np.uint8))
    session = onnxruntime.InferenceSession(str(int8_bundle.int8_trt_onnx_path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"images": x})[0]
    with TensorRTBackend(int8_bundle, precision="int8", max_batch=8) as backend:
        got = backend.embed(x).to_numpy()
    cos = _cosine_rows(got, expected)
    print(f"TensorRT {trt.__version__} int8 vs ONNX Runtime on the Q/DQ file: min cosine {cos.min():.6f}")
    assert cos.min() >= 0.99
