"""EdgeClassifier with a deterministic test-double backend (tests/runtime/doubles.py): the whole device
pipeline - image loading, the bundle's pre-processing, top-k, gallery, adaptation, open set - without a
trained network."""
import os

import numpy as np
import pytest

from metaedge import kernels
from metaedge.runtime.classifier import EdgeClassifier, EmptyGalleryError, Prediction
from metaedge.runtime.gallery import Gallery, GalleryMismatchError, UnknownLabelError
from metaedge.runtime.images import ImageError
from tests.runtime.doubles import FINGERPRINT, Glyphs, ProjectionBackend, make_classifier, make_spec

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture
def glyphs():
    return Glyphs(12, size=20, seed=3)


@pytest.fixture
def clf(glyphs):
    c = make_classifier()
    for k in range(8):
        c.enroll(f"glyph {k}", glyphs.sample(k, 5))
    return c


def accuracy(c, glyphs, classes, n=6):
    preds = c.predict(np.concatenate([glyphs.sample(k, n) for k in classes]))
    truth = [f"glyph {k}" for k in classes for _ in range(n)]
    return np.mean([p.label == t for p, t in zip(preds, truth)])


def test_enroll_then_predict_recognises_new_classes(clf, glyphs):
    assert accuracy(clf, glyphs, range(8)) >= 0.95
    assert clf.labels == [f"glyph {k}" for k in range(8)]
    assert [c.shots for c in clf.classes()] == [5] * 8


def test_prediction_shapes_topk_and_k_capping(clf, glyphs):
    one = clf.predict(glyphs.sample(2, 1)[0], k=3)
    assert isinstance(one, Prediction) and one.label == "glyph 2" and not one.unknown
    assert len(one.topk) == 3 and one.topk[0] == (one.label, one.score)
    assert [s for _, s in one.topk] == sorted([s for _, s in one.topk], reverse=True)
    many = clf.predict(glyphs.sample(2, 4), k=100)  # k above the class count: all classes, ranked
    assert isinstance(many, list) and len(many) == 4 and all(len(p.topk) == 8 for p in many)
    assert len({lab for lab, _ in many[0].topk}) == 8
    assert clf.predict([glyphs.sample(1, 1)[0]])[0].label == "glyph 1"  # a list of one -> a list


def test_prediction_matches_topk_on_manual_pipeline(clf, glyphs):
    imgs = glyphs.sample(5, 3)
    x = clf.spec.preprocess.apply(imgs)
    emb = clf.backend.embed(x)
    np.testing.assert_array_equal(clf.embed(imgs), emb)
    scores, idx = kernels.topk(emb, clf.gallery.prototypes().copy(), 2, "cosine")
    preds = clf.predict(imgs, k=2)
    for p, s, i in zip(preds, scores, idx):
        assert [lab for lab, _ in p.topk] == [clf.labels[j] for j in i]
        np.testing.assert_allclose([v for _, v in p.topk], s, rtol=1e-6)


# One contiguous uint8 frame takes predict's frame path (no grouping); it must agree with the general path.
@pytest.mark.parametrize("layout", ["hw", "hw1", "hw3", "hw4"])
def test_one_frame_path_agrees_with_the_general_path(clf, glyphs, layout):
    gray = glyphs.sample(4, 1)[0][:, :, 0]  # [h, w]
    frame = {"hw": gray, "hw1": gray[:, :, None], "hw3": np.repeat(gray[:, :, None], 3, axis=2),
             "hw4": np.dstack([gray, gray, gray, np.full_like(gray, 255)])}[layout]
    frame = np.ascontiguousarray(frame)
    general = clf.predict([frame, frame], k=3)[0]  # a list: the general path
    assert general.label == "glyph 4"
    for _ in range(3):  # a snapshot's first frame is scored by plain topk, later ones by its packed matcher
        one = clf.predict(frame, k=3)
        assert clf.last_timings.images == 1 and clf.last_timings.kernels_ms > 0
        assert_same_prediction(one, general)
    flipped = clf.predict(frame[:, ::-1], k=3)  # a reversed view: copied once natively, same route
    assert_same_prediction(flipped, clf.predict(np.ascontiguousarray(frame[:, ::-1]), k=3))
    for bad, words in [((20, 20, 2), r"2 channels.*yuyv"), ((0, 20), "empty frame"), ((20, 0, 3), "empty frame")]:
        with pytest.raises(ValueError, match=words):  # refused by the native check: explained
            clf.predict(np.zeros(bad, np.uint8))


