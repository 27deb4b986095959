"""The TensorRT build and backend code, driven through a fake ``tensorrt`` module (no TensorRT here).

What this proves: the calls follow the documented 10.x/11.x API shapes encoded in fake_tensorrt.py
(including that TensorRT 11 code never touches the removed BuilderFlag.FP16), errors carry the parser's node,
the cache key/rebuild logic works end to end, and the backend's chunking and pointer arithmetic give the
right embeddings. What it cannot prove: that real TensorRT builds/runs the engine - tests/gpu does that.
"""
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from metaedge.runtime import tensorrt_engine as te  # noqa: E402
from metaedge.runtime.backends.base import BackendUnavailable  # noqa: E402
from metaedge.runtime.backends.tensorrt import TensorRTBackend  # noqa: E402
from metaedge.runtime.bundle import Bundle  # noqa: E402
from metaedge.runtime.engine_cache import list_engines  # noqa: E402

from .fake_tensorrt import FakeMemory, make_fake_tensorrt  # noqa: E402

ORIN = te.DeviceIdentity(gpu_name="Orin", compute_capability="8.7", cuda_version="12.6")


def _names(calls, kind):
    return [c for c in calls if c[0] == kind]


def test_trt10_fp16_uses_the_builder_flag_on_the_fp32_onnx(bundle_copy):
    trt = make_fake_tensorrt("10.3.0")
    messages = []
    path, key = te.get_engine(bundle_copy, precision="fp16", max_batch=16, device=ORIN, trt=trt,
                              progress=messages.append)
    bundle = Bundle.load(bundle_copy)
    assert _names(trt.calls, "parse_from_file") == [("parse_from_file", str(bundle.onnx_path))]
    assert _names(trt.calls, "set_flag") == [("set_flag", "FP16")]
    assert _names(trt.calls, "set_shape") == [("set_shape", "images", (1, 1, 12, 12), (1, 1, 12, 12),
                                               (16, 1, 12, 12))]
    assert _names(trt.calls, "build_serialized_network")[0][2] == {"WORKSPACE": te.DEFAULT_WORKSPACE_MIB << 20}
    assert key.onnx_sha256 == bundle.onnx_sha256 and key.precision == "fp16" and key.max_batch == 16
    assert path.parent == bundle.engines_dir and path.name == key.file_stem + ".plan"
    assert any("Building engine (2 steps)" in m for m in messages)
    assert any("  Tactic selection (3 steps)" in m for m in messages)


def test_trt11_fp16_builds_from_the_fp16_onnx_without_any_precision_flag(bundle_copy):
    trt = make_fake_tensorrt("11.2.0")
    assert not hasattr(trt.BuilderFlag, "FP16")  # removed in 11: touching it would raise
    path, key = te.get_engine(bundle_copy, precision="fp16", device=ORIN, trt=trt)
    bundle = Bundle.load(bundle_copy)
    assert _names(trt.calls, "parse_from_file") == [("parse_from_file", str(bundle.fp16_onnx_path))]
    assert _names(trt.calls, "set_flag") == []
    assert key.onnx_sha256 == bundle.fp16_onnx_sha256


def test_trt11_fp16_without_fp16_onnx_explains_and_auto_falls_back(bundle_copy):
    import json

    from metaedge.runtime.bundle import write_manifest
    m = json.loads((bundle_copy / "manifest.json").read_text())
    del m["fp16_model"], m["verification"]["fp16"]
    write_manifest(bundle_copy, m)  # as an export without --fp16-onnx writes it (with its own fingerprint)
    trt = make_fake_tensorrt("11.0.1")
    with pytest.raises(te.EngineBuildError, match="--fp16-onnx"):
        te.get_engine(bundle_copy, precision="fp16", device=ORIN, trt=trt)
    _, key = te.get_engine(bundle_copy, precision="auto", device=ORIN, trt=trt)
    assert key.precision == "fp32" and _names(trt.calls, "set_flag") == []
    assert te.resolve_precision(Bundle.load(bundle_copy), "auto", 10) == "fp16"


