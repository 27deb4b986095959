"""Frame sources on real encoded files, image folders and a real MJPEG stream on 127.0.0.1: order, timestamps,
latest-frame dropping, reconnection, clean ends, clear errors and no hangs; and EdgeClassifier.stream on them."""
import io
import logging
import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from metaedge.runtime.video import Frame, VideoSourceError, VideoWriter, draw_predictions, open_source, to_bgr  # noqa: E402
from tests.runtime.doubles import FINGERPRINT, ProjectionBackend, make_spec  # noqa: E402
from tests.runtime.scenes import MjpegServer, objects, scene, write_video  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """20 lossless frames: frame i shows gray level 10 i in its top-left pixel (to check order and content)."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(20):
        f = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        f[0, 0] = 10 * i
        frames.append(f)
    path = write_video(tmp_path_factory.mktemp("video") / "clip.mkv", frames, fps=25)
    return path, frames


def test_a_file_gives_every_frame_in_order_with_timestamps_then_ends(video):
    path, frames = video
    with open_source(path) as src:
        got = list(src)
        assert src.read() is None  # still the end
        assert src.frame_count == 20 and src.fps == pytest.approx(25)
    assert len(got) == 20 and src.closed
    for i, (frame, want) in enumerate(zip(got, frames)):
        assert isinstance(frame, Frame) and frame.pixel_format == "bgr" and frame.index == i
        np.testing.assert_array_equal(frame.pixels, want[..., ::-1])  # lossless, BGR
        assert frame.size == (64, 48)
    stamps = [f.timestamp for f in got]
    assert stamps == sorted(stamps) and stamps[-1] == pytest.approx(19 / 25, abs=0.05)
    assert src.stats.read == src.stats.delivered == 20 and src.stats.dropped == 0


def test_latest_frame_mode_drops_stale_frames_instead_of_lagging(video):
    path, _ = video
    with open_source(path, latest=True) as src:
        seen = []
        for frame in src:
            seen.append(frame.index)
            time.sleep(0.05)  # a slow classifier: the reader keeps going, only the newest frame waits
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert src.stats.dropped > 0 and len(seen) + src.stats.dropped == src.stats.read == 20


def test_loop_restarts_a_file(video):
    path, _ = video
    with open_source(path, loop=True) as src:
        indices = [src.read().index for _ in range(45)]
    assert indices == list(range(45))


def test_image_folder_and_glob_in_name_order_upright(tmp_path):
    from PIL import Image
    upright = np.zeros((30, 20, 3), np.uint8)
    upright[:5] = 255  # a white band at the top
    for i in range(3):
        Image.fromarray(upright).save(tmp_path / f"shot{i}.png")
    # A phone photo stored sideways with EXIF orientation 6 ("rotate 90 CW to view"): the source turns it upright.
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(tmp_path / "shot3.jpg", exif=exif, quality=100)
    (tmp_path / "notes.txt").write_text("not an image")
    with open_source(tmp_path) as src:
        frames = list(src)
    assert [f.index for f in frames] == [0, 1, 2, 3] and frames[0].pixel_format == "auto"
    assert all(f.pixels.shape == (30, 20, 3) for f in frames)
    assert frames[3].pixels[:5].mean() > 200 and frames[3].pixels[10:].mean() < 40  # turned upright
    with open_source(str(tmp_path / "shot*.png")) as src:
        assert len(list(src)) == 3


@pytest.mark.parametrize("uri,words", [
    ("/nonexistent/clip.mp4", "no such file"),
    ("NOTES", "cannot decode"),
    ("rtsp://127.0.0.1:9/stream", "cannot connect"),
    ("http://127.0.0.1:9/stream.mjpg", "cannot connect"),
    ("csi://0", "GStreamer"),
    ("gst:videotestsrc ! fakesink", "appsink"),
    ("EMPTYDIR", "no images"),
])
def test_unreachable_or_unreadable_sources_fail_at_once_with_the_reason(tmp_path, uri, words):
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "empty").mkdir()
    uri = {"NOTES": str(tmp_path / "notes.mp4"), "EMPTYDIR": str(tmp_path / "empty")}.get(uri, uri)
    start = time.monotonic()
    with pytest.raises(VideoSourceError, match=words):
        open_source(uri)
    assert time.monotonic() - start < 15


def test_a_lost_stream_reconnects_with_a_log_line_and_a_dead_one_ends_with_an_error(caplog):
    server = MjpegServer()
    caplog.set_level(logging.WARNING, logger="metaedge.video")
    try:
        with open_source(server.url, reconnect=15) as src:
            assert src.live and src.latest
            first = [src.read(timeout=10) for _ in range(5)]
            assert all(f.pixels.shape == (48, 64, 3) for f in first)
            server.drop()  # every connection cut: the camera "rebooted"
            deadline = time.monotonic() + 15
            while src.stats.reconnects == 0 and time.monotonic() < deadline:
                src.read(timeout=10)
            assert src.stats.reconnects >= 1
            assert src.read(timeout=10).index > first[-1].index  # frames flow again
        assert any("reconnect" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()
    with open_source(MjpegServer().url, reconnect=1.0) as src:  # a server that then goes away for good
        pass
    server2 = MjpegServer()
    src = open_source(server2.url, reconnect=1.0)
    try:
        src.read(timeout=10)
        server2.stop()
        start = time.monotonic()
        with pytest.raises(VideoSourceError, match="not back after"):
            while time.monotonic() - start < 30:
                src.read(timeout=10)
        assert time.monotonic() - start < 30
    finally:
        src.close()


def test_overlay_and_writer_make_a_playable_video(tmp_path, video):
    from metaedge.runtime.classifier import Prediction
    path, frames = video
    out = tmp_path / "out.mp4"
    with open_source(path) as src, VideoWriter(out, fps=25) as writer:
        for frame in src:
            image = to_bgr(frame)
            known = Prediction("cat", 0.91, (("cat", 0.91),), False)
            unknown = Prediction("dog", 0.12, (("dog", 0.12),), True)
            draw_predictions(image, [known, unknown], rois=[(2, 2, 20, 20), (30, 10, 20, 20)], fps=24.0)
            writer.write(image)
    assert writer.frames == 20
    with open_source(out) as back:
        got = list(back)
    assert len(got) == 20 and got[0].pixels.shape == (48, 64, 3)
    with pytest.raises(ValueError, match=r"\.mp4, \.avi or \.mkv"):
        VideoWriter(tmp_path / "out.gif")


# ---------------------------------------------------------------------------------------- the frame loop
def _classifier(objs, **kwargs):
    from metaedge.runtime.classifier import EdgeClassifier
    clf = EdgeClassifier(ProjectionBackend((3, 32, 32), 48), spec=make_spec(size=(32, 32), color="rgb", dim=48),
                         fingerprint=FINGERPRINT, **kwargs)
    for label, shots in objs.items():
        clf.enroll(label, shots[:3])
    return clf


def test_stream_classifies_regions_of_a_video_every_n_frames_with_smoothing(tmp_path):
    objs = objects(num_shapes=2, shots=6)
    labels = sorted(objs)
    box = (100, 60, 96, 96)
    # Frame i shows class i % 4 in the box over a different background; the classes are enrolled from the box of
    # their first frame, so every frame's box holds exactly an enrolled view.
    frames = [scene(objs[labels[i % len(labels)]][0], box, seed=i) for i in range(12)]
    path = write_video(tmp_path / "scenes.mkv", frames, fps=10)
    clf = _classifier({})
    for i, label in enumerate(labels):
        clf.enroll(label, frames[i], roi=box)
    results = list(clf.stream(path, roi=box))
    assert [r.prediction.label for r in results] == [labels[i % len(labels)] for i in range(12)]
    assert all(r.classified for r in results) and results[-1].fps > 0 and results[0].latency > 0
    every = list(clf.stream(path, roi=box, every=3))
    assert [r.classified for r in every] == [i % 3 == 0 for i in range(12)]
    assert every[1].predictions == every[0].predictions  # carried over
    steady = list(clf.stream(path, roi=box, smooth=4, k=2))
    assert len(steady[5].prediction.topk) == 2
    assert len(list(clf.stream(path, roi=box, max_frames=5))) == 5
    with pytest.raises(ValueError, match="every"):
        clf.stream(path, every="soon")
    with pytest.raises(VideoSourceError, match="no such file"):  # raised at the call, not at the first frame
        clf.stream(tmp_path / "missing.mp4")


def test_enrolling_from_a_rotated_phone_photo_equals_the_upright_image(tmp_path):
    from PIL import Image
    objs = objects(num_shapes=1, shots=2)
    clf = _classifier(objs)
    img = next(iter(objs.values()))[0]
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated 90 CCW... to be turned back on reading
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(img, k=-1))).save(buf, format="PNG", exif=exif)
    from_file = clf.embed(buf.getvalue())
    np.testing.assert_allclose(from_file, clf.embed(img), atol=1e-6)