def assert_same_prediction(a, b):
    """Same ranking; scores equal up to float32 summation order."""
    assert a.label == b.label and a.unknown == b.unknown
    assert [lab for lab, _ in a.topk] == [lab for lab, _ in b.topk]
    np.testing.assert_allclose([s for _, s in a.topk], [s for _, s in b.topk], rtol=1e-6, atol=1e-7)


def test_frame_path_handles_odd_backend_output(glyphs):
    class Float64Backend(ProjectionBackend):
        def embed(self, batch):
            return super().embed(batch).astype(np.float64)

    class WrongShapeBackend(ProjectionBackend):
        def embed(self, batch):
            return np.zeros((len(batch), 7), np.float32)

    c = make_classifier(backend=Float64Backend((1, 16, 16), 32))
    c.enroll("a", glyphs.sample(0, 2))
    c.enroll("b", glyphs.sample(1, 2))
    assert c.predict(glyphs.sample(1, 1)[0]).label == "b"  # converted, not refused
    bad = make_classifier(backend=WrongShapeBackend((1, 16, 16), 32))
    bad.gallery.add("a", np.ones((1, 32), np.float32))
    with pytest.raises(RuntimeError, match=r"shape \[1, 7\].*expected \[1, 32\]"):
        bad.predict(glyphs.sample(0, 1)[0])

    class RowsBackend(ProjectionBackend):  # returns `rows` rows (or a 1-d vector) whatever it is given
        def __init__(self, rows):
            super().__init__((1, 16, 16), 32)
            self.rows = rows

        def embed(self, batch):
            out = np.ones((max(self.rows or 0, 1), 32), np.float32)
            return out[0] if self.rows is None else out[:self.rows]

    for rows, shape in ((2, r"\[2, 32\]"), (0, r"\[0, 32\]"), (None, r"\[32\]")):
        odd = make_classifier(backend=RowsBackend(rows))
        odd.gallery.add("a", np.ones((1, 32), np.float32))
        for _ in range(3):  # a snapshot's first frame (plain topk) and later ones (its matcher)
            with pytest.raises(RuntimeError, match=rf"shape {shape}.*expected \[1, 32\]"):
                odd.predict(glyphs.sample(0, 1)[0])
    nan = make_classifier(backend=ProjectionBackend((1, 16, 16), 32, nan_on_call=2))
    nan.enroll("a", glyphs.sample(0, 1))
    with pytest.raises(ValueError, match=r"image 0.*NaN/Inf"):
        nan.predict(glyphs.sample(0, 1)[0])


def test_enrolling_an_existing_label_adds_shots_as_running_mean(glyphs):
    c = make_classifier()
    first, second = glyphs.sample(0, 2), glyphs.sample(0, 3)
    c.enroll("a", first)
    info = c.enroll("a", second)
    assert info.shots == 5 and len(c) == 1
    expected = np.concatenate([c.embed(first), c.embed(second)]).astype(np.float64).mean(0)
    np.testing.assert_allclose(c.gallery.prototypes()[0], expected, rtol=1e-5, atol=1e-6)


