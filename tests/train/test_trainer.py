import json
import os

import pytest
import torch
from safetensors.torch import load_file

from metaedge.train import fit, load_checkpoint
from metaedge.train.trainer import TrainConfig, lr_at

COMMON = dict(ways=4, shots=1, queries=2, backbone_options={"hidden": 8}, progress=False, val_episodes=10)


def test_lr_schedules():
    cos = TrainConfig(lr=1.0, episodes=100, warmup=10, min_lr_ratio=0.1)
    assert lr_at(cos, 0, 0.0) == pytest.approx(0.1) and lr_at(cos, 9, 0.09) == pytest.approx(1.0)
    assert lr_at(cos, 10, 0.10) == pytest.approx(1.0) and lr_at(cos, 100, 1.0) == pytest.approx(0.1)
    assert lr_at(cos, 55, 0.55) == pytest.approx(0.1 + 0.9 * 0.5)
    step = TrainConfig(lr=1.0, episodes=90, schedule="step", step_size=30, gamma=0.1)
    assert [lr_at(step, e, e / 90) for e in (0, 29, 30, 89)] == pytest.approx([1, 1, 0.1, 0.01])
    assert lr_at(TrainConfig(lr=0.5, episodes=9, schedule="constant"), 8, 0.9) == 0.5


def test_resume_is_bit_exact(glyphs, tmp_path):
    train, val = glyphs
    opts = dict(COMMON, episodes=8, val_every=4, augment="light", adversarial="pgd", adv_steps=1,
                weight_decay=1e-4, grad_clip=5.0)
    straight = tmp_path / "straight"
    fit("conv4", "protonet", train, val_data=val, run_dir=str(straight), **opts)
    split = tmp_path / "split"
    stopped = fit("conv4", "protonet", train, val_data=val, run_dir=str(split),
                  callback=lambda info: info["episode"] == 3, **opts)
    assert stopped.train_info["episodes"] == 3 and stopped.train_info["stopped_by"] == "callback"
    fit("conv4", "protonet", train, val_data=val, run_dir=str(split), resume=True, **opts)
    a, b = load_file(str(straight / "last" / "model.safetensors")), load_file(str(split / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = load_file(str(straight / "last" / "resume.safetensors")), load_file(str(split / "last" / "resume.safetensors"))
    optimizer_keys = [k for k in ra if k.startswith("optimizer")]
    assert optimizer_keys and all(torch.equal(ra[k], rb[k]) for k in optimizer_keys)


def test_best_checkpoint_kept_and_run_dir_contents(glyphs, tmp_path):
    train, val = glyphs
    model = fit("conv4", "protonet", train, val_data=val, run_dir=str(tmp_path), episodes=6, val_every=2,
                log_every=2, **COMMON)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val_accuracy" in r]
    assert [r["episode"] for r in vals] == [2, 4, 6]
    best = max(vals, key=lambda r: r["val_accuracy"])
    meta = json.loads((tmp_path / "best" / "model.json").read_text())
    assert meta["metrics"]["val_accuracy"] == best["val_accuracy"] and meta["metrics"]["episode"] == best["episode"]
    assert model.train_info["best_episode"] == best["episode"]
    loaded = load_checkpoint(str(tmp_path / "best"))
    for (k, v), (_, w) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(v, w), k
    assert loaded.spec == model.spec and meta["training"]["method"] == "protonet"
    assert any(r.get("train_loss") is not None for r in records)
    assert os.listdir(tmp_path / "tensorboard")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["ways"] == 4 and config["data"]["train"]["classes"] == train.num_classes


def test_time_budget_and_options(glyphs):
    train, val = glyphs
    model = fit("conv4", "protonet", train, time_budget_s=0.5, optimizer="sgd", lr=0.01, schedule="step",
                label_smoothing=0.1, adversarial="fgsm", channels_last="on", val_every=1000, **COMMON)
    assert model.train_info["episodes"] >= 1 and model.train_info["elapsed_s"] >= 0.5
    assert model.train_info["best_val_accuracy"] is None  # no validation data: the last model is returned
    assert not model.training and model.spec.preprocess == train.preprocess


def test_adversarial_queries_raise_the_loss(glyphs):
    from metaedge.train.backbones import build_backbone
    from metaedge.train.methods import Batch, ProtoNet
    train, _ = glyphs
    torch.manual_seed(0)
    model = build_backbone("conv4", hidden=8).train()
    method = ProtoNet()
    batch = Batch(support=train.batch(range(0, 40, 10)), support_labels=torch.arange(4),
                  query=train.batch(range(1, 41, 10)), query_labels=torch.arange(4), ways=4,
                  generator=torch.Generator().manual_seed(0))
    clean = float(method.forward_loss(model, batch).loss.detach())
    for steps, start in ((1, False), (3, True)):
        adv = method.adversarial_query(lambda b: method.forward_loss(model, b), batch, eps=0.05, steps=steps,
                                       alpha=None, random_start=start)
        assert (adv.query - batch.query).abs().max() <= 0.05 + 1e-6
        assert torch.equal(adv.support, batch.support)
        assert float(method.forward_loss(model, adv).loss.detach()) > clean


def test_errors(glyphs, tmp_path):
    train, val = glyphs
    with pytest.raises(TypeError, match="unknown option"):
        fit("conv4", "protonet", train, episodes=1, wyas=5)
    with pytest.raises(ValueError, match="episodes"):
        fit("conv4", "protonet", train)
    with pytest.raises(ValueError, match="method"):
        fit("conv4", "prototypical", train, episodes=1)
    with pytest.raises(ValueError, match="run_dir"):
        fit("conv4", "protonet", train, episodes=1, resume=True)
    fit("conv4", "protonet", train, run_dir=str(tmp_path), episodes=1, **COMMON)
    with pytest.raises(ValueError, match="already holds a run"):
        fit("conv4", "protonet", train, run_dir=str(tmp_path), episodes=1, **COMMON)
    with pytest.raises(ValueError, match="lr"):
        fit("conv4", "protonet", train, run_dir=str(tmp_path), resume=True, episodes=2, lr=0.5,
            **COMMON)
