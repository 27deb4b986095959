"""export_bundle -> Bundle.load -> ONNX Runtime backend gives torch's embeddings, for every backbone."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from metaedge.export import ExportError, export_bundle  # noqa: E402
from metaedge.export.onnx import check_onnx  # noqa: E402
from metaedge.runtime.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from metaedge.runtime.bundle import Bundle  # noqa: E402
from metaedge.train import build_backbone, load_checkpoint, save_checkpoint  # noqa: E402

from .conftest import make_tiny  # noqa: E402

# Small inputs keep resnet18/mobilenet fast; the 1e-4 fp32 bar applies to conv4 and resnet18.
BACKBONES = [
    ("conv4", {"input_size": 28}, 1e-4),
    ("resnet12", {"input_size": 32, "widths": [8, 16, 24, 32]}, 1e-4),
    ("resnet18", {"input_size": 64}, 1e-4),
    ("mobilenet_v3_small", {"input_size": 32}, 1e-4),
]


def _torch_embed(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name,options,tolerance", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_bundle_round_trip(tmp_path, name, options, tolerance):
    torch.manual_seed(0)
    model = build_backbone(name, **options).eval()
    checkpoint = tmp_path / "ckpt"
    save_checkpoint(model, str(checkpoint), metrics={"val_acc": 0.5})
    bundle = export_bundle(load_checkpoint(str(checkpoint)), tmp_path / "bundle")  # as `metaedge export` does
    parity = bundle.manifest["verification"]["fp32"]
    assert parity["passed"] and parity["max_abs"] <= tolerance and parity["min_cosine"] > 0.99999
    assert bundle.manifest["source"]["checkpoint"] == str(checkpoint)
    assert bundle.manifest["source"]["metrics"] == {"val_acc": 0.5}
    assert bundle.spec == load_checkpoint(str(checkpoint)).spec

    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, *bundle.spec.input_shape)).astype(np.float32)
    with OnnxRuntimeBackend(bundle) as backend:
        got = backend.embed(x)
        assert got.shape == (5, bundle.spec.embedding_dim) and got.dtype == np.float32
        np.testing.assert_allclose(got, _torch_embed(model, x), atol=tolerance, rtol=0)
        # the batch axis is dynamic: one image and a different batch size work on the same session
        np.testing.assert_allclose(backend.embed(x[2]), _torch_embed(model, x[2:3]), atol=tolerance, rtol=0)


def test_fp16_onnx_keeps_fp32_io_and_direction(tiny_bundle_dir, tiny_model):
    import onnx
    bundle = Bundle.load(tiny_bundle_dir)
    graph = onnx.load(str(bundle.fp16_onnx_path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.data_type for i in graph.initializer} & {onnx.TensorProto.FLOAT16}
    fp16 = bundle.manifest["verification"]["fp16"]
    assert fp16["passed"] and fp16["min_cosine"] >= 0.999 and fp16["max_abs"] > 0  # really computed in fp16


def test_parity_on_real_images(tmp_path, omniglot_dir):
    model = build_backbone("conv4", input_size=28, invert=True).eval()
    try:
        bundle = export_bundle(model, tmp_path / "b", images=f"{omniglot_dir}/images_background_small1.zip",
                               num_images=16)
    except RuntimeError as exc:
        if "not implemented" in str(exc):
            pytest.skip(f"metaedge.kernels.preprocess is not implemented in this build yet: {exc}")
        raise
    parity = bundle.manifest["verification"]["fp32"]
    assert parity["real_images"] == 16
    assert [c for c in parity["checks"] if c["inputs"] == "real images"][0]["max_abs"] <= 1e-4


def test_export_failure_reports_the_numbers(tmp_path, tiny_model):
    with pytest.raises(ExportError) as info:
        export_bundle(tiny_model, tmp_path / "b", tolerance=1e-12)
    text = str(info.value)
    assert "max abs error" in text and "tolerance 1.0e-12" in text and "uniform b=1" in text
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.partial-*"))  # nothing half-written


def test_export_refuses_to_clobber(tmp_path, tiny_model):
    (tmp_path / "notabundle").mkdir()
    (tmp_path / "notabundle" / "data.txt").write_text("precious")
    with pytest.raises(ExportError, match="not empty"):
        export_bundle(tiny_model, tmp_path / "notabundle")
    with pytest.raises(ExportError, match="not a bundle"):
        export_bundle(tiny_model, tmp_path / "notabundle", overwrite=True)
    assert (tmp_path / "notabundle" / "data.txt").read_text() == "precious"


def test_overwrite_replaces_a_bundle(tmp_path):
    first = export_bundle(make_tiny(seed=1), tmp_path / "b")
    (first.engines_dir).mkdir()
    (first.engines_dir / "stale.plan").write_bytes(b"x")
    second = export_bundle(make_tiny(seed=2), tmp_path / "b", overwrite=True)
    assert second.onnx_sha256 != first.onnx_sha256 and not second.engines_dir.exists()


def test_model_without_spec_or_wrong_dim(tmp_path):
    with pytest.raises(TypeError, match="has no `.spec`"):
        export_bundle(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(TypeError, match="expected an EmbeddingModel"):
        export_bundle(object(), tmp_path / "x")
    with pytest.raises(TypeError, match="load it first"):
        export_bundle(str(tmp_path / "some_checkpoint"), tmp_path / "x")
    model = make_tiny(dim=8)
    model.head = torch.nn.Linear(16, 5)
    with pytest.raises(ExportError, match="embedding_dim 8"):
        export_bundle(model, tmp_path / "x")


def test_check_onnx_fails_loudly_on_another_opset(tiny_bundle_dir, tiny_model, tmp_path):
    import shutil
    path = tmp_path / "m.onnx"
    shutil.copy(tiny_bundle_dir / "model.onnx", path)
    with pytest.raises(ExportError, match="opset 18, not the requested 17"):
        check_onnx(path, tiny_model.spec, opset=17)
    info = check_onnx(path, tiny_model.spec)
    assert info["opset"] == 18 and "Conv" in info["operators"]
