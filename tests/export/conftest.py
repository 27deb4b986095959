"""Shared fixtures: a tiny embedding network with a ModelSpec, exported once per session."""
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from metaedge.runtime.spec import ModelSpec, PreprocessSpec  # noqa: E402


class TinyEmbed(torch.nn.Module):
    """conv-BN-ReLU-pool-linear: every layer kind the real backbones use, small enough to export in seconds."""

    def __init__(self, size=12, dim=8, color="gray"):
        super().__init__()
        c = 1 if color == "gray" else 3
        self.features = torch.nn.Sequential(torch.nn.Conv2d(c, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        self.head = torch.nn.Linear(16, dim)
        self.spec = ModelSpec(backbone="tiny", embedding_dim=dim, metric="cosine",
                              preprocess=PreprocessSpec(size=(size, size), color=color, invert=True,
                                                        mean=(0.1,) * c, std=(0.3,) * c))

    def forward(self, x):
        return self.head(self.features(x))


def make_tiny(seed=0, **kw):
    torch.manual_seed(seed)
    model = TinyEmbed(**kw)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them into the conv is exercised
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model():
    return make_tiny()


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory, tiny_model):
    from metaedge.export import export_bundle
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(tiny_model, out, fp16_onnx=True)
    return out


@pytest.fixture
def bundle_copy(tmp_path, tiny_bundle_dir):
    """A private copy of the tiny bundle that a test may damage."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, dst)
    return dst
