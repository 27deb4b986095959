"""`metaedge export` -> `metaedge info --bundle` -> `metaedge build`, as a user runs them."""
import contextlib
import io
import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from metaedge.cli.main import main  # noqa: E402
from metaedge.train import build_backbone, save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "conv4"
    save_checkpoint(build_backbone("conv4", input_size=28, invert=True, metric="cosine"), str(path))
    return path


PRINTED = {}


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "bundle"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(checkpoint), "-o", str(out)]) == 0
    PRINTED["export"] = printed.getvalue()
    return out


def test_export_prints_progress_and_parity(exported, checkpoint, capsys):
    assert "parity fp32 uniform b=1" in PRINTED["export"]
    assert f"bundle written to {exported}" in PRINTED["export"]
    assert main(["export", str(checkpoint), "-o", str(exported)]) == 1  # replacing it needs --force
    assert "pass overwrite=True (CLI: --force)" in capsys.readouterr().err


def test_info_describes_the_bundle(exported, capsys):
    out = exported
    assert main(["info", "--bundle", str(out)]) == 0
    text = capsys.readouterr().out
    for words in ("backends:", "ort-cpu        yes (onnxruntime", "bundle:", "backbone       conv4",
                  "preprocess     resize bilinear to 28x28, gray, inverted", "metric cosine", "engines:",
                  "no TensorRT engine cached yet"):
        assert words in text
    assert main(["info", "--bundle", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bundle"]["backbone"] == "conv4" and set(info["backends"]) >= {"tensorrt", "ort-cpu"}


def test_info_on_a_tampered_bundle_fails_clearly(exported, tmp_path, capsys):
    out = tmp_path / "bundle"
    shutil.copytree(exported, out)
    with open(out / "model.onnx", "ab") as f:
        f.write(b"x")
    capsys.readouterr()
    assert main(["info", "--bundle", str(out)]) == 4  # a bundle problem (README exit codes)
    assert "model.onnx was modified after export" in capsys.readouterr().err


def test_export_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), "-o", str(tmp_path / "b")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "b"), "--num-images", "0"]) == 2


def test_build_without_tensorrt_says_what_to_install(exported, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; tests/gpu covers the real build")
    except ImportError:
        pass
    assert main(["build", str(exported)]) == 3
    assert "needs the package 'tensorrt'" in capsys.readouterr().err
    assert main(["build", str(tmp_path / "nothing")]) == 1
    assert "no such directory" in capsys.readouterr().err
