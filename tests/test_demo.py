"""`metaedge demo --quick` end to end: the main job's smoke run (train -> export -> enroll -> predict -> adapt)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_quick_runs_and_reports_sane_accuracy(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "metaedge", "demo", "--quick", "--no-progress", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    chance = 1.0 / summary["accuracy"][0]["ways"]
    for result in summary["accuracy"]:
        assert result["accuracy"] > 3 * chance, result          # well above chance on never-seen classes
        assert 0 <= result["ci95"] < 0.5
        assert len(result["per_episode"]) == result["episodes"]
    assert summary["accuracy"][-1]["shots"] > summary["accuracy"][0]["shots"]
    assert "adapted" in summary["accuracy"][-1]
    latency = summary["latency_ms"]
    assert latency["total"] >= latency["backbone"] > 0
    for name in ("training_curve.png", "accuracy_vs_shots.png", "predictions.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert (out / "bundle" / "manifest.json").exists() and (out / "gallery.metaedge").exists()
    assert "never-seen classes" in proc.stdout and "latency per frame" in proc.stdout


def test_demo_help_explains_the_steps():
    proc = subprocess.run([sys.executable, "-m", "metaedge", "demo", "--help"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--omniglot" in proc.stdout
