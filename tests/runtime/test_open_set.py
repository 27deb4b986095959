"""Unknown rejection through a gallery's life: calibrated per head, kept with its calibration set, re-calibrated when
adapt installs a new head (every metric: a euclidean gallery's prototype threshold means nothing to the cosine
head), kept or dropped at a reset, upgraded from stores of schema 2, seen by other processes, and refused when
damaged. The scores of predictions say what they mean (confidence for cosine)."""
import json
import os
import shutil
import sqlite3

import numpy as np
import pytest

from metaedge.runtime import openset
from metaedge.runtime.gallery import Gallery, GalleryCorruptError
from metaedge.runtime.store import calibration as calibration_store
from metaedge.runtime.store import db
from tests.runtime.doubles import Glyphs, make_classifier

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="module")
def glyphs():
    return Glyphs(14, size=16, seed=4)


def enrolled(path, glyphs, metric, classes=6):
    c = make_classifier(gallery=path, metric=metric)
    for k in range(classes):
        c.enroll(f"g{k}", glyphs.sample(k, 5))
    return c


def calibration_data(glyphs, classes=6):
    known = {f"g{k}": glyphs.sample(k, 8) for k in range(classes)}
    others = np.concatenate([glyphs.sample(k, 10) for k in range(classes, classes + 6)])
    return known, others


def unknown_rate(clf, images) -> float:
    return float(np.mean([p.unknown for p in clf.predict(images)]))


@pytest.mark.parametrize("metric", ["euclidean", "dot", "cosine"])
@pytest.mark.parametrize("negatives", ["others", "impostors"])
def test_adapt_recalibrates_the_new_head_at_the_same_target_fpr(tmp_path, glyphs, metric, negatives):
    clf = enrolled(tmp_path / "g", glyphs, metric)
    known, others = calibration_data(glyphs)
    report = clf.calibrate_unknown(known, others if negatives == "others" else None, target_fpr=0.1)
    assert report.mode == "prototypes" and report.negatives == negatives and set(report.heads) == {"prototypes"}
    assert report.score.startswith({"euclidean": "minus the squared", "dot": "dot product",
                                    "cosine": "cosine similarity"}[metric])
    before = unknown_rate(clf, others)

    adapt = clf.adapt(steps=30)
    assert adapt.threshold_source == "recalibrated" and "re-calibrated after adapt" in adapt.open_set
    assert adapt.unknown_threshold == clf.unknown_threshold is not None
    state = clf.open_set()
    assert state.head == "adapted" and state.source == "recalibrated" and state.target_fpr == 0.1
    assert state.score.startswith("cosine similarity")
    # the same threshold an independent calibration of the installed head gives on the stored set
    cset = clf.gallery.calibration_set()
    snap = clf.gallery.snapshot()
    again = openset.calibrate_head("adapted", np.array(snap.weights), "cosine", clf.gallery._state.uids, cset, 0.1,
                                   negatives)
    assert again.threshold == clf.unknown_threshold and state.heads["adapted"]["fpr"] == again.fpr <= 0.1
    if negatives == "others":  # rejection keeps working: the same fraction of the other images is refused
        assert unknown_rate(clf, others) == pytest.approx(1 - again.fpr) and before == pytest.approx(1 - report.fpr)
    assert unknown_rate(clf, np.concatenate(list(known.values()))) <= 1 - again.known_accept_rate + 1e-9

    # the record is in the store: another process (a fresh open) sees it, and the audit trail says so
    with Gallery.load(tmp_path / "g") as other:
        assert other.thresholds["adapted"] == clf.unknown_threshold
        assert other.open_set().source == "recalibrated"
        adapt_entry = [e for e in other.history() if e.op == "adapt"][-1]
        assert adapt_entry.detail["unknown_threshold"] == clf.unknown_threshold
        assert adapt_entry.detail["threshold_how"] == "recalibrated"

    clf.reset_adaptation()  # back to the prototypes: their calibrated threshold is still there
    assert clf.unknown_threshold == report.threshold and set(clf.open_set().heads) == {"prototypes"}
    clf.close()


def test_calibrating_an_adapted_gallery_sets_both_heads(tmp_path, glyphs):
    clf = enrolled(tmp_path / "g", glyphs, "euclidean")
    clf.adapt(steps=20)
    known, others = calibration_data(glyphs)
    report = clf.calibrate_unknown(known, others, target_fpr=0.2)
    assert report.mode == "adapted" and set(report.heads) == {"prototypes", "adapted"}
    assert report.threshold == report.heads["adapted"]["threshold"] == clf.unknown_threshold
    assert report.heads["prototypes"]["threshold"] < 0 < report.threshold  # minus distances vs cosine
    assert len(report.known_scores) == report.n_known == 48 and len(report.negative_scores) == report.n_negative
    clf.reset_adaptation()
    assert clf.unknown_threshold == report.heads["prototypes"]["threshold"]
    clf.close()


