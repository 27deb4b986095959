"""Objects enrolled from crops, recognised in camera frames: coloured glyph objects pasted into 240x320 scenes
at known boxes, written to a lossless video file, read back (BGR, as OpenCV delivers) and shown to the
classifier as RGB, BGR, NV12 and YUYV frames - with the box as ``roi``, and whole.

The network is the test double (a fixed random projection of the pre-processed pixels: not a model), which is
enough here: what is under test is that the right pixels reach it."""
import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from metaedge.runtime.classifier import EdgeClassifier  # noqa: E402
from metaedge.runtime.video import open_source  # noqa: E402
from tests.reference.preprocess import encode  # noqa: E402
from tests.runtime.doubles import FINGERPRINT, ProjectionBackend, make_spec  # noqa: E402
from tests.runtime.scenes import objects, scene, write_video  # noqa: E402

BOXES = [(20, 30, 96, 96), (150, 40, 128, 128), (60, 100, 112, 112), (180, 110, 100, 100), (8, 8, 120, 120),
         (200, 20, 96, 96)]


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    objs = objects(num_shapes=3, shots=6, seed=3)
    labels = sorted(objs)
    truth, boxes, frames = [], [], []
    for i, label in enumerate(labels):
        for shot in range(3, 6):
            box = BOXES[(i + shot) % len(BOXES)]
            frames.append(scene(objs[label][shot], box, seed=10 * i + shot))
            truth.append(label)
            boxes.append(box)
    path = write_video(tmp_path_factory.mktemp("scenes") / "scenes.mkv", frames, fps=10)
    with open_source(path) as src:
        bgr = [f.pixels for f in src]
    assert len(bgr) == len(frames)
    return objs, labels, truth, boxes, bgr


def classifier(objs, **kwargs):
    clf = EdgeClassifier(ProjectionBackend((3, 32, 32), 64, seed=1), spec=make_spec(size=(32, 32), color="rgb", dim=64),
                         fingerprint=FINGERPRINT, **kwargs)
    for label, shots in objs.items():
        # enrolled from crops: the object images themselves, RGB (whatever the classifier's default format)
        clf.enroll(label, shots[:3], pixel_format="rgb")
    return clf


def accuracy(preds, truth):
    return float(np.mean([p.label == t for p, t in zip(preds, truth)]))


def test_roi_accuracy_equals_the_crops_accuracy_in_every_pixel_format(material):
    objs, labels, truth, boxes, bgr = material
    clf = classifier(objs)
    rgb = [np.ascontiguousarray(f[..., ::-1]) for f in bgr]
    crops = [f[y:y + h, x:x + w] for f, (x, y, w, h) in zip(rgb, boxes)]  # hand-made crops of the frames
    crop_acc = accuracy([clf.predict(c) for c in crops], truth)
    assert crop_acc >= 0.8, crop_acc  # the double separates these objects: a meaningful baseline
    results = {}
    for fmt in ("rgb", "bgr", "nv12", "yuyv"):
        frames = bgr if fmt == "bgr" else [encode(f, fmt) for f in rgb]
        preds = [clf.predict(f, roi=b, pixel_format=fmt) for f, b in zip(frames, boxes)]
        results[fmt] = accuracy(preds, truth)
    print("crop accuracy", crop_acc, "roi accuracy by pixel format", results)
    assert results["rgb"] == results["bgr"] == crop_acc  # the same pixels: the same embeddings
    for fmt in ("nv12", "yuyv"):  # chroma subsampling and 8-bit YUV change pixels slightly, not the answer
        assert results[fmt] >= crop_acc - 1 / len(truth), (fmt, results[fmt])
    # ... and the embeddings of the exact-format crops are the crops' own.
    np.testing.assert_allclose(clf.embed(bgr[0], roi=boxes[0], pixel_format="bgr"), clf.embed(crops[0]), atol=1e-5)


def test_bgr_frames_taken_for_rgb_confuse_red_and_blue_objects(material):
    objs, labels, truth, boxes, bgr = material
    clf = classifier(objs)
    right = accuracy([clf.predict(f, roi=b, pixel_format="bgr") for f, b in zip(bgr, boxes)], truth)
    wrong = [clf.predict(f, roi=b, pixel_format="rgb") for f, b in zip(bgr, boxes)]  # the old silent default
    assert accuracy(wrong, truth) <= right - 0.25
    swapped = {"r": "b", "b": "r"}
    red_blue = [(p.label, t) for p, t in zip(wrong, truth) if t.endswith(("-r", "-b"))]
    assert sum(p == t[:-1] + swapped[t[-1]] for p, t in red_blue) >= len(red_blue) // 2  # the twin, mostly
    # A classifier-wide default serves OpenCV apps that never name the format.
    opencv_app = classifier(objs, pixel_format="bgr")
    assert accuracy([opencv_app.predict(f, roi=b) for f, b in zip(bgr, boxes)], truth) == right


def test_one_native_call_scores_every_box_of_a_frame(material):
    objs, labels, truth, boxes, bgr = material
    clf = classifier(objs, pixel_format="bgr")
    # one frame, the boxes of three objects pasted side by side
    canvas = np.full((240, 320, 3), 128, np.uint8)
    picks = [0, 5, 10]
    tiles = [(0, 0, 96, 96), (100, 0, 96, 96), (200, 100, 96, 96)]
    for i, (x, y, w, h) in zip(picks, tiles):
        bx, by, bw, bh = boxes[i]
        canvas[y:y + h, x:x + w] = cv2.resize(bgr[i][by:by + bh, bx:bx + bw], (w, h), interpolation=cv2.INTER_AREA)
    preds = clf.predict(canvas, roi=tiles, k=2)
    assert isinstance(preds, list) and len(preds) == 3 and all(len(p.topk) == 2 for p in preds)
    singles = [clf.predict(canvas, roi=t, k=2) for t in tiles]
    assert [p.label for p in preds] == [p.label for p in singles]
    with pytest.raises(ValueError, match=r"`rois`: box 0.*not inside"):
        clf.predict(canvas, roi=(300, 0, 96, 96))
    with pytest.raises(TypeError, match="one frame"):
        clf.predict([canvas, canvas], roi=tiles[0])


def test_whole_frame_accuracy_by_resize_policy(material):
    """Without a box the object is a fraction of the frame; the resize policy decides whether it is stretched
    (squeeze), kept whole with bars (letterbox) or cropped to the centre (center_crop). Measured and reported;
    the roi accuracy is the reference."""
    objs, labels, truth, boxes, bgr = material
    report = {}
    for mode in ("squeeze", "letterbox", "center_crop"):
        clf = classifier(objs, pixel_format="bgr", resize_mode=mode)
        report[mode] = accuracy([clf.predict(f) for f in bgr], truth)
    clf = classifier(objs, pixel_format="bgr")
    report["roi"] = accuracy([clf.predict(f, roi=b) for f, b in zip(bgr, boxes)], truth)
    print("whole-frame accuracy by resize policy:", report)
    assert report["roi"] >= max(report[m] for m in ("squeeze", "letterbox", "center_crop"))
