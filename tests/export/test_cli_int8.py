"""`metaedge train` -> `metaedge export --int8` -> `metaedge info` -> a device run, as a user runs them: the
calibration images and the held-out classes come from the data the checkpoint recorded."""
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")


from tests.cli_helpers import SYNTHETIC, run  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli-int8") / "run"
    code, _, err = run(["train", *SYNTHETIC, "--episodes", "4", "--ways", "5", "--queries", "5", "--val-every", "4", "--val-queries", "5",
                        "--val-episodes", "5", "--run-dir", str(run_dir), "--no-progress", "--no-tensorboard"])
    assert code == 0, err
    return run_dir / "best"


def test_export_int8_round_trip(trained, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    code, printed, err = run(["export", str(trained), "-o", str(out), "--int8", "--calib-images", "64",
                              "--int8-episodes", "50", "--json"])
    assert code == 0, err
    assert "INT8 calibration: 64 images of the training data" in printed
    manifest = json.loads(printed[printed.index("{"):])
    record = manifest["verification"]["int8"]
    assert record["calibration"]["images"] == 64 and record["passed"]
    assert record["heldout"]["source"].startswith("synthetic: the test split")
    assert record["cpu"]["accuracy"]["episodes"] == 50 and record["tensorrt"]["accuracy"]["episodes"] == 50
    code, printed, err = run(["info", "--bundle", str(out)])
    assert code == 0 and "int8 check (cpu)" in printed and "model.int8.onnx" in printed, err
    monkeypatch.setenv("METAEDGE_CPU_INT8", "1")
    images = tmp_path / "cls"
    images.mkdir()
    import numpy as np
    from PIL import Image
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(images / "a.png")
    code, printed, err = run(["enroll", str(out), str(tmp_path / "g.db"), "thing", str(images), "--backend", "ort-cpu",
                              "--json"])
    assert code == 0, err
    code, printed, err = run(["predict", str(out), str(tmp_path / "g.db"), str(images / "a.png"), "--json"])
    assert code == 0, err
    assert "INT8 ONNX model.int8.onnx" in printed  # auto picked the INT8 model on a (declared) VNNI CPU
    code, printed, err = run(["predict", str(out), str(tmp_path / "g.db"), str(images / "a.png"), "--json",
                              "--precision", "fp32"])
    assert code == 0 and "INT8" not in printed and "fp32 ONNX" in printed, err


def test_export_int8_is_refused_with_the_numbers(trained, tmp_path):
    code, _, err = run(["export", str(trained), "-o", str(tmp_path / "b"), "--int8", "--calib-images", "32",
                        "--int8-episodes", "20", "--int8-min-cosine", "0.9999999"])
    assert code == 1
    assert "mean embedding cosine" in err and "< 0.9999999" in err and "--int8-min-cosine" in err
    assert not (tmp_path / "b").exists()