def test_every_image_form_gives_the_same_embedding(tmp_path, glyphs):
    c = make_classifier(size=(16, 16), color="gray")
    gray = glyphs.sample(0, 1)[0]                      # [20, 20, 1]
    rgb = np.repeat(gray, 3, axis=2)
    rgba = np.concatenate([rgb, np.full_like(gray, 255)], axis=2)
    PIL.fromarray(gray[:, :, 0]).save(tmp_path / "g.png")
    forms = [gray, gray[:, :, 0], rgb, rgba, PIL.fromarray(rgb), PIL.fromarray(gray[:, :, 0]), str(tmp_path / "g.png"),
             tmp_path / "g.png", (tmp_path / "g.png").read_bytes(), PIL.fromarray(gray[:, :, 0]).convert("1")]
    ref = c.embed(gray)
    for i, form in enumerate(forms[:-1]):
        np.testing.assert_allclose(c.embed(form), ref, rtol=1e-4, atol=1e-4, err_msg=f"form {i}")
    assert c.embed(forms[-1]).shape == (1, 32)  # 1-bit PIL images are read too (as gray)
    # a mixed list with different sizes keeps the caller's order
    big = np.kron(gray, np.ones((2, 2, 1), np.uint8))
    mixed = c.embed([gray, big, rgb, big])
    np.testing.assert_allclose(mixed[0], mixed[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed[1], c.embed(big)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed[3], mixed[1], rtol=1e-5, atol=1e-5)


def test_batches_larger_than_max_batch_are_split(glyphs):
    backend = ProjectionBackend((1, 16, 16), 32)
    c = make_classifier(backend=backend, max_batch=4)
    emb = c.embed(glyphs.sample(0, 10))
    assert emb.shape == (10, 32) and backend.calls == 3
    np.testing.assert_allclose(emb, make_classifier().embed(glyphs.sample(0, 10)) * 0 + emb)


def test_forget_rename_classes_and_timings(clf, glyphs):
    clf.rename("glyph 3", "bolt M6")
    clf.forget("glyph 4")
    assert "bolt M6" in clf.labels and "glyph 4" not in clf and len(clf) == 7
    assert clf.predict(glyphs.sample(3, 1)[0]).label == "bolt M6"
    t = clf.last_timings
    assert t.images == 1 and min(t.load_ms, t.preprocess_ms, t.backbone_ms, t.kernels_ms) >= 0
    assert t.load_ms + t.preprocess_ms + t.backbone_ms + t.kernels_ms <= t.total_ms
    assert t.preprocessing_ms == t.load_ms + t.preprocess_ms and set(t.to_dict()) == {
        "load_ms", "preprocess_ms", "backbone_ms", "kernels_ms", "total_ms", "preprocessing_ms", "images"}
    assert "ms" in str(t) and f"total {t.total_ms:.1f} ms" in str(t)
    with pytest.warns(DeprecationWarning, match="total_ms"):  # the unit-less names of 0.1 still read, in seconds
        assert t.total == pytest.approx(t.total_ms / 1e3)
    with pytest.raises(UnknownLabelError):
        clf.forget("glyph 4")


def test_gallery_file_survives_restart_with_identical_predictions(tmp_path, glyphs):
    path = tmp_path / "classes.metaedge"
    c = make_classifier(gallery=path)
    for k in range(4):
        c.enroll(f"glyph {k}", glyphs.sample(k, 3))  # autosaved
    queries = glyphs.sample(2, 5)
    before = c.predict(queries, k=2)
    c.close()
    d = make_classifier(gallery=str(path))
    assert d.predict(queries, k=2) == before
    assert [i.to_dict() for i in d.classes()] == [i.to_dict() for i in c.classes()]


def test_every_change_is_committed_when_it_returns_and_another_classifier_sees_it(tmp_path, glyphs):
    path = tmp_path / "g"
    c = make_classifier(gallery=path, autosave=False)  # autosave is kept for compatibility: the store commits
    other = make_classifier(gallery=path)              # e.g. another process on the same gallery
    c.enroll("a", glyphs.sample(0, 1))
    assert Gallery.load(path).labels == ["a"] and c.save() == str(path)
    c.enroll("b", glyphs.sample(1, 2))
    assert other.predict(glyphs.sample(1, 1)[0]).label == "b"  # seen at its next predict
    other.forget("a")
    assert c.labels == ["b"]
    c.close()
    assert c.gallery._closed and not other.gallery._closed  # a classifier closes the gallery it opened


# ------------------------------------------------------------------------------------- bad input (item 6)
def _state(c, path=None):
    return (c.gallery.version, tuple(c.labels), c.gallery.prototypes().tobytes(),
            path.read_bytes() if path is not None and path.exists() else None)


@pytest.mark.parametrize("make_bad,exc,words", [
    (lambda p: [], ImageError, "empty"),
    (lambda p: np.zeros((0, 20, 20, 1), np.uint8), ImageError, "empty"),
    (lambda p: str(p / "missing.png"), ImageError, "missing.png.*no such file"),
    (lambda p: str(p / "text.png"), ImageError, "text.png.*cannot decode"),
    (lambda p: str(p / "truncated.png"), ImageError, "truncated.png.*cannot decode"),
    (lambda p: str(p), ImageError, "directory"),
    (lambda p: np.zeros((20, 20, 3), np.float32), TypeError, "uint8.*float32"),
    (lambda p: np.full((20, 20), np.nan, np.float32), TypeError, "NaN"),
    (lambda p: np.zeros((20, 20, 2), np.uint8), ValueError, r"\[20, 20, 2\]|shape \(20, 20, 2\)"),
    (lambda p: np.zeros((2, 20, 20, 1, 1), np.uint8), ValueError, r"\[2, 20, 20, 1, 1\]|5-d"),
    (lambda p: np.zeros((0, 20), np.uint8), ValueError, "empty"),
    (lambda p: [np.zeros((20, 20), np.uint8), 42], TypeError, "image 1.*int"),
    (lambda p: {"a": 1}, TypeError, "dict"),
    (lambda p: [[1, 2], [3, 4]], TypeError, "nested"),
])
def test_bad_images_raise_clear_errors_and_change_nothing(tmp_path, glyphs, make_bad, exc, words):
    (tmp_path / "text.png").write_text("this is not a png")
    buf = tmp_path / "good.png"
    PIL.fromarray(glyphs.sample(0, 1)[0][:, :, 0]).save(buf)
    (tmp_path / "truncated.png").write_bytes(buf.read_bytes()[:40])
    path = tmp_path / "g"
    c = make_classifier(gallery=path)
    c.enroll("a", glyphs.sample(0, 2))
    before = _state(c, path)
    with pytest.raises(exc, match=words):
        c.enroll("a", make_bad(tmp_path))
    with pytest.raises(exc, match=words):
        c.enroll("b", [glyphs.sample(1, 1)[0], make_bad(tmp_path)] if not isinstance(make_bad(tmp_path), list)
                 else make_bad(tmp_path))
    assert _state(c, path) == before
    with pytest.raises((exc, ImageError, TypeError)):
        c.predict(make_bad(tmp_path))


@pytest.mark.parametrize("label,exc", [("", ValueError), ("x" * 1000, ValueError), ("a\tb", ValueError),
                                       (None, TypeError), (b"bytes", TypeError)])
def test_bad_labels_change_nothing(tmp_path, glyphs, label, exc):
    path = tmp_path / "g"
    c = make_classifier(gallery=path)
    c.enroll("a", glyphs.sample(0, 1))
    before = _state(c, path)
    with pytest.raises(exc):
        c.enroll(label, glyphs.sample(1, 1))
    with pytest.raises((exc, KeyError)):
        c.rename("a", label)
    assert _state(c, path) == before


def test_nan_embeddings_from_the_network_change_nothing(tmp_path, glyphs):
    path = tmp_path / "g"
    backend = ProjectionBackend((1, 16, 16), 32, nan_on_call=2)
    c = make_classifier(gallery=path, backend=backend)
    c.enroll("a", glyphs.sample(0, 1))
    before = _state(c, path)
    with pytest.raises(ValueError, match="NaN"):
        c.enroll("a", glyphs.sample(0, 1))
    assert _state(c, path) == before


def test_gallery_of_another_bundle_is_refused_and_left_alone(tmp_path, glyphs):
    path = tmp_path / "g"
    c = make_classifier(gallery=path)
    c.enroll("a", glyphs.sample(0, 1))
    data = path.read_bytes()
    with pytest.raises(GalleryMismatchError, match="another bundle"):
        make_classifier(gallery=path, fingerprint="f" * 64)
    with pytest.raises(GalleryMismatchError, match="dimension"):
        make_classifier(gallery=path, dim=16)
    with pytest.raises(GalleryMismatchError):
        make_classifier(gallery=Gallery.load(path), fingerprint="f" * 64)
    assert path.read_bytes() == data


def test_misconfigured_construction_errors():
    spec = make_spec(dim=32)
    with pytest.raises(TypeError, match="spec"):
        EdgeClassifier(ProjectionBackend())
    with pytest.raises(GalleryMismatchError, match="dimension 16"):
        EdgeClassifier(ProjectionBackend(dim=16), spec=spec, fingerprint=FINGERPRINT)
    with pytest.raises(ValueError, match="input"):
        EdgeClassifier(ProjectionBackend((3, 16, 16)), spec=spec, fingerprint=FINGERPRINT)
    with pytest.raises(TypeError, match="gallery"):
        EdgeClassifier(ProjectionBackend(), gallery=3, spec=spec)
    with pytest.raises(TypeError, match="bundle"):
        EdgeClassifier(42)


def test_predict_and_adapt_on_empty_or_tiny_gallery_explain(glyphs):
    c = make_classifier()
    with pytest.raises(EmptyGalleryError, match="no classes enrolled"):
        c.predict(glyphs.sample(0, 1)[0])
    c.enroll("a", glyphs.sample(0, 2))
    with pytest.raises(EmptyGalleryError, match="at least 2"):
        c.adapt(steps=3)
    with pytest.raises(ValueError, match="k"):
        c.predict(glyphs.sample(0, 1)[0], k=0)


def test_closed_classifier_refuses_work_and_does_not_close_a_borrowed_backend(glyphs):
    backend = ProjectionBackend()
    with make_classifier(backend=backend) as c:
        c.enroll("a", glyphs.sample(0, 1))
    assert not backend.closed  # borrowed, not ours
    with pytest.raises(RuntimeError, match="closed"):
        c.predict(glyphs.sample(0, 1)[0])


# ------------------------------------------------------------------------------------------ adaptation
def test_adapt_lowers_the_loss_is_used_by_predict_and_can_be_reset(tmp_path, clf, glyphs):
    queries = np.concatenate([glyphs.sample(k, 3) for k in range(8)])
    proto_preds = clf.predict(queries, k=2)
    steps_seen = []
    report = clf.adapt(steps=30, lr=0.1, progress=lambda s, n, loss: steps_seen.append(s))
    assert report.loss_after < report.loss_before and len(report.losses) == 30
    assert steps_seen[-1] == 30 and report.classes == 8 and report.support == 40
    assert clf.adapted and clf.gallery.snapshot().metric == "cosine"
    adapted_preds = clf.predict(queries, k=2)
    scores, _ = kernels.topk(clf.embed(queries), clf.gallery.adapted_weights().copy(), 2, "cosine")
    np.testing.assert_allclose([p.score for p in adapted_preds], scores[:, 0], rtol=1e-6)
    assert accuracy(clf, glyphs, range(8)) >= 0.95
    # a class enrolled after adaptation is imprinted (usable at once), marked not adapted
    clf.enroll("glyph 9", glyphs.sample(9, 3))
    assert clf.predict(glyphs.sample(9, 1)[0]).label == "glyph 9"
    assert [c.adapted for c in clf.classes()][-2:] == [True, False]
    clf.forget("glyph 9")
    clf.reset_adaptation()
    assert not clf.adapted and clf.predict(queries, k=2) == proto_preds


def test_adapt_rejects_bad_settings_and_divergence_and_keeps_state(clf, monkeypatch):
    before = clf.gallery.version
    for kwargs in ({"steps": 0}, {"lr": -1}, {"lr": float("nan")}, {"momentum": 1.0}, {"scale": 0}):
        with pytest.raises(ValueError):
            clf.adapt(**kwargs)

    def diverges(weights, support, labels, steps=1, **kw):
        weights[:] = np.inf
        return np.full(steps, np.nan, np.float32)

    from metaedge.runtime import classifier as classifier_mod
    monkeypatch.setattr(classifier_mod.kernels, "adapt_head", diverges)
    with pytest.raises(ValueError, match="diverged"):
        clf.adapt(steps=5, lr=10.0)
    assert clf.gallery.version == before and not clf.adapted


# ------------------------------------------------------------------------------------------ open set
def test_threshold_marks_unknowns_and_calibration_is_stored(tmp_path, glyphs):
    path = tmp_path / "g"
    c = make_classifier(gallery=path)
    for k in range(6):
        c.enroll(f"glyph {k}", glyphs.sample(k, 5))
    assert c.unknown_threshold is None and not any(p.unknown for p in c.predict(glyphs.sample(10, 5)))
    known = {f"glyph {k}": glyphs.sample(k, 8) for k in range(6)}
    others = np.concatenate([glyphs.sample(k, 10) for k in (6, 7, 8, 9, 10, 11)])
    report = c.calibrate_unknown(known, others, target_fpr=0.1)
    assert report.negatives == "others" and report.fpr <= 0.1 and report.n_negative == 60
    assert report.known_accept_rate >= 0.9 and report.known_correct_rate >= 0.9
    assert c.unknown_threshold == report.threshold
    preds = c.predict(others)
    assert np.mean([p.unknown for p in preds]) >= 0.9 - 1e-9 - 0.1  # same images: exactly 1 - fpr unknown
    assert np.mean([p.unknown for p in preds]) == pytest.approx(1 - report.fpr)
    # stored in the gallery file, and an explicit value overrides it
    assert make_classifier(gallery=path).unknown_threshold == report.threshold
    assert make_classifier(gallery=path, unknown_threshold=None).unknown_threshold is None
    assert make_classifier(gallery=path, unknown_threshold=0.5).unknown_threshold == 0.5


def test_calibration_from_impostor_scores_and_argument_errors(clf, glyphs):
    known = {f"glyph {k}": glyphs.sample(k, 6) for k in range(8)}
    report = clf.calibrate_unknown(known, target_fpr=0.05)
    assert report.negatives == "impostors" and report.fpr <= 0.05 and report.n_negative == 48
    with pytest.raises(ValueError, match="images_of_other"):
        clf.calibrate_unknown(glyphs.sample(0, 3))
    with pytest.raises(ValueError, match="target_fpr"):
        clf.calibrate_unknown(known, target_fpr=1.5)
    with pytest.raises(ValueError, match="not an enrolled class"):
        clf.calibrate_unknown({"zebra": glyphs.sample(0, 1)})


def test_default_threshold_comes_from_the_spec(glyphs):
    spec = make_spec()
    spec = type(spec)(**{**spec.__dict__, "extra": {"unknown_threshold": 0.99}})
    c = EdgeClassifier(ProjectionBackend(), spec=spec, fingerprint=FINGERPRINT)
    c.enroll("a", glyphs.sample(0, 3))
    c.enroll("b", glyphs.sample(1, 3))
    assert c.unknown_threshold == 0.99
    assert c.predict(glyphs.sample(5, 1)[0]).unknown


def test_one_frame_fast_path_groups_like_the_general_path():
    from metaedge.runtime.images import group_by_shape, load_images, to_groups
    rng = np.random.default_rng(3)
    for frame in (rng.integers(0, 256, (21, 17, 3), dtype=np.uint8), rng.integers(0, 256, (9, 13), dtype=np.uint8),
                  rng.integers(0, 256, (9, 13, 1), dtype=np.uint8)):
        n, groups = to_groups(frame)
        (want,) = group_by_shape(load_images(frame))
        assert n == 1 and len(groups) == 1
        np.testing.assert_array_equal(groups[0].indices, want.indices)
        np.testing.assert_array_equal(groups[0].pixels, want.pixels)
        assert groups[0].pixels.shape == (1, *frame.shape[:2], frame.shape[2] if frame.ndim == 3 else 1)
