"""Pictures of training and evaluation: the training-curve PNG a run leaves in its run directory, `metaedge eval
--plot` (accuracy vs shots with CI bars, most-confused pairs), and the confusion counts behind it."""
import json
import struct
import sys

import pytest
import torch

from metaedge.cli.main import main
from metaedge.train.backbones import build_backbone
from metaedge.train.data import TaskSampler
from metaedge.train.evaluate import embed_dataset, evaluate

TINY = ["--synthetic-classes", "40", "--synthetic-samples", "10", "--threads", "1"]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_confusion_counts_every_wrong_answer_by_class_name(glyphs):
    _, val = glyphs
    torch.manual_seed(0)
    model = build_backbone("conv4", hidden=8).eval()
    ways, queries, episodes = 5, 3, 30
    report = evaluate(model, val, ways=ways, shots=1, queries=queries, episodes=episodes, seed=2, confusion=True)
    # the same episodes by hand: nearest prototype, wrong answers tallied per (true, predicted) dataset class
    emb = torch.from_numpy(embed_dataset(model, val)).double()
    sampler = TaskSampler(val, ways, 1, queries, seed=2)
    expected: dict[tuple[str, str], int] = {}
    asked: dict[str, int] = {}
    for i in range(episodes):
        ep = sampler.sample(i)
        protos = torch.stack([emb[ep.support[ep.support_labels == c]].mean(0) for c in range(ways)])
        pred = torch.cdist(emb[ep.query], protos).argmin(1)
        for t, p in zip(ep.query_labels.tolist(), pred.tolist()):
            true, guess = val.class_names[ep.classes[t]], val.class_names[ep.classes[p]]
            asked[true] = asked.get(true, 0) + 1
            if t != p:
                expected[(true, guess)] = expected.get((true, guess), 0) + 1
    wrong = round((1 - report.mean) * episodes * ways * queries)
    assert wrong > 0 and sum(expected.values()) == wrong
    got = {(c["true"], c["predicted"]): c["errors"] for c in report.confused}
    assert got == dict(sorted(expected.items(), key=lambda kv: -kv[1])[:50]) or len(expected) > 50
    assert all(c["queries"] == asked[c["true"]] and c["errors"] <= c["queries"] for c in report.confused)
    assert [c["errors"] for c in report.confused] == sorted((c["errors"] for c in report.confused), reverse=True)
    assert evaluate(model, val, ways=ways, shots=1, queries=queries, episodes=3, seed=2).confused == []


def test_train_leaves_a_training_curve_and_eval_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "run"
    code = main(["train", *TINY, "--episodes", "8", "--ways", "4", "--queries", "3", "--val-every", "4",
                 "--val-episodes", "10", "--log-every", "2", "--backbone-option", "hidden=8", "--run-dir",
                 str(run_dir), "--no-progress", "--no-tensorboard"])
    assert code == 0, capsys.readouterr().err
    curve = run_dir / "training_curve.png"
    assert png_size(curve) == (770, 440) and 15_000 < curve.stat().st_size < 1_000_000
    capsys.readouterr()
    plot = tmp_path / "eval.png"
    code = main(["eval", str(run_dir), *TINY, "--ways", "5", "3", "--shots", "1", "2", "--queries", "3",
                 "--episodes", "10", "--no-progress", "--json", "--plot", str(plot)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["reports"]) == 4 and any(r["confused"] for r in doc["reports"])
    assert png_size(plot) == (1320, 506) and 30_000 < plot.stat().st_size < 2_000_000


def test_eval_plot_refused_before_evaluating(tmp_path, capsys, monkeypatch):
    code = main(["eval", str(tmp_path / "nowhere"), "--plot", str(tmp_path / "missing" / "e.png")])
    assert code == 2 and "--plot" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code = main(["eval", str(tmp_path / "nowhere"), "--plot", str(tmp_path / "e.png")])
    assert code == 3 and "pip install 'metaedge[plot]'" in capsys.readouterr().err


def test_training_without_matplotlib_still_finishes(tmp_path, monkeypatch):
    from metaedge.train import fit
    from metaedge.train.data import SyntheticGlyphs
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.warns(UserWarning, match="training_curve.png skipped.*matplotlib"):
        fit(data=SyntheticGlyphs("train", num_classes=10, samples_per_class=6, seed=1), ways=3, shots=1, queries=2,
            episodes=2, run_dir=str(tmp_path / "r"), progress=False, tensorboard=False, backbone_options={"hidden": 8})
    assert (tmp_path / "r" / "last" / "model.json").exists() and not (tmp_path / "r" / "training_curve.png").exists()
