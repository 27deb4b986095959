import json
import os

import pytest

torch = pytest.importorskip("torch")

from metaedge.runtime.spec import PreprocessSpec  # noqa: E402
from metaedge.train import backbones, checkpoint  # noqa: E402
from metaedge.train.backbones import BackboneError, build_backbone  # noqa: E402
from metaedge.train.checkpoint import CheckpointError, load_checkpoint, load_resume_state, save_checkpoint  # noqa: E402


@pytest.mark.parametrize("name,size,channels,dim", [
    ("conv4", 28, 1, 64), ("conv4", 84, 3, 1600), ("resnet12", 32, 3, 640),
    ("resnet18", 32, 1, 512), ("mobilenet_v3_small", 32, 3, 576)])
def test_backbone_shapes_and_spec(name, size, channels, dim):
    torch.manual_seed(0)
    model = build_backbone(name, input_size=size, channels=channels)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, dim) and model.spec.embedding_dim == dim
    assert model.spec.input_shape == (channels, size, size)
    assert model.spec.backbone == name


def test_projection_and_options_roundtrip():
    model = build_backbone("conv4", input_size=[28, 28], color="gray", invert=True, embedding_dim=32,
                           hidden=16, metric="cosine")
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 32)
    again = build_backbone("conv4", **model.backbone_options)
    assert again.spec == model.spec
    assert model.spec.preprocess.invert and model.spec.metric == "cosine"


def test_backbone_errors():
    with pytest.raises(BackboneError, match="expected one of"):
        build_backbone("vgg")
    with pytest.raises(BackboneError, match="unknown option"):
        build_backbone("conv4", widht=3)
    with pytest.raises(BackboneError, match="too small"):
        build_backbone("conv4", input_size=8)
    with pytest.raises(BackboneError, match="not found"):
        build_backbone("resnet18", weights="/nonexistent/w.pth")
    with pytest.raises(BackboneError, match="contradicts"):
        build_backbone("conv4", channels=3, color="gray")


def test_torchvision_weights_local_gray_from_rgb(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import resnet18
    torch.manual_seed(1)
    ref = resnet18(weights=None)
    path = str(tmp_path / "r18.safetensors")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    rgb = build_backbone("resnet18", input_size=32, weights=path)
    assert torch.equal(rgb.backbone.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    gray = build_backbone("resnet18", input_size=32, channels=1, weights=path)
    assert torch.allclose(gray.backbone.conv1.weight[:, 0], ref.conv1.weight.sum(1))
    ref.eval(), gray.eval()
    x = torch.rand(2, 1, 32, 32)
    ref.fc = torch.nn.Identity()
    assert torch.allclose(gray(x), ref(x.expand(-1, 3, -1, -1)), atol=1e-4)


def test_checkpoint_roundtrip_and_resume(tmp_path):
    torch.manual_seed(0)
    model = build_backbone("conv4", input_size=28, invert=True, hidden=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    opt.step()
    resume = {"episode": 7, "best": float("-inf"), "rng": torch.get_rng_state(), "pair": (1, 2.5),
              "by_int": {3: "x"}}
    save_checkpoint(model, str(tmp_path), training={"lr": 1e-3}, metrics={"val_acc": 0.5},
                    optimizer_state=opt.state_dict(), resume_state=resume)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["schema_version"] == checkpoint.SCHEMA_VERSION and meta["spec"]["preprocess"]["invert"] is True
    loaded = load_checkpoint(str(tmp_path / "model.json"))
    assert loaded.spec == model.spec
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    opt_state, state = load_resume_state(str(tmp_path))
    assert state["episode"] == 7 and state["best"] == float("-inf") and state["pair"] == (1, 2.5)
    assert state["by_int"] == {3: "x"} and torch.equal(state["rng"], resume["rng"])
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1.0)
    opt2.load_state_dict(opt_state)
    assert opt2.param_groups[0]["betas"] == (0.9, 0.99) and opt2.param_groups[0]["lr"] == 1e-3
    for p1, p2 in zip(opt.state.values(), opt2.state.values()):
        assert all(torch.equal(p1[k], p2[k]) for k in p1)
    # saving without resume state removes the stale one
    save_checkpoint(model, str(tmp_path))
    assert not os.path.exists(tmp_path / "resume.json")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_checkpoint_errors(tmp_path):
    model = build_backbone("conv4", input_size=28, hidden=4)
    save_checkpoint(model, str(tmp_path))
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(str(tmp_path))
    save_checkpoint(model, str(tmp_path))
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["schema_version"] = 99
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="schema version 99"):
        load_checkpoint(str(tmp_path))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="never pickle"):
        save_checkpoint(model, str(tmp_path), metrics={"bad": object()})


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_hostile_checkpoint_files_are_refused_without_blocking_or_reading(tmp_path):
    import signal
    model = build_backbone("conv4", input_size=28, hidden=4)
    save_checkpoint(model, str(tmp_path))
    weights = tmp_path / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:  # a sparse file claiming far more than the recorded size
        f.truncate(size + (1 << 30))
    with pytest.raises(CheckpointError, match="more than the"):
        load_checkpoint(str(tmp_path))
    weights.unlink()
    os.mkfifo(weights)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("blocked on a FIFO")))
    signal.alarm(5)
    try:
        with pytest.raises(CheckpointError, match="FIFO"):
            load_checkpoint(str(tmp_path))
        meta = tmp_path / "model.json"
        meta.unlink()
        os.mkfifo(meta)
        with pytest.raises(CheckpointError, match="FIFO"):
            load_checkpoint(str(tmp_path))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_preprocess_spec_is_exported_from_options():
    pre = PreprocessSpec(size=(28, 28), color="gray", invert=True)
    model = build_backbone("conv4", preprocess=pre)
    assert model.spec.preprocess == pre
    with pytest.raises(BackboneError, match="either"):
        build_backbone("conv4", preprocess=pre, input_size=28)
    assert backbones.BACKBONES == ("conv4", "resnet12", "resnet18", "mobilenet_v3_small")
