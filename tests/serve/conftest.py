"""Fixtures of the server tests: a real bundle (an untrained, seeded conv4 for 32x32 RGB, exported to ONNX) and
coloured test objects that its embeddings tell apart."""
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    from metaedge.export.onnx import export_bundle
    from metaedge.train.backbones import build_backbone
    torch.manual_seed(0)
    model = build_backbone("conv4", color="rgb", input_size=32).eval()
    return str(export_bundle(model, tmp_path_factory.mktemp("serve-bundle") / "bundle", overwrite=True).path)


@pytest.fixture(scope="session")
def objects():
    """{label: [RGB uint8 64x64 images]}: red and blue versions of two shapes (4 classes, 6 views each)."""
    from tests.runtime.scenes import objects as make
    return make(num_shapes=2, shots=6, seed=3)
