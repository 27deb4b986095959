import json
import os
import subprocess
import sys

import numpy as np
import pytest

from metaedge.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--synthetic-classes", "40", "--synthetic-samples", "10", "--threads", "1"]


def test_help_explains_every_option(capsys):
    import argparse

    from metaedge.cli.main import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, minimum in (("train", 40), ("eval", 15)):
        actions = [a for a in sub.choices[name]._actions if a.option_strings and a.dest != "help"]
        assert len(actions) >= minimum
        undocumented = [a.option_strings[0] for a in actions if not (a.help or "").strip()]
        assert not undocumented, f"{name}: options without help: {undocumented}"
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0 and "--episodes" in capsys.readouterr().out
    main_help = subprocess.run([sys.executable, "-m", "metaedge", "--help"], capture_output=True, text=True,
                               cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert " train " in main_help.stdout and " eval " in main_help.stdout


def test_train_resume_and_eval_json(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    code = main(["train", *TINY, "--episodes", "6", "--ways", "4", "--queries", "3", "--val-every", "3",
                 "--val-episodes", "10", "--backbone-option", "hidden=8", "--run-dir", run_dir, "--json",
                 "--no-tensorboard"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 6 and result["checkpoint"].endswith("best")
    assert result["spec"]["backbone"] == "conv4" and result["best_val_accuracy"] is not None
    code = main(["train", "--resume", run_dir, "--episodes", "8", "--json", "--threads", "1"])
    assert code == 0 and json.loads(capsys.readouterr().out)["episodes"] == 8
    assert main(["train", "--resume", run_dir, "--lr", "0.5", "--episodes", "9"]) == 2
    assert "cannot change" in capsys.readouterr().err
    assert main(["train", "--resume", run_dir, "--data-seed", "5", "--episodes", "9"]) == 2
    assert "--data-seed: 0 -> 5" in capsys.readouterr().err
    code = main(["eval", run_dir, *TINY, "--ways", "5", "3", "--shots", "1", "--queries", "4", "--episodes", "12",
                 "--json", "--per-episode"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["ways"], r["shots"]) for r in doc["reports"]] == [(5, 1), (3, 1)]
    assert len(doc["reports"][0]["accuracies"]) == 12 and doc["checkpoint"].endswith("best")
    code = main(["eval", os.path.join(run_dir, "last"), *TINY, "--shots", "2", "--queries", "3", "--episodes", "4",
                 "--method", "adapt_head", "--adapt-steps", "5", "--no-progress"])
    assert code == 0 and "5-way 2-shot (adapt_head, cosine)" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["train", *TINY]) == 2
    assert "--episodes" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--episodes", "1"]) == 2
    assert "not 'synthetic'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "no model.json" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--episodes", "1"]) == 2
    with pytest.raises(SystemExit):
        main(["train", "--time-budget", "soon"])


@pytest.mark.parametrize("command, flags, named", [
    ("train", ["--ways", "1"], "--ways >= 2"),
    ("train", ["--lr", "-1"], "--lr: expected > 0"),
    ("train", ["--label-smoothing", "2"], "--label-smoothing: expected in [0, 1)"),
    ("train", ["--unlabelled-ratio", "1.5"], "--unlabelled-ratio: expected in [0, 1]"),
    ("pretrain", ["--batch-size", "1"], "--batch-size: expected >= 2"),
])
def test_option_errors_name_the_flag_before_any_data_is_loaded(tmp_path, capsys, command, flags, named):
    # --data names a folder that does not exist: the option check must come first (no data loaded, no run dir)
    code = main([command, "--data", f"folder:{tmp_path / 'nowhere'}" if command == "pretrain" else
                 str(tmp_path / "nowhere"), *flags, "--episodes", "1", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and named in err, err
    assert not (tmp_path / "run").exists()


def test_errors_from_the_data_and_the_session_name_flags_not_python_names(tmp_path, capsys):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(6):
        (tmp_path / "lab" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "lab" / f"c{c}" / f"{i}.png")
    run_dir = str(tmp_path / "run")
    assert main(["train", "--data", str(tmp_path / "lab"), "--episodes", "1", "--ways", "3", "--run-dir", run_dir,
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "(--replacement)" in err and "replacement=True" not in err
    assert main(["train", "--data", str(tmp_path / "lab"), "--episodes", "1", "--ways", "3", "--shots", "1",
                 "--queries", "2", "--run-dir", run_dir, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "fewer than --val-ways 3" in err and "val_ways" not in err and "the validation data" in err
