"""Distillation in a training run (`metaedge train --distill-from`): the student moves towards the teacher, the
projection is trained, checkpointed and resumed with the run but never exported, bad teachers and runs are refused
naming the option."""
import json

import pytest

torch = pytest.importorskip("torch")

from metaedge.train import build_backbone, fit, load_checkpoint, save_checkpoint  # noqa: E402
from metaedge.train.distill import DistillError, Distiller  # noqa: E402

from tests.cli_helpers import SYNTHETIC, run  # noqa: E402


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, glyphs):
    """A wider conv4 with a different embedding size (a linear projection to 48), briefly meta-trained."""
    train, _ = glyphs
    model = fit("conv4", data=train, episodes=15, ways=5, queries=5, seed=7, progress=False, tensorboard=False,
                backbone_options={"hidden": 32, "embedding_dim": 48})
    path = tmp_path_factory.mktemp("teacher") / "ckpt"
    save_checkpoint(model, str(path), training={"method": "protonet"})
    return path


def _distance(student, teacher_model, data, logits_from) -> float:
    """Mean T^2 KL between the teacher's and the student's nearest-prototype logits over fixed episodes of
    ``data`` (no projection involved: both classify the same queries by their own prototypes)."""
    from metaedge.train.data.samplers import TaskSampler
    probe = Distiller(teacher_model, student.spec.embedding_dim)
    sampler = TaskSampler(data, 5, 1, 5, seed=123)
    total = 0.0
    student.eval()
    with torch.no_grad():
        for i in range(20):
            ep = sampler.sample(i)
            idx = torch.cat([ep.support, ep.query])
            s = student(data.batch(idx))
            t = probe.teacher_embeddings(data, idx)
            student_logits = logits_from(s[:len(ep.support)], ep.support_labels, s[len(ep.support):])
            total += float(probe.logit_loss(student_logits, probe.teacher_logits(t, len(ep.support),
                                                                                 ep.support_labels, 5)))
    return total / 20


def test_distillation_moves_the_student_towards_the_teacher(teacher, glyphs):
    from metaedge.train.methods import ProtoNet
    train, val = glyphs
    teacher_model = load_checkpoint(str(teacher))
    common = dict(data=train, episodes=100, ways=5, queries=5, seed=1, progress=False, tensorboard=False,
                  backbone_options={"hidden": 16})
    distilled = fit("conv4", distill_from=str(teacher), **common)
    alone = fit("conv4", **common)
    proto = ProtoNet()

    def logits(support, labels, query):
        return proto.logits(support, labels, query, 5)
    # the distance to the teacher on classes neither trained on, and on the training classes
    # (the distance compares standardised logits - the ranking of the classes -, as the logit term does;
    # measured after 100 episodes: 0.16 vs 0.26 on the training classes, 0.28-0.32 vs 0.35-0.36 on the others)
    for data, factor in ((train, 0.75), (val, 1.0)):
        near, far = _distance(distilled, teacher_model, data, logits), _distance(alone, teacher_model, data, logits)
        assert near < factor * far
    assert distilled.train_info["distill_from"] == str(teacher)
    assert distilled.spec.embedding_dim == alone.spec.embedding_dim == 16   # the student keeps its own size
    assert not any("project" in name for name in distilled.state_dict())


