"""`metaedge compress` as a user runs it: a trained checkpoint -> pruned + fine-tuned on the data it recorded -> a
checkpoint that loads, exports and embeds to the same shape with fewer parameters."""
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from tests.cli_helpers import SYNTHETIC, run  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("compress-cli") / "run"
    code, _, err = run(["train", *SYNTHETIC, "--episodes", "4", "--ways", "5", "--queries", "5", "--val-every", "4",
                        "--val-queries", "5", "--val-episodes", "5", "--backbone-option", "hidden=32", "--threads", "1",
                        "--run-dir", str(run_dir), "--no-progress", "--no-tensorboard"])
    assert code == 0, err
    return run_dir / "best"


def _parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_compress_round_trip(trained, tmp_path):
    from metaedge.export import export_bundle
    from metaedge.train import load_checkpoint
    out = tmp_path / "p50"
    code, printed, err = run(["compress", str(trained), "--prune", "0.5", "--finetune-episodes", "3",
                              "-o", str(out), "--threads", "1", "--no-progress", "--json"])
    assert code == 0, err
    report = json.loads(printed)
    assert report["finetune"]["episodes"] == 3 and report["finetune"]["stopped_by"] == "episodes"
    # the recorded data was used: the synthetic train split, validated on its val split
    assert report["finetune"]["config"]["ways"] == 5 and report["finetune"]["best_val_accuracy"] is not None
    original, pruned = load_checkpoint(str(trained)), load_checkpoint(str(out))
    assert _parameters(pruned) < 0.4 * _parameters(original)
    assert pruned.checkpoint_meta["training"]["compress"]["ratio"] == 0.5
    assert pruned.checkpoint_meta["training"]["data"]["options"]["synthetic_classes"] == 40
    x = torch.randn(2, *original.spec.input_shape)
    with torch.no_grad():
        assert pruned.eval()(x).shape == (2, pruned.spec.embedding_dim)
    assert report["embedding_dim"] == [original.spec.embedding_dim, pruned.spec.embedding_dim]
    bundle = export_bundle(pruned, tmp_path / "bundle")
    assert bundle.spec.embedding_dim == pruned.spec.embedding_dim
    assert bundle.manifest["verification"]["fp32"]["passed"]
    # the compressed checkpoint is an ordinary one: eval reads its recorded data and split
    code, printed, err = run(["eval", str(out), "--episodes", "5", "--shots", "1", "--queries", "5", "--json",
                              "--no-progress"])
    assert code == 0, err
    assert json.loads(printed)["reports"][0]["ways"] == 5


def test_compress_keeps_the_embedding_size_and_prunes_only(trained, tmp_path):
    from metaedge.train import load_checkpoint
    out = tmp_path / "p30"
    code, printed, err = run(["compress", str(trained), "--prune", "0.3", "--finetune", "none",
                              "--keep-embedding-dim", "-o", str(out)])
    assert code == 0, err
    assert "fine-tuned" not in printed and "fewer multiply-adds" in printed
    assert load_checkpoint(str(out)).spec.embedding_dim == load_checkpoint(str(trained)).spec.embedding_dim


def test_compress_refusals(trained, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run(["compress", str(trained), "--prune", "0.5", "--finetune", "0", "-o", str(out)])
    assert code == 1 and "--output" in err and "--force" in err
    assert (out / "notes.txt").read_text() == "mine" and not (out / "model.json").exists()
    code, _, err = run(["compress", str(trained), "--prune", "0.5", "--finetune", "0", "-o", str(out), "--force"])
    assert code == 0, err
    assert (out / "model.json").exists()
    for argv, flag in ((["--prune", "1.5"], "--prune"), (["--prune", "0.5", "--finetune-episodes", "0"],
                                                          "--finetune-episodes"),
                       (["--prune", "0.5", "--round-to", "0"], "--round-to")):
        code, _, err = run(["compress", str(trained), *argv, "-o", str(tmp_path / "x")])
        assert code == 2 and flag in err, err
    code, _, err = run(["compress", str(trained), "--prune", "0.5", "--finetune", "soon", "-o", str(tmp_path / "x")])
    assert code == 2 and "--finetune" in err
    code, _, err = run(["compress", str(tmp_path / "nothing"), "--prune", "0.5", "-o", str(tmp_path / "x")])
    assert code == 1 and "nothing" in err
    code, _, err = run(["compress", str(trained), "--prune", "0.5", "--finetune-episodes", "2",
                        "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "x")])
    assert code == 2 and "--data" in err, err   # a data error, as `metaedge train` reports it
    assert not (tmp_path / "x").exists()