def test_fp32_never_sets_a_flag(bundle_copy):
    trt = make_fake_tensorrt("10.13.2")
    te.get_engine(bundle_copy, precision="fp32", device=ORIN, trt=trt)
    assert _names(trt.calls, "set_flag") == []
    with pytest.raises(te.EngineBuildError, match="does not exist in TensorRT 11"):
        te.build_serialized(Bundle.load(bundle_copy).onnx_path, input_name="images", input_shape=(1, 12, 12),
                            fp16_flag=True, max_batch=4, opt_batch=1, workspace_bytes=1, timing_cache=None,
                            trt=make_fake_tensorrt("11.0.0"))


def test_every_parser_error_is_reported_with_its_node(bundle_copy):
    trt = make_fake_tensorrt("10.3.0", unsupported_ops={"Conv", "Gemm"})
    with pytest.raises(te.EngineBuildError) as info:
        te.get_engine(bundle_copy, precision="fp32", device=ORIN, trt=trt)
    text = str(info.value)
    assert "ONNX parser rejected model.onnx" in text
    assert "Conv): no importer [UNSUPPORTED_NODE]" in text and "Gemm): no importer" in text
    assert "node 0 (" in text
    assert text.count("node ") == 2 and not list_engines(Bundle.load(bundle_copy).engines_dir)


def test_engine_is_cached_then_rebuilt_when_tensorrt_changes(bundle_copy, caplog):
    trt = make_fake_tensorrt("10.3.0")
    first, _ = te.get_engine(bundle_copy, device=ORIN, trt=trt)
    again, _ = te.get_engine(bundle_copy, device=ORIN, trt=trt)
    assert first == again and len(_names(trt.calls, "build_serialized_network")) == 1
    upgraded = make_fake_tensorrt("10.7.0")
    with caplog.at_level(logging.WARNING, logger="metaedge.engine"):
        newer, _ = te.get_engine(bundle_copy, device=ORIN, trt=upgraded)
    assert newer != first and "TensorRT version 10.3.0 (here: 10.7.0)" in caplog.text
    other_gpu = te.DeviceIdentity("RTX 4090", "8.9", "12.6")
    with caplog.at_level(logging.WARNING, logger="metaedge.engine"):
        te.get_engine(bundle_copy, device=other_gpu, trt=upgraded)
    assert "GPU Orin (here: RTX 4090)" in caplog.text
    assert len(list_engines(Bundle.load(bundle_copy).engines_dir)) == 3


def test_timing_cache_persists_and_bad_caches_are_replaced(bundle_copy, caplog):
    bundle = Bundle.load(bundle_copy)
    trt = make_fake_tensorrt("10.3.0")
    te.get_engine(bundle, precision="fp32", device=ORIN, trt=trt)
    cache = te.timing_cache_path(bundle.engines_dir, "10.3.0", ORIN)
    assert cache.name == "timing-orin-sm87-trt10.3.0.cache" and b'"n": 1' in cache.read_bytes()
    te.get_engine(bundle, precision="fp16", device=ORIN, trt=trt)          # second build reuses it
    assert _names(trt.calls, "set_timing_cache")[-1] == ("set_timing_cache", 1, False)
    assert b'"n": 2' in cache.read_bytes()
    cache.write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING, logger="metaedge.tensorrt"):
        te.get_engine(bundle, precision="fp32", max_batch=4, device=ORIN, trt=trt)
    assert "does not fit this GPU/TensorRT" in caplog.text and b'"n": 1' in cache.read_bytes()


