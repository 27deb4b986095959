"""One gallery, many processes: 4 workers x 50 random enroll / forget / rename / adapt / predict operations, mixing
the Python API and the metaedge CLI, with a reader predicting throughout (tools/stress_gallery.py mixed). The
tool checks that the final gallery is its audit trail replayed, that every acknowledged change is in the trail
under its actor and no failed one is, and that every prediction started after a change was acknowledged saw it."""
import importlib.util
import os

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "stress_gallery.py")


def test_four_processes_mixing_api_and_cli_lose_nothing_and_readers_see_every_change(tmp_path):
    spec = importlib.util.spec_from_file_location("stress_gallery", TOOL)
    stress = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stress)
    summary = stress.mixed(str(tmp_path), workers=4, ops=50, cli_share=0.2, seconds=240)
    ops = summary["operations"]
    assert ops["api"] + ops["cli"] == 200 and ops["cli"] >= 20  # all 200 ran, through both routes
    assert summary["acknowledged_changes"] >= 100 and summary["reader_predictions"] >= 50
