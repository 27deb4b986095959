"""INT8 Q/DQ export: verification numbers in the manifest, refused exports, the precision policy, backends
(ONNX Runtime CPU, TensorRT through the fake module) and torch-free use on a device."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")

from metaedge.export import ExportError, Int8Options, export_bundle  # noqa: E402
from metaedge.runtime import tensorrt_engine as te  # noqa: E402
from metaedge.runtime.backends import open_backend  # noqa: E402
from metaedge.runtime.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from metaedge.runtime.bundle import Bundle, BundleError, fingerprint_fields  # noqa: E402

from .conftest import make_tiny  # noqa: E402
from .fake_tensorrt import FakeMemory, make_fake_tensorrt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ORIN = te.DeviceIdentity(gpu_name="Orin", compute_capability="8.7", cuda_version="12.6")


def glyph_classes(classes=10, per_class=12, size=12, seed=0):
    """Dark strokes on white (the tiny spec inverts): a class is a random template, its images noisy shifts."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(classes):
        template = rng.random((size, size)) < 0.3
        for _ in range(per_class):
            shifted = np.roll(template, rng.integers(-1, 2, size=2), axis=(0, 1))
            noisy = shifted ^ (rng.random((size, size)) < 0.05)
            images.append(np.where(noisy, 20, 235).astype(np.uint8))
            labels.append(c)
    return images, np.asarray(labels)


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    images, labels = glyph_classes()
    calib, _ = glyph_classes(classes=6, seed=1)
    out = tmp_path_factory.mktemp("int8") / "bundle"
    # a random 4-channel toy: its INT8 loss is a point or two, so the accuracy tolerance is wider here
    export_bundle(make_tiny(), out, int8=Int8Options(calibration=calib, heldout=(images, labels), episodes=100,
                                                     sensitivity=True, max_loss_points=5.0))
    return out


def test_int8_export_writes_both_qdq_models_and_their_verification(int8_bundle):
    bundle = Bundle.load(int8_bundle)
    m = bundle.manifest
    assert bundle.int8_onnx_path.name == "model.int8.onnx" and bundle.int8_trt_onnx_path.name == "model.int8.trt.onnx"
    assert m["int8_model"]["quantization"]["activations"] == "uint8 asymmetric"
    assert m["int8_tensorrt_model"]["quantization"]["activations"] == "int8 symmetric"
    record = m["verification"]["int8"]
    assert record["passed"] and record["calibration"]["images"] == 72
    for target in ("cpu", "tensorrt"):
        r = record[target]
        assert 0.95 <= r["cosine"]["mean"] <= 1.0 and r["cosine"]["samples"] == 120
        acc = r["accuracy"]
        assert acc["ways"] == 5 and acc["shots"] == 1 and acc["episodes"] == 100
        assert 0.0 <= acc["fp32"] <= 1.0 and acc["loss"] == pytest.approx(acc["fp32"] - acc["int8"], abs=1e-5)
        assert acc["loss_ci95"] >= 0 and r["operators"]["QuantizeLinear"] >= 2
    policy = record["policy"]
    assert {s["op"] for s in policy["sensitivity"]} == {"Conv", "Gemm"} and policy["quantizable_layers"] == 2
    assert [s["mean_cosine"] for s in policy["sensitivity"]] == sorted(s["mean_cosine"] for s in policy["sensitivity"])
    # the fingerprint covers both INT8 files, and `metaedge info` shows the check
    fields = fingerprint_fields(m)
    assert {"int8_model.sha256", "int8_tensorrt_model.sha256", "int8_model.file"} <= set(fields)
    assert "int8 check (cpu)" in bundle.summary() and "model.int8.onnx" in bundle.summary()["int8 onnx"]


