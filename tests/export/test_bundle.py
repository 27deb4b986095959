"""Bundle manifest: schema and version checks, tamper detection, atomic writes."""
import json

import pytest

from metaedge.runtime.bundle import FORMAT_VERSION, Bundle, BundleError, validate_manifest, write_manifest


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_manifest_carries_everything_the_device_needs(tiny_bundle_dir, tiny_model):
    bundle = Bundle.load(tiny_bundle_dir)
    m = bundle.manifest
    assert bundle.spec == tiny_model.spec
    pre = m["spec"]["preprocess"]
    assert pre == {"size": [12, 12], "color": "gray", "invert": True, "mean": [0.1], "std": [0.3],
                   "resize": "bilinear", "resize_mode": "squeeze", "antialias": True, "pad": 255.0}
    assert m["spec"]["input_shape"] == [1, 12, 12] and m["spec"]["embedding_dim"] == 8
    assert m["spec"]["metric"] == "cosine"
    assert m["model"]["input"] == {"name": "images", "shape": ["batch", 1, 12, 12], "dtype": "float32",
                                   "layout": "NCHW"}
    assert m["model"]["opset"] == 18 and m["model"]["ir_version"] <= 10
    assert m["format_version"] == FORMAT_VERSION and m["metaedge_version"]
    assert bundle.onnx_sha256 == m["model"]["sha256"] and len(bundle.onnx_sha256) == 64
    assert bundle.fp16_onnx_path.name == "model.fp16.onnx"
    assert m["verification"]["fp32"]["passed"] and m["verification"]["fp32"]["max_abs"] <= 1e-4
    assert bundle.engines_dir == tiny_bundle_dir / "engines"


def test_edited_onnx_is_detected(bundle_copy):
    onnx_path = bundle_copy / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[-10] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx was modified after export: its sha256 is"):
        Bundle.load(bundle_copy)
    assert Bundle.load(bundle_copy, verify=False).onnx_path == onnx_path  # explicit opt-out still loads


def test_edited_fp16_onnx_is_detected(bundle_copy):
    with open(bundle_copy / "model.fp16.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="model.fp16.onnx was modified"):
        Bundle.load(bundle_copy)


def test_missing_pieces(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="no such directory"):
        Bundle.load(tmp_path / "nope")
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx is missing"):
        Bundle.load(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.load(bundle_copy)
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not JSON"):
        Bundle.load(bundle_copy)


def test_newer_format_version_says_upgrade(bundle_copy):
    m = _manifest(bundle_copy)
    m["format_version"] = FORMAT_VERSION + 1
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"newer metaedge.*Upgrade metaedge"):
        Bundle.load(bundle_copy)


def _set(m, dotted, value):
    *parents, last = dotted.split(".")
    for p in parents:
        m = m[p]
    if value is KeyError:
        del m[last]
    else:
        m[last] = value


@pytest.mark.parametrize("field,value,words", [
    ("format", "something-else", ["'format'", "not a metaedge bundle"]),
    ("format_version", "1", ["'format_version'", "positive int"]),
    ("format_version", 0, ["'format_version'"]),
    ("metaedge_version", KeyError, ["'metaedge_version'"]),
    ("spec", KeyError, ["'spec'", "backbone"]),
    ("spec.embedding_dim", -3, ["'spec'", "embedding_dim"]),
    ("spec.preprocess.color", "cmyk", ["'spec'", "preprocess.color"]),
    ("spec.input_shape", [3, 12, 12], ["spec.input_shape"]),
    ("model.sha256", "abc", ["model.sha256", "64 lowercase hex"]),
    ("model.file", "../escape.onnx", ["model.file", "plain file name"]),
    ("model.bytes", "12", ["model.bytes"]),
    ("model.input.shape", ["batch", 1, 28, 28], ["model.input", "1, 12, 12]", "1, 28, 28]"]),
    ("model.output.name", "logits", ["model.output", "'embeddings'"]),
    ("model.output.dtype", "float16", ["float32"]),
    ("fp16_model.opset", None, ["fp16_model.opset"]),
    ("verification", [], ["'verification'"]),
])
def test_manifest_validation_names_the_field(bundle_copy, field, value, words):
    m = _manifest(bundle_copy)
    _set(m, field, value)
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError) as info:
        Bundle.load(bundle_copy)
    for w in words:
        assert w in str(info.value)


def test_write_manifest_validates_and_is_atomic(bundle_copy):
    m = _manifest(bundle_copy)
    m["spec"]["embedding_dim"] = 9  # disagrees with the model entry: must not reach the disk
    with pytest.raises(BundleError, match="model.output"):
        write_manifest(bundle_copy, m)
    assert Bundle.load(bundle_copy).spec.embedding_dim == 8
    good = _manifest(bundle_copy)
    good["source"]["note"] = "rewritten"
    write_manifest(bundle_copy, good)
    assert _manifest(bundle_copy)["source"]["note"] == "rewritten"
    assert not [p.name for p in bundle_copy.iterdir() if p.name.endswith(".tmp")]


def test_validate_manifest_rejects_non_objects():
    with pytest.raises(BundleError, match="expected a JSON object"):
        validate_manifest([1, 2])


def test_summary_is_printable(tiny_bundle_dir):
    s = Bundle.load(tiny_bundle_dir).summary()
    assert s["backbone"] == "tiny" and "inverted" in s["preprocess"] and "opset 18" in s["onnx"]
    assert s["fp16 onnx"] == "model.fp16.onnx" and s["parity fp32"].startswith("max abs")
