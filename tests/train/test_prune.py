"""Channel pruning: smaller dense networks with the same output contract, rebuilt from their checkpoint, exported
as usual."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from metaedge.train import build_backbone, load_checkpoint, save_checkpoint  # noqa: E402
from metaedge.train.backbones import BackboneError  # noqa: E402
from metaedge.train.prune import PruneError, layer_shapes, prune_channels  # noqa: E402

SMALL = {"conv4": dict(input_size=28, hidden=32), "resnet12": dict(input_size=32, color="gray", widths=[16, 32, 48, 64]),
         "resnet18": dict(input_size=32, color="gray"), "mobilenet_v3_small": dict(input_size=32)}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_pruning_keeps_the_contract_and_rebuilds_from_the_checkpoint(name, tmp_path):
    torch.manual_seed(0)
    model = build_backbone(name, **SMALL[name]).eval()
    pruned, report = prune_channels(model, 0.5)
    x = torch.randn(3, *model.spec.input_shape)
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (3, pruned.spec.embedding_dim) and torch.isfinite(out).all()
    assert pruned.spec.input_shape == model.spec.input_shape and pruned.spec.preprocess == model.spec.preprocess
    assert report["macs_ratio"] > 2.5 and report["params_ratio"] > 2.5   # ~(1 - 0.5)^2 of the work remains
    assert report["embedding_dim"] == [model.spec.embedding_dim, pruned.spec.embedding_dim]
    assert layer_shapes(model.backbone) != layer_shapes(pruned.backbone) == layer_shapes(build_backbone(
        name, **SMALL[name], pruned=pruned.backbone_options["pruned"]).backbone)
    save_checkpoint(pruned, str(tmp_path / "ckpt"))
    loaded = load_checkpoint(str(tmp_path / "ckpt"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out, atol=1e-5, rtol=1e-5)
    assert model.spec.embedding_dim == build_backbone(name, **SMALL[name]).spec.embedding_dim  # original untouched


def test_channel_counts_and_the_embedding_option():
    torch.manual_seed(0)
    model = build_backbone("resnet12", **SMALL["resnet12"])
    pruned, _ = prune_channels(model, 0.3, round_to=8)
    convs = [m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    kept, _ = prune_channels(model, 0.5, keep_embedding_dim=True)
    assert kept.spec.embedding_dim == model.spec.embedding_dim
    # the lowest-norm channels go: zeroing half of a layer's filters makes exactly those the ones removed
    conv = build_backbone("conv4", **SMALL["conv4"])
    first = conv.backbone[0][0]
    with torch.no_grad():
        first.weight[::2] = 0
    small, _ = prune_channels(conv, 0.5, round_to=None)
    assert small.backbone[0][0].out_channels == 16
    assert torch.count_nonzero(small.backbone[0][0].weight.flatten(1).norm(dim=1)) == 16


def test_pruned_model_exports_to_a_bundle(tmp_path):
    pytest.importorskip("onnxruntime")
    from metaedge.export import export_bundle
    torch.manual_seed(0)
    pruned, _ = prune_channels(build_backbone("resnet12", **SMALL["resnet12"]), 0.5)
    save_checkpoint(pruned, str(tmp_path / "ckpt"))
    bundle = export_bundle(load_checkpoint(str(tmp_path / "ckpt")), tmp_path / "bundle")
    assert bundle.spec.embedding_dim == pruned.spec.embedding_dim
    assert bundle.manifest["verification"]["fp32"]["passed"]


def test_bad_requests_and_records_are_refused():
    model = build_backbone("conv4", **SMALL["conv4"])
    for ratio in (0, 1, -0.1, 1.5):
        with pytest.raises(PruneError, match="ratio"):
            prune_channels(model, ratio)
    with pytest.raises(BackboneError, match="'0.9' is not a Conv2d"):
        build_backbone("conv4", **SMALL["conv4"], pruned={"0.9": {"out": 3}})
    with pytest.raises(BackboneError, match="malformed"):
        build_backbone("conv4", **SMALL["conv4"], pruned={"0.0": {"out": 3}})