def test_the_embedding_term_falls_during_the_run(teacher, glyphs, tmp_path):
    train, _ = glyphs
    fit("conv4", data=train, episodes=40, ways=5, queries=5, seed=2, progress=False, tensorboard=False,
        backbone_options={"hidden": 16}, distill_from=str(teacher), distill_logit_weight=0.0, log_every=1,
        run_dir=str(tmp_path / "run"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    terms = [r["distill_embedding"] for r in rows if "distill_embedding" in r]
    assert len(terms) >= 30 and "distill_logits" not in rows[-1]
    assert sum(terms[-5:]) / 5 < 0.85 * sum(terms[:5]) / 5   # measured: 0.94 -> 0.71 (centred cosine)


@pytest.mark.parametrize("method", ["baseline", "reptile"])
def test_methods_without_episode_logits_get_the_embedding_term(teacher, glyphs, method):
    train, _ = glyphs
    seen = []
    fit("conv4", method=method, data=train, episodes=2, ways=5, queries=2, batch_size=16, seed=0, progress=False,
        tensorboard=False, backbone_options={"hidden": 16}, distill_from=str(teacher), callback=seen.append,
        method_options={"inner_steps": 1} if method == "reptile" else {})
    assert len(seen) == 2
    for info in seen:   # the embedding term, from the method's own pass (baseline) or a pass of its own (reptile)
        assert info["extra"]["distill_embedding"] > 0 and "distill_logits" not in info["extra"]


def test_train_distill_from_cli_round_trip_and_resume(teacher, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    run_dir = tmp_path / "run"
    base = ["train", *SYNTHETIC, "--ways", "5", "--queries", "5", "--val-every", "3", "--val-episodes", "4",
            "--val-queries", "5", "--backbone-option", "hidden=16", "--threads", "1", "--log-every", "1", "--no-progress",
            "--no-tensorboard"]
    code, printed, err = run([*base, "--episodes", "3", "--run-dir", str(run_dir), "--distill-from", str(teacher),
                              "--distill-temperature", "2", "--json"])
    assert code == 0, err
    last = load_checkpoint(str(run_dir / "last"))
    training = last.checkpoint_meta["training"]
    assert training["distill_from"] == str(teacher) and training["distill_temperature"] == 2.0
    assert training["distilled_from"]["embedding_dim"] == 48
    # resumed: the projection W comes back from the resumable state and training goes on with it
    code, printed, err = run(["train", "--resume", str(run_dir), "--episodes", "6", "--no-progress",
                              "--no-tensorboard", "--json"])
    assert code == 0, err
    assert json.loads(printed)["episodes"] == 6
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows if "distill" in r][-1] == 6
    # changing the teacher of a resumed run is refused
    code, _, err = run(["train", "--resume", str(run_dir), "--episodes", "8", "--distill-weight", "2",
                        "--no-progress"])
    assert code == 2 and "--distill-weight" in err
    # the exported student is the conv4 alone: its embedding size, not the teacher's
    code, printed, err = run(["export", str(run_dir / "best"), "-o", str(tmp_path / "bundle"), "--json"])
    assert code == 0, err
    graph = onnx.load(str(tmp_path / "bundle" / "model.onnx")).graph
    assert graph.output[0].type.tensor_type.shape.dim[-1].dim_value == 16
    assert json.loads(printed[printed.index("{"):])["spec"]["embedding_dim"] == 16


def test_refusals_name_the_option(teacher, glyphs, tmp_path):
    train, _ = glyphs
    code, _, err = run(["train", *SYNTHETIC, "--episodes", "1", "--distill-from", str(tmp_path / "nope"),
                        "--run-dir", str(tmp_path / "r"), "--no-progress", "--no-tensorboard"])
    assert code == 2 and "--distill-from" in err and "nope" in err, err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text("{not json")
    code, _, err = run(["train", *SYNTHETIC, "--episodes", "1", "--distill-from", str(bad), "--run-dir",
                        str(tmp_path / "r2"), "--no-progress", "--no-tensorboard"])
    assert code == 2 and "--distill-from" in err, err
    code, _, err = run(["train", *SYNTHETIC, "--episodes", "1", "--distill-from", str(teacher), "--distill-weight",
                        "0", "--distill-logit-weight", "0", "--run-dir", str(tmp_path / "r3"), "--no-progress"])
    assert code == 2 and "--distill-weight" in err, err
    from metaedge.cli.main import build_parser
    pretrain_help = build_parser()._subparsers._group_actions[0].choices["pretrain"].format_help()
    assert "--distill-from" not in pretrain_help
    from metaedge.train.data.unlabelled import UnlabelledImages
    from metaedge.train.pretrain import pretrain
    with pytest.raises(DistillError, match="--distill-from.*pretrain"):
        pretrain(UnlabelledImages.from_dataset(train), "simclr", "conv4", episodes=1, batch_size=8, progress=False,
                 tensorboard=False, distill_from=str(teacher))


def test_the_terms_see_differences_between_images_not_offsets_or_scales(teacher):
    """The embedding term compares batch-centred embeddings: a shared offset (every ReLU network has a big one)
    neither hides a mismatch nor fakes a match. The logit term compares standardised logits: a teacher whose
    squared distances are 100x the student's does not turn into a one-hot target."""
    teacher_model = load_checkpoint(str(teacher))
    d = Distiller(teacher_model, 48)
    with torch.no_grad():
        d.project.weight.copy_(torch.eye(48))
        d.project.bias.zero_()
    g = torch.Generator().manual_seed(0)
    t = torch.randn(32, 48, generator=g)
    unrelated = torch.randn(32, 48, generator=g)
    offset = 50 * torch.ones(48)
    # float64 reference: 1 - cos of the centred rows, by hand
    def reference(s, t):
        s, t = s.double() - s.double().mean(0), t.double() - t.double().mean(0)
        return float((1 - (s * t).sum(1) / (s.norm(dim=1) * t.norm(dim=1))).mean())
    for s in (t + offset, unrelated + offset, 3 * t):
        assert d.embedding_loss(s, t + offset).item() == pytest.approx(reference(s, t + offset), abs=1e-5)
    assert d.embedding_loss(t + offset, t).item() < 1e-5             # an offset alone is no mismatch
    assert d.embedding_loss(unrelated + offset, t + offset).item() > 0.8   # a shared offset is no match
    # logits: scale and shift of either side change nothing; the ranking does
    student = torch.randn(10, 5, generator=g)
    same = float(d.logit_loss(student, 100 * student - 7))
    assert same < 1e-6
    assert float(d.logit_loss(student, -student)) > 0.5
    standard = Distiller.standardized(torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]], dtype=torch.float64))
    z = (torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) - 2) / (2 / 3) ** 0.5
    assert torch.allclose(standard[0].double(), z, atol=1e-5) and torch.all(standard[1] == 0)
