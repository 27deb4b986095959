"""`metaedge enroll --source` / `metaedge predict --source ... --save out.mp4` with a real exported bundle on ONNX
Runtime, in fresh processes: shots captured from a video file, an image folder and a live MJPEG stream on
127.0.0.1; predictions drawn into a saved video; clear errors and exit codes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

from metaedge.runtime.video import open_source  # noqa: E402
from tests.runtime.scenes import MjpegServer, objects, scene, write_video  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOX = (100, 60, 96, 96)
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An (untrained, seeded) conv4 for 32x32 RGB exported as a bundle, and two classes' scenes: red and blue
    objects of one shape at BOX (each class shows one view; the classifier must tell the colours apart)."""
    from metaedge.export.onnx import export_bundle
    from metaedge.train.backbones import build_backbone
    root = tmp_path_factory.mktemp("camera")
    torch.manual_seed(0)
    model = build_backbone("conv4", color="rgb", input_size=32).eval()
    bundle = export_bundle(model, root / "bundle", overwrite=True).path
    objs = objects(num_shapes=1, shots=2, seed=5)
    red, blue = objs["shape0-r"][0], objs["shape0-b"][0]
    folders = {}
    for name, obj in (("red", red), ("blue", blue)):
        folders[name] = root / name
        folders[name].mkdir()
        for i in range(3):
            cv2.imwrite(str(folders[name] / f"{i}.png"), scene(obj, BOX, seed=i)[..., ::-1])
    sequence = ["red", "blue", "blue", "red", "blue", "red"]
    frames = [scene(red if c == "red" else blue, BOX, seed=10 + i) for i, c in enumerate(sequence)]
    video = write_video(root / "scenes.mkv", frames, fps=5)
    return root, str(bundle), folders, video, sequence


def cli(*argv, timeout=180):
    proc = subprocess.run([sys.executable, "-m", "metaedge", *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def test_enroll_from_sources_then_predict_a_video_and_save_it_drawn(setup, tmp_path):
    root, bundle, folders, video, sequence = setup
    gallery = tmp_path / "classes.metaedge"
    roi = ",".join(map(str, BOX))
    for name in ("red", "blue"):
        code, out, err = cli("enroll", bundle, gallery, name, "--source", folders[name], "--shots", 2, "--every", 1,
                             "--roi", roi)
        assert code == 0, err
        assert f"new class {name!r}: 2 image(s)" in out and "shot 2/2" in err
    out_video = tmp_path / "out.mp4"
    code, out, err = cli("predict", bundle, gallery, "--source", video, "--roi", roi, "--save", out_video, "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    frames, summary = lines[:-1], lines[-1]["summary"]
    assert [f["predictions"][0]["label"] for f in frames] == sequence
    assert summary["frames"] == summary["classified"] == 6 and summary["saved"] == str(out_video)
    with open_source(out_video) as saved:
        drawn = list(saved)
    assert len(drawn) == 6 and drawn[0].pixels.shape == (240, 320, 3)
    x, y, w, h = BOX  # the box outline is drawn (green for a known class) where the object is
    edge = drawn[0].pixels[y + h // 2, x - 1:x + 3].astype(int)
    assert (edge[:, 1] - edge[:, 2]).max() > 60
    # text output, every other frame, smoothing
    code, out, err = cli("predict", bundle, gallery, "--source", video, "--roi", roi, "--every", 2, "--smooth", 2)
    assert code == 0, err
    assert out.count("frame ") == 3 and "6 frame(s), 3 classified" in out


def test_enroll_shots_from_a_live_stream(setup, tmp_path):
    root, bundle, folders, video, sequence = setup
    server = MjpegServer(fps=30)
    try:
        gallery = tmp_path / "live.metaedge"
        code, out, err = cli("enroll", bundle, gallery, "gray card", "--source", server.url, "--shots", 3,
                             "--every", "100ms", "--timeout", 60, "--json")
        assert code == 0, err
        result = json.loads(out)
        assert result["class"]["shots"] == 3 and result["new_class"]
    finally:
        server.stop()


@pytest.mark.parametrize("argv,words", [
    (["--source", "/nonexistent/clip.mp4"], "no such file"),
    (["--source", "rtsp://127.0.0.1:9/live"], "cannot connect"),
    (["IMG", "--source", "VIDEO"], "IMAGES or --source"),
    (["--source", "VIDEO", "--roi", "1,2,3"], "X,Y,W,H"),
    (["--source", "VIDEO", "--roi", "300,200,100,100"], "not inside"),
    (["IMG", "--save", "x.mp4"], "go with --source"),
])
def test_predict_source_errors_exit_2_with_one_line(setup, tmp_path, argv, words):
    root, bundle, folders, video, sequence = setup
    gallery = tmp_path / "g.metaedge"
    assert cli("enroll", bundle, gallery, "red", folders["red"])[0] == 0
    argv = [{"IMG": str(folders["red"] / "0.png"), "VIDEO": video}.get(a, a) for a in argv]
    code, out, err = cli("predict", bundle, gallery, *argv)
    assert code == 2, (out, err)
    assert words in err and "Traceback" not in err


def test_the_camera_app_example_runs_on_a_video_file(setup, tmp_path):
    """examples/camera_app.py as a user runs it: enroll from the first frames of a video, classify the rest."""
    root, bundle, folders, video, sequence = setup
    out = tmp_path / "app.mp4"
    frames = [scene(objects(num_shapes=1, shots=2, seed=5)["shape0-r"][0], BOX, seed=i) for i in range(14)]
    clip = write_video(tmp_path / "clip.mkv", frames, fps=5)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "camera_app.py"), bundle,
                           str(tmp_path / "app.metaedge"), "--source", clip, "--roi", ",".join(map(str, BOX)),
                           "--enroll", "red", "--save", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.split()[1] == "red" for line in lines)  # 10 shots, then 4 frames
    with open_source(out) as saved:
        assert len(list(saved)) == 4