def test_the_cpu_and_tensorrt_files_use_the_integer_formats_their_runtimes_need(int8_bundle):
    import onnx
    from onnx import numpy_helper

    def zero_points(path):
        model = onnx.load(str(path))
        inits = {t.name: t for t in model.graph.initializer}
        return [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    bundle = Bundle.load(int8_bundle)
    cpu, trt = zero_points(bundle.int8_onnx_path), zero_points(bundle.int8_trt_onnx_path)
    assert cpu and all(z.data_type == onnx.TensorProto.UINT8 for z in cpu)
    assert trt and all(z.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(z).any() for z in trt)


def test_an_int8_file_edited_after_export_is_refused(int8_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(int8_bundle, copy)
    path = copy / "model.int8.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="model.int8.onnx was modified after export"):
        Bundle.load(copy)
    shutil.copy(int8_bundle / "model.int8.onnx", path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["int8_model"]["precision"] = "fp32"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="int8_model.precision"):
        Bundle.load(copy)


def test_export_is_refused_with_the_numbers_when_a_tolerance_is_exceeded(tmp_path):
    images, labels = glyph_classes()
    out = tmp_path / "refused"
    opts = Int8Options(calibration=images[:40], heldout=(images, labels), episodes=50, min_cosine=0.9999999)
    with pytest.raises(ExportError, match=r"(?s)mean embedding cosine 0\.\d+ < 0\.9999999.*--int8-min-cosine"):
        export_bundle(make_tiny(), out, int8=opts)
    assert not out.exists() and not list(tmp_path.glob(".refused*"))  # nothing half-written


def test_layers_go_back_to_float_most_sensitive_first_until_the_target(tmp_path):
    import onnx
    images, labels = glyph_classes()
    bundle = export_bundle(make_tiny(seed=3), tmp_path / "b", int8=Int8Options(
        calibration=images[:40], heldout=(images, labels), episodes=30, target_cosine=1.0, max_float_layers=1,
        max_loss_points=100.0))
    policy = bundle.manifest["verification"]["int8"]["policy"]
    most_sensitive = policy["sensitivity"][0]["layer"]
    assert policy["float_layers"] == [most_sensitive] and len(policy["steps"]) == 2
    assert bundle.manifest["int8_model"]["quantization"]["float_layers"] == [most_sensitive]
    graph = onnx.load(str(bundle.int8_onnx_path)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    layers = {n.name: n for n in graph.node if n.op_type in ("Conv", "Gemm")}
    assert layers[most_sensitive].input[1] not in dequantized  # float weights: the layer runs in float
    assert all(n.input[1] in dequantized for name, n in layers.items() if name != most_sensitive)


def _inputs(bundle_dir, n):
    images, _ = glyph_classes(classes=2, per_class=n, seed=5)
    return Bundle.load(bundle_dir).spec.preprocess.apply(np.stack(images[:n])[..., None])


def test_onnxruntime_backend_runs_int8_and_auto_says_why(int8_bundle, monkeypatch):
    x = _inputs(int8_bundle, 3)
    fp32 = OnnxRuntimeBackend(int8_bundle, precision="fp32").embed(x)
    int8 = OnnxRuntimeBackend(int8_bundle, precision="int8")
    got = int8.embed(x)
    assert int8.precision == "int8" and "model.int8.onnx (asked for)" in int8.describe()
    cos = np.sum(fp32 * got, 1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.9 and not np.allclose(fp32, got)
    monkeypatch.setenv("METAEDGE_CPU_INT8", "0")
    b = open_backend(int8_bundle, "auto")
    assert b.name == "ort-cpu" and b.precision == "fp32"
    assert "the bundle has an INT8 model, but METAEDGE_CPU_INT8=0" in b.selection_log[-1][1]
    monkeypatch.setenv("METAEDGE_CPU_INT8", "1")
    b = open_backend(int8_bundle, "auto")
    assert b.precision == "int8" and "auto: the bundle has one and METAEDGE_CPU_INT8=1" in b.selection_log[-1][1]


def test_int8_needs_an_int8_bundle(bundle_copy, monkeypatch):
    monkeypatch.setenv("METAEDGE_CPU_INT8", "1")
    assert open_backend(bundle_copy, "ort-cpu").precision == "fp32"   # auto: no INT8 model, no INT8
    with pytest.raises(Exception, match="no INT8 model.*--int8"):
        open_backend(bundle_copy, "ort-cpu", precision="int8")
    with pytest.raises(te.EngineBuildError, match="model.int8.trt.onnx"):
        te.get_engine(bundle_copy, precision="int8", device=ORIN, trt=make_fake_tensorrt("10.3.0"))


def test_cpu_feature_detection_reads_the_instruction_sets(monkeypatch):
    from metaedge.runtime import cpu_int8
    monkeypatch.delenv("METAEDGE_CPU_INT8", raising=False)
    monkeypatch.setattr(cpu_int8.platform, "system", lambda: "Linux")
    for machine, flags, expected in [("x86_64", {"avx2", "avx512_vnni"}, True), ("x86_64", {"avx2"}, False),
                                     ("aarch64", {"asimd", "asimddp"}, True), ("aarch64", {"asimd"}, False)]:
        monkeypatch.setattr(cpu_int8.platform, "machine", lambda m=machine: m)
        monkeypatch.setattr(cpu_int8, "_cpu_flags", lambda f=flags: f)
        fast, why = cpu_int8.fast_int8()
        assert fast is expected, (machine, flags, why)
        assert ("VNNI" in why or "ASIMDDP" in why)


@pytest.mark.parametrize("version,flags", [("10.3.0", ["INT8"]), ("11.2.0", [])])
def test_tensorrt_builds_int8_from_the_symmetric_qdq_model(int8_bundle, tmp_path, version, flags):
    copy = tmp_path / "b"
    shutil.copytree(int8_bundle, copy)
    trt = make_fake_tensorrt(version)
    path, key = te.get_engine(copy, precision="int8", max_batch=8, device=ORIN, trt=trt)
    bundle = Bundle.load(copy)
    assert [c[1] for c in trt.calls if c[0] == "parse_from_file"] == [str(bundle.int8_trt_onnx_path)]
    assert [c[1] for c in trt.calls if c[0] == "set_flag"] == flags
    assert key.precision == "int8" and key.onnx_sha256 == bundle.int8_trt_onnx_sha256
    assert path.name.startswith("int8-b8-") and json.loads(path.read_bytes())["int8"] is True
    # the engine cache keys by precision: an fp32 engine of the same bundle is another file
    fp32, _ = te.get_engine(copy, precision="fp32", max_batch=8, device=ORIN, trt=trt)
    assert fp32 != path and fp32.name.startswith("fp32-b8-")


def test_tensorrt_would_reject_the_cpu_model_and_the_missing_flag(int8_bundle):
    """The fake parser enforces TensorRT's symmetric-only rule and TensorRT 10's INT8-flag rule, so these two
    tests above prove the right file and flag were used."""
    bundle = Bundle.load(int8_bundle)
    kw = dict(input_name="images", input_shape=(1, 12, 12), max_batch=4, opt_batch=1, workspace_bytes=1,
              timing_cache=None)
    with pytest.raises(te.EngineBuildError, match="symmetric INT8"):
        te.build_serialized(bundle.int8_onnx_path, trt=make_fake_tensorrt("10.3.0"), **kw)
    with pytest.raises(te.EngineBuildError, match="INT8 builder flag"):
        te.build_serialized(bundle.int8_trt_onnx_path, trt=make_fake_tensorrt("10.3.0"), **kw)
    with pytest.raises(te.EngineBuildError, match="does not exist in TensorRT 11"):
        te.build_serialized(bundle.int8_trt_onnx_path, trt=make_fake_tensorrt("11.0.0"), flags=("INT8",), **kw)


def test_tensorrt_backend_runs_the_int8_engine(int8_bundle, tmp_path):
    from metaedge.runtime.backends.tensorrt import TensorRTBackend
    copy = tmp_path / "b"
    shutil.copytree(int8_bundle, copy)
    memory = FakeMemory()
    backend = TensorRTBackend(copy, precision="int8", max_batch=4, memory=memory,
                              trt=make_fake_tensorrt("10.3.0", memory=memory), device=ORIN)
    x = _inputs(int8_bundle, 5)
    expected = OnnxRuntimeBackend(copy, precision="fp32").embed(x)
    got = backend.embed(x).to_numpy()
    assert "int8" in backend.describe()
    cos = np.sum(expected * got, 1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.9


def test_an_int8_bundle_is_used_on_a_device_without_torch(int8_bundle):
    code = f"""
import sys
for name in ("torch", "torchvision"):
    sys.modules[name] = None
import numpy as np
from metaedge.runtime.backends import open_backend
from metaedge.runtime.bundle import Bundle
b = open_backend({str(int8_bundle)!r}, "ort-cpu", precision="int8")
spec = Bundle.load({str(int8_bundle)!r}).spec
x = spec.preprocess.apply(np.full((2, 20, 20, 1), 200, np.uint8))
out = b.embed(x)
assert out.shape == (2, spec.embedding_dim) and np.isfinite(out).all(), out
print(b.describe())
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "INT8 ONNX model.int8.onnx" in proc.stdout