def test_forgotten_classes_count_as_negatives_at_the_next_recalibration(tmp_path, glyphs):
    clf = enrolled(tmp_path / "g", glyphs, "cosine")
    known, _ = calibration_data(glyphs)
    clf.calibrate_unknown(known, target_fpr=0.1)  # impostors: 48 negatives
    clf.forget("g5")
    clf.adapt(steps=10)
    record = clf.open_set().heads["adapted"]
    assert record["n_negative"] == 40 + 8 and record["n_known"] == 40  # g5's 8 images: negatives now
    clf.close()


def test_hand_set_thresholds_are_kept_others_dropped_with_their_head(tmp_path, glyphs):
    clf = enrolled(tmp_path / "g", glyphs, "euclidean")
    clf.gallery.set_threshold("prototypes", -50.0)
    rep = clf.adapt(steps=10)
    # no calibration set: nothing to re-calibrate from, and minus distances mean nothing to the cosine head
    assert rep.unknown_threshold is None and rep.threshold_source == "off" and "not rejected" in rep.open_set
    clf.gallery.set_threshold("adapted", 0.3)
    assert clf.open_set().source == "set" and clf.adapt(steps=10).unknown_threshold == 0.3  # kept: the user's
    clf.gallery.set_threshold("adapted", None)
    assert clf.open_set().source == "off"
    clf.close()
    cos = enrolled(tmp_path / "c", glyphs, "cosine")
    cos.gallery.set_threshold("prototypes", 0.5)
    rep = cos.adapt(steps=10)  # same cosine scale: the prototypes' threshold is used, and said to be borrowed
    assert rep.unknown_threshold == 0.5 and rep.threshold_source == "borrowed" and "not re-calibrated" in rep.open_set
    cos.unknown_threshold = 0.9
    assert cos.open_set().source == "override" and cos.open_set().threshold == 0.9
    cos.close()


def test_a_large_calibration_set_is_kept_as_a_seeded_sample(tmp_path, glyphs, monkeypatch):
    monkeypatch.setattr(calibration_store, "MAX_CALIBRATION_ROWS", 20)
    clf = enrolled(tmp_path / "g", glyphs, "cosine")
    known, others = calibration_data(glyphs)
    report = clf.calibrate_unknown(known, others)
    cal = clf.open_set().calibration
    assert (cal["known"], cal["known_given"], cal["other"], cal["other_given"]) == (20, 48, 20, 60)
    assert report.n_known == 20 and report.n_negative == 20  # computed from what is kept
    cset = clf.gallery.calibration_set()
    assert len(cset.known) == 20 and len(cset.other) == 20 and set(cset.known_uids.tolist()) <= set(range(6))
    clf.close()


def test_calibration_input_errors_change_nothing(tmp_path, glyphs):
    clf = enrolled(tmp_path / "g", glyphs, "cosine", classes=1)
    version = clf.gallery.version
    with pytest.raises(ValueError, match="at least 2 enrolled classes"):
        clf.calibrate_unknown({"g0": glyphs.sample(0, 3)})
    with pytest.raises(ValueError, match="images_of_known.*'zebra' is not an enrolled class"):
        clf.calibrate_unknown({"zebra": glyphs.sample(0, 1)}, glyphs.sample(3, 2))
    with pytest.raises(ValueError, match="`known`: 'zebra'"):
        clf.gallery.set_calibration({"zebra": np.ones((1, 32), np.float32)}, np.ones((2, 32), np.float32))
    assert clf.gallery.version == version and clf.gallery.calibration_set() is None
    clf.close()


def test_a_damaged_calibration_set_is_refused_by_adapt_and_check(tmp_path, glyphs):
    clf = enrolled(tmp_path / "g", glyphs, "cosine")
    known, others = calibration_data(glyphs)
    clf.calibrate_unknown(known, others)
    version = clf.gallery.version
    clf.close()
    conn = sqlite3.connect(tmp_path / "g", isolation_level=None)
    conn.execute("UPDATE calibration SET embeddings = zeroblob(length(embeddings)) WHERE role = 'other'")
    conn.close()
    clf = make_classifier(gallery=tmp_path / "g")
    with pytest.raises(GalleryCorruptError, match="calibration row .* checksum"):
        clf.adapt(steps=5)
    assert clf.gallery.version == version and not clf.adapted  # nothing installed
    assert any("calibration" in p for p in clf.gallery.check())
    conn = sqlite3.connect(tmp_path / "g", isolation_level=None)
    conn.execute("UPDATE calibration SET rows = rows + 1 WHERE role = 'other'")
    conn.close()
    with pytest.raises(GalleryCorruptError, match="calibration row"):
        clf.gallery.calibration_set()
    clf.close()


