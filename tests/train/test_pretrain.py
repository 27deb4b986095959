"""Learning without labels: unsupervised episodes, SimCLR/BYOL, pretraining runs, --init, mixed runs."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from metaedge.cli.main import main
from metaedge.train import fit, load_checkpoint
from metaedge.train.batches import MixedBatches, make_batches
from metaedge.train.config import TrainConfig
from metaedge.train.data import SyntheticGlyphs, UnlabelledImages
from metaedge.train.methods import Batch, build_method
from metaedge.train.pretrain import pretrain
from metaedge.train.pretrain.episodes import UnsupervisedEpisodeSampler
from metaedge.train.pretrain.methods import BYOL, SimCLR

TINY = dict(backbone_options={"hidden": 8}, progress=False, tensorboard=False, val_every=1000)
CLI_TINY = ["--synthetic-classes", "40", "--synthetic-samples", "10", "--threads", "1", "--backbone-option",
            "hidden=8", "--no-tensorboard", "--no-progress"]


@pytest.fixture(scope="module")
def unlabelled(glyphs):
    return UnlabelledImages.from_dataset(glyphs[0])


def test_unsupervised_episodes_never_pair_two_images_as_one_class(glyphs):
    train, _ = glyphs
    # a duplicate picture under another name must not become a second class of an episode
    images = torch.cat([train.images[:30], train.images[:5]])
    with pytest.warns(UserWarning, match="5 exact duplicate"):
        data = UnlabelledImages(images, train.preprocess, [f"img{i}" for i in range(35)], "dups")
    assert len(data) == 30
    sampler = UnsupervisedEpisodeSampler(data, ways=10, shots=2, queries=3, seed=1)
    for i in range(200):
        ep = sampler.sample(i)
        assert len(set(ep.classes.tolist())) == 10
        for label, image in enumerate(ep.classes.tolist()):
            assert set(ep.support[ep.support_labels == label].tolist()) == {image}
            assert set(ep.query[ep.query_labels == label].tolist()) == {image}
        pixels = {data.images[c].numpy().tobytes() for c in ep.classes.tolist()}
        assert len(pixels) == 10
    assert torch.equal(sampler.sample(7).classes, sampler.sample(7).classes)  # seeded per episode
    # built into a batch, the shots and queries of a class are different augmentations of its one image
    cfg = TrainConfig(ways=4, shots=1, queries=2, augment="glyphs", episodes=1)
    batch = make_batches(cfg, build_method("protonet", embedding_dim=8, ways=4, num_classes=1), data, None, 0)(
        0, torch.Generator().manual_seed(0))
    assert batch.support.shape[0] == 4 and batch.query.shape[0] == 8 and batch.ways == 4
    assert not torch.equal(batch.query[0], batch.query[1])


def test_simclr_loss_is_nt_xent_and_byol_target_follows_by_ema():
    torch.manual_seed(0)
    from metaedge.train.backbones import build_backbone
    model = build_backbone("conv4", input_size=16, hidden=4).train()
    a, b = torch.randn(6, 1, 16, 16), torch.randn(6, 1, 16, 16)
    batch = Batch(support=a, support_labels=torch.arange(6), query=b, query_labels=torch.arange(6), ways=6)
    method = SimCLR(embedding_dim=4, temperature=0.5)
    out = method.forward_loss(model, batch)
    with torch.no_grad():
        z = torch.nn.functional.normalize(method.projector(model(torch.cat([a, b]))), dim=-1)
        sim = z @ z.t() / 0.5
        sim.fill_diagonal_(float("-inf"))
        expected = torch.nn.functional.cross_entropy(sim, torch.cat([torch.arange(6, 12), torch.arange(6)]))
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    byol = BYOL(embedding_dim=4, ema=0.5)
    byol.setup(model)
    before = [p.detach().clone() for p in byol.target_backbone.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    byol.after_step(model, progress=0.0)    # tau = ema at the start of the run
    for old, new, online in zip(before, byol.target_backbone.parameters(), model.parameters()):
        assert torch.allclose(new, 0.5 * old + 0.5 * online)
    assert not any(p.requires_grad for p in byol.target_backbone.parameters())


@pytest.mark.parametrize("method,options", [
    ("simclr", {"batch_size": 16}),
    ("byol", {"batch_size": 16}),
    ("protonet", {"ways": 8, "shots": 1, "queries": 2}),
])
def test_every_self_supervised_method_reduces_its_loss(unlabelled, method, options):
    losses = []
    # light augmentation: a task the tiny network learns within 30 steps
    model = pretrain(unlabelled, method, episodes=30, callback=lambda info: losses.append(info["loss"]),
                     lr=3e-3, augment="light", **options, **TINY)
    assert len(losses) == 30
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.85 * first, (first, last)
    assert model.spec.metric == ("euclidean" if method == "protonet" else "cosine")


def test_pretrain_resume_is_bit_exact_with_byol_target(unlabelled, tmp_path):
    opts = dict(batch_size=16, lr=3e-3, **TINY)
    pretrain(unlabelled, "byol", run_dir=str(tmp_path / "a"), episodes=6, **opts)
    pretrain(unlabelled, "byol", run_dir=str(tmp_path / "b"), episodes=6, callback=lambda i: i["episode"] == 2, **opts)
    pretrain(unlabelled, "byol", run_dir=str(tmp_path / "b"), episodes=6, resume=True, **opts)
    for name in ("model.safetensors", "resume.safetensors"):
        a, b = load_file(str(tmp_path / "a" / "last" / name)), load_file(str(tmp_path / "b" / "last" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert any(k.startswith("state.method.target_backbone") for k in a)


def test_init_loads_a_pretrained_backbone(unlabelled, glyphs, tmp_path):
    pretrain(unlabelled, "simclr", run_dir=str(tmp_path / "pre"), episodes=3, batch_size=16, **TINY)
    start = load_checkpoint(str(tmp_path / "pre" / "last"))
    seen = {}

    def first_step(info):
        seen.setdefault("weights", {k: v.clone() for k, v in info["model"].state_dict().items()})
        return True
    # the weights before the first step are the pretrained ones: with lr ~ 0 they are unchanged after it
    model = fit("conv4", "protonet", glyphs[0], init=str(tmp_path / "pre" / "last"), episodes=1, lr=1e-12,
                optimizer="sgd", momentum=0.0, ways=4, queries=2, callback=first_step, progress=False,
                tensorboard=False, val_every=1000)
    for key, value in start.state_dict().items():
        if key.endswith("num_batches_tracked") or "running" in key:
            continue  # BatchNorm statistics move with the first batch
        assert torch.allclose(seen["weights"][key], value, atol=1e-9), key
    assert model.backbone_options["hidden"] == 8  # the architecture came from the checkpoint
    with pytest.raises(ValueError, match="backbone options"):
        fit("conv4", "protonet", glyphs[0], init=str(tmp_path / "pre" / "last"), episodes=1, ways=4, queries=2,
            backbone_options={"hidden": 16}, progress=False)
    rgb = glyphs[0].with_preprocess(invert=True)
    with pytest.raises(ValueError, match="expects inputs"):
        fit("conv4", "protonet", rgb, init=str(tmp_path / "pre" / "last"), episodes=1, ways=4, queries=2,
            progress=False)


def test_labelled_and_unlabelled_in_one_run(glyphs):
    train, _ = glyphs
    extra = UnlabelledImages.from_dataset(SyntheticGlyphs("test", num_classes=40, samples_per_class=10, seed=3))
    cfg = TrainConfig(ways=4, shots=1, queries=2, unlabelled_ratio=0.5, episodes=1)
    method = build_method("protonet", embedding_dim=8, ways=4, num_classes=1)
    batches = make_batches(cfg, method, train, extra, 0)
    assert isinstance(batches, MixedBatches)
    kinds = [batches.is_unsupervised(i) for i in range(200)]
    assert 70 < sum(kinds) < 130
    losses = []
    model = fit("conv4", "protonet", train, unlabelled=extra, ways=4, queries=2, episodes=8, unlabelled_ratio=0.5,
                callback=lambda info: losses.append(info["loss"]), **TINY)
    assert len(losses) == 8 and model.train_info["episodes"] == 8


def _video(path, frames=12, size=(48, 40)):
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 20, np.uint8)
        x, y = int(rng.integers(0, size[0] - 12)), int(rng.integers(0, size[1] - 12))
        frame[y:y + 12, x:x + 12] = (40 * (i % 6), 255 - 20 * i, 128)   # a moving coloured square
        writer.write(frame)
    writer.release()


def test_video_frames_feed_pretraining(tmp_path, capsys):
    video = tmp_path / "site.avi"
    _video(video)
    data = UnlabelledImages.from_video(str(video), step=2)
    assert len(data) == 6 and data.preprocess.size == (84, 84) and data.images.shape[1] == 3
    assert data.origins[1].endswith("#frame2")
    assert len(UnlabelledImages.from_video(str(video), max_frames=4)) == 4
    code = main(["pretrain", "--data", f"video:{video}", "--size", "16", "--episodes", "2", "--batch-size", "4",
                 "--run-dir", str(tmp_path / "run"), "--json", *CLI_TINY[6:]])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 2 and result["spec"]["metric"] == "cosine"
    meta = json.loads((tmp_path / "run" / "last" / "model.json").read_text())
    assert meta["training"]["data"]["seen"] == [f"video:{video}"]
    assert main(["pretrain", "--data", f"video:{tmp_path / 'none.avi'}", "--episodes", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_folder_and_list_sources(tmp_path, glyphs):
    from PIL import Image
    from metaedge.train.data.sources import build_training_data
    from metaedge.train.config import DataConfig
    train, _ = glyphs
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    pixels = train.raw_images(range(6))
    for i in range(6):
        Image.fromarray(pixels[i][:, :, 0]).save(tmp_path / "imgs" / ("sub" if i % 2 else "") / f"{i}.png")
    (tmp_path / "list.txt").write_text("# some frames\nimgs/0.png\n\nimgs/sub/1.png\n")
    data = build_training_data(DataConfig(data=f"folder:{tmp_path / 'imgs'}", color="gray", size=28), "pretrain")
    assert len(data.train) == 6 and data.train.unlabelled and data.val is None and "no validation" in data.note
    assert data.train.seen_keys() == [f"folder:{tmp_path / 'imgs'}"]
    listed = build_training_data(DataConfig(data=f"list:{tmp_path / 'list.txt'}", color="gray", size=28), "pretrain")
    assert len(listed.train) == 2
    with pytest.raises(ValueError, match="has no labels"):
        build_training_data(DataConfig(data=f"folder:{tmp_path / 'imgs'}"), "train")
    # a folder seen without labels covers the class folders inside it
    from metaedge.train.data import ImageFolderDataset
    from metaedge.train.data.base import keys_overlap
    classes = ImageFolderDataset(str(tmp_path / "imgs"), size=28, color="gray")
    assert keys_overlap(classes.seen_keys(), data.train.seen_keys()) == [f"folder:{tmp_path / 'imgs'}/sub"]
    assert keys_overlap(["folder:/a/bc"], ["folder:/a/b"]) == []


def test_cli_pretrain_then_train_init_then_eval_refuses_training_classes(tmp_path, capsys):
    pre = str(tmp_path / "pre")
    # pretraining on the val classes' images (labels removed) makes them "seen" for everything started from it
    assert main(["pretrain", *CLI_TINY, "--split", "val", "--episodes", "2", "--batch-size", "8", "--run-dir", pre,
                 "--json"]) == 0
    capsys.readouterr()
    run = str(tmp_path / "run")
    assert main(["train", "--synthetic-classes", "40", "--synthetic-samples", "10", "--threads", "1",
                 "--no-tensorboard", "--no-progress", "--init", os.path.join(pre, "last"), "--episodes", "2",
                 "--ways", "4", "--queries", "2", "--val-episodes", "4", "--unlabelled", "synthetic",
                 "--run-dir", run, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    meta = json.loads(open(os.path.join(result["checkpoint"], "model.json")).read())
    assert meta["training"]["init_from"]["checkpoint"] == os.path.join(pre, "last")
    assert meta["backbone"]["options"]["hidden"] == 8
    assert {"synthetic:seed0/glyph0000", "synthetic:seed0/glyph0024"} <= set(meta["training"]["data"]["seen"])
    # the checkpoint's own split: test classes by default, which training never saw
    assert main(["eval", run, "--ways", "4", "--shots", "1", "--queries", "2", "--episodes", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["overlap"] == [] and doc["data_options"]["split"] == "test"
    assert doc["data_options"]["synthetic_classes"] == 40
    # the training split is refused, naming the classes; --allow-overlap evaluates with a warning
    assert main(["eval", run, "--split", "train", "--ways", "4", "--shots", "1", "--episodes", "2"]) == 2
    err = capsys.readouterr().err
    assert "24 of the 24 evaluation classes were seen in training" in err and "synthetic:seed0/glyph0000" in err
    assert main(["eval", run, "--split", "train", "--allow-overlap", "--ways", "4", "--shots", "1", "--queries", "2",
                 "--episodes", "2", "--no-progress"]) == 0
    assert "warning: 24 of the 24" in capsys.readouterr().err
    assert main(["eval", run, "--split", "val", "--ways", "4", "--shots", "1", "--episodes", "2"]) == 2
    assert "8 of the 8 evaluation classes were seen in training" in capsys.readouterr().err


def test_psco_pseudo_labels_come_from_a_balanced_transport_plan():
    from metaedge.train.pretrain.methods import PsCo, sinkhorn
    torch.manual_seed(0)
    scores = torch.randn(8, 32).clamp(-1, 1)
    plan = sinkhorn(scores, epsilon=0.5, iterations=30)
    assert torch.allclose(plan.sum(1), torch.ones(8), atol=1e-5)            # every image: mass 1
    assert torch.allclose(plan.sum(0), torch.full((32,), 0.25), atol=1e-3)  # the queue spread evenly
    from metaedge.train.backbones import build_backbone
    model = build_backbone("conv4", input_size=16, hidden=4).train()
    method = PsCo(embedding_dim=4, queue_size=16, shots=2)
    method.setup(model)
    x = torch.randn(8, 1, 16, 16)
    batch = Batch(support=x, support_labels=torch.arange(8), query=x + 0.01, query_labels=torch.arange(8), ways=8)
    for step in range(3):   # the queue fills in after_step; the pseudo-supervised term joins once it is half full
        out = method.forward_loss(model, batch)
        out.loss.backward()
        method.after_step(model, 0.0)
    assert int(method.queued) == 24 and torch.allclose(method.queue.norm(dim=1), torch.ones(16), atol=1e-4)