@pytest.mark.parametrize("batch", [1, 5, 11])
def test_backend_runs_chunks_through_named_tensors(bundle_copy, tiny_model, batch):
    memory = FakeMemory()
    trt = make_fake_tensorrt("10.3.0", memory=memory)
    backend = TensorRTBackend(bundle_copy, precision="fp32", max_batch=4, memory=memory, trt=trt, device=ORIN)
    assert backend.output_device == "cuda" and backend.max_batch == 4 and backend.embedding_dim == 8
    x = np.random.default_rng(batch).standard_normal((batch, 1, 12, 12)).astype(np.float32)
    out = backend.embed(x)
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out.to_numpy(), expected, atol=1e-5)  # NaN poison would show unwritten rows
    sizes = [c[2] for c in _names(trt.calls, "execute_async_v3")]
    assert sizes == [min(4, batch - s) for s in range(0, batch, 4)]
    assert all(c[1] == memory.stream for c in _names(trt.calls, "execute_async_v3"))  # the backend's stream
    assert out.stream == memory.stream
    # a CUDA array input is used in place (no upload) and its producer's stream is followed
    producer = 0x1234
    again = backend.embed(memory.upload(x, producer)[0])
    np.testing.assert_allclose(again.to_numpy(), expected, atol=1e-5)
    assert again.stream == producer and _names(trt.calls, "execute_async_v3")[-1][1] == producer
    legacy = backend.embed(memory.upload(x[:1], 0)[0])  # CAI stream 1 = the legacy default stream, handle 0
    assert legacy.stream == 0 and _names(trt.calls, "execute_async_v3")[-1][1] == 0
    assert "tensorrt: TensorRT 10.3.0, fp32, batch 1..4, Orin (sm 8.7)" in backend.describe()
    with pytest.raises(ValueError, match=r"expected \[b, 1, 12, 12\]"):
        backend.embed(np.zeros((2, 3, 12, 12), np.float32))
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.embed(x)


def test_backend_refuses_stale_engines_and_missing_pieces(bundle_copy):
    memory = FakeMemory()
    with pytest.raises(BackendUnavailable, match="building is disabled: no engine cached yet"):
        TensorRTBackend(bundle_copy, build=False, memory=memory, trt=make_fake_tensorrt("10.3.0", memory),
                        device=ORIN)
    bad = make_fake_tensorrt("10.3.0", memory, unsupported_ops={"Conv"})
    with pytest.raises(BackendUnavailable, match="(?s)engine build failed.*Conv"):
        TensorRTBackend(bundle_copy, memory=memory, trt=bad, device=ORIN)
    with pytest.raises(BackendUnavailable, match="(?i)cuda"):
        TensorRTBackend(bundle_copy, trt=make_fake_tensorrt("10.3.0", memory), device=ORIN)  # real metaedge.cuda


def test_backend_embed_is_safe_from_several_threads(bundle_copy, tiny_model):
    from concurrent.futures import ThreadPoolExecutor
    memory = FakeMemory()
    trt = make_fake_tensorrt("10.3.0", memory=memory)
    backend = TensorRTBackend(bundle_copy, precision="fp32", max_batch=3, memory=memory, trt=trt, device=ORIN)
    inputs = [np.random.default_rng(i).standard_normal((1 + i % 7, 1, 12, 12)).astype(np.float32)
              for i in range(24)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda x: backend.embed(x).to_numpy(), inputs))
    with torch.no_grad():
        for x, got in zip(inputs, outs):
            np.testing.assert_allclose(got, tiny_model(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_backend_checks_cuda_array_layout(bundle_copy, tiny_model):
    memory = FakeMemory()
    backend = TensorRTBackend(bundle_copy, precision="fp32", max_batch=4, memory=memory,
                              trt=make_fake_tensorrt("10.3.0", memory=memory), device=ORIN)
    img = np.random.default_rng(3).standard_normal((1, 12, 12)).astype(np.float32)
    arr, _ = memory.upload(img, 0)
    arr.__cuda_array_interface__["strides"] = (576, 48, 4)       # explicit but C-contiguous: fine
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(img[None])).numpy()
    np.testing.assert_allclose(backend.embed(arr).to_numpy(), expected, atol=1e-5)
    arr.__cuda_array_interface__["strides"] = (4, 48, 576)       # a transposed view
    with pytest.raises(ValueError, match="C-contiguous"):
        backend.embed(arr)
    arr.__cuda_array_interface__["typestr"] = "<f2"
    with pytest.raises(TypeError, match="float32 CUDA array"):
        backend.embed(arr)