# ------------------------------------------------------------------------------------------ schema 2 -> 3
@pytest.fixture
def store_v2(tmp_path):
    path = tmp_path / "v2.metaedge"
    shutil.copyfile(os.path.join(DATA, "store_v2.metaedge"), path)
    with open(os.path.join(DATA, "store_v2.expected.json")) as f:
        return path, json.load(f)


def _user_version(path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def test_a_schema_2_store_reads_as_it_is_when_read_only(store_v2):
    path, want = store_v2
    with Gallery.load(path, readonly=True) as g:
        assert g.labels == want["labels"] and g.thresholds == want["thresholds"]
        state = g.open_set()
        assert state.head == "adapted" and state.source == "migrated" and state.calibration is None
        assert g.calibration_set() is None and g.check() == []
    assert _user_version(path) == 2


def test_a_schema_2_store_is_upgraded_in_place_keeping_everything(store_v2):
    path, want = store_v2
    with Gallery.load(path) as g:
        assert g.labels == want["labels"] and g.counts().tolist() == want["counts"]
        np.testing.assert_array_equal(g.prototypes(), np.array(want["prototypes"], np.float32))
        np.testing.assert_array_equal(g.adapted_weights(), np.array(want["adapted"], np.float32))
        assert g.thresholds == want["thresholds"] and g.adaptation == want["adaptation"]
        history = g.history()
        assert [[e.op, e.label, e.shots] for e in history[:-1]] == want["history"]
        assert history[-1].op == "migrate" and history[-1].detail["from_schema"] == 2
        assert history[-1].detail["kept_thresholds"] == {k: v for k, v in want["thresholds"].items() if v is not None}
        assert g.version == want["version"] + 1
        assert {h: v["how"] for h, v in g.open_set().heads.items()} == {"prototypes": "migrated", "adapted": "migrated"}
        assert g.check() == []
    assert _user_version(path) == db.SCHEMA_VERSION == 3
    with Gallery.load(path) as g:  # opening again changes nothing
        assert g.version == want["version"] + 1


def test_an_upgraded_euclidean_gallery_says_adapt_cannot_recalibrate_until_calibrated(store_v2, glyphs):
    path, _ = store_v2
    g = Gallery.load(path)
    training = g.training_set()
    head = g.set_adapted(np.eye(4, 8, dtype=np.float32), {"steps": 1}, expected_version=training.version,
                         classes=training.uids)
    # the migrated adapted threshold was another head's: dropped; euclidean scores cannot stand in for it
    assert head is None and g.thresholds == {"prototypes": -5.25, "adapted": None}
    state = g.open_set()
    assert state.threshold is None and "not rejected" in state.explain() and "calibrate" in state.explain()
    rng = np.random.default_rng(0)
    heads = g.set_calibration({label: rng.standard_normal((3, 8)).astype(np.float32) for label in g.labels},
                              rng.standard_normal((10, 8)).astype(np.float32), target_fpr=0.2)
    assert set(heads) == {"prototypes", "adapted"} and g.open_set().source == "calibrated"
    g.close()


def test_scores_say_what_they_mean_and_cosine_has_a_confidence(glyphs):
    for metric, has_confidence in (("cosine", True), ("euclidean", False), ("dot", False)):
        clf = make_classifier(metric=metric)
        for k in range(3):
            clf.enroll(f"g{k}", glyphs.sample(k, 3))
        p = clf.predict(glyphs.sample(1, 1)[0], k=3)
        if has_confidence:
            assert p.confidence == pytest.approx((1 + p.score) / 2) and 0 <= p.confidence <= 1
            assert "confidence = (1 + score) / 2" in clf.score_meaning
        else:
            assert p.confidence is None
        assert p.to_dict()["confidence"] == p.confidence
        clf.adapt(steps=5)
        adapted = clf.predict(glyphs.sample(1, 1)[0])
        assert adapted.confidence == pytest.approx((1 + adapted.score) / 2)  # the adapted head is cosine
        assert clf.score_meaning.startswith("cosine similarity")
        clf.close()
    assert openset.confidence(np.array([-2.0, 0.0, 1.5]), "cosine").tolist() == [0.0, 0.5, 1.0]
