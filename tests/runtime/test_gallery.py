"""Gallery: running means, reservoir memory, copy-on-write snapshots; the store: persistence, sharing between
instances, transactions, the audit trail (integrity and hostile files: test_gallery_files.py)."""
import gc
import time
import weakref

import numpy as np
import pytest

from metaedge.runtime.gallery import MAX_LABEL_LENGTH, Gallery, GalleryError, GalleryMismatchError, UnknownLabelError

FP = "a" * 64
DIM = 8


def filled(rng, classes=5, shots=3, **kw) -> Gallery:
    g = Gallery(DIM, "cosine", FP, **kw)
    for c in range(classes):
        g.add(f"class {c}", rng.standard_normal((shots, DIM)).astype(np.float32))
    return g


def assert_same_state(a: Gallery, b: Gallery):
    assert a.labels == b.labels
    np.testing.assert_array_equal(a.prototypes(), b.prototypes())
    np.testing.assert_array_equal(a.counts(), b.counts())
    for x, y in zip(a.support_set(), b.support_set()):
        np.testing.assert_array_equal(x, y)
    assert (a.adapted_weights() is None) == (b.adapted_weights() is None)
    if a.adapted_weights() is not None:
        np.testing.assert_array_equal(a.adapted_weights(), b.adapted_weights())
    assert a.thresholds == b.thresholds
    assert [c.to_dict() for c in a.classes()] == [c.to_dict() for c in b.classes()]
    assert (a.embedding_dim, a.metric, a.fingerprint, a.support_cap, a.seed) == \
           (b.embedding_dim, b.metric, b.fingerprint, b.support_cap, b.seed)


# ---------------------------------------------------------------------------------------------- maths
def test_prototype_is_the_exact_running_mean_of_all_shots(rng):
    g = Gallery(DIM, "euclidean", FP)
    batches = [rng.standard_normal((n, DIM)).astype(np.float32) for n in (1, 4, 2)]
    for b in batches:
        g.add("bolt", b)
    g.add("nut", batches[0] * 3)
    expected = np.concatenate(batches).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(g.prototypes()[0], expected, rtol=1e-5, atol=1e-6)
    assert g.counts().tolist() == [7, 1]
    np.testing.assert_allclose(g.prototypes()[1], batches[0][0] * 3, rtol=1e-6)


def test_support_memory_is_bounded_reproducible_and_a_subset(rng):
    shots = rng.standard_normal((50, DIM)).astype(np.float32)
    a = Gallery(DIM, support_cap=6, seed=3)
    b = Gallery(DIM, support_cap=6, seed=3)
    for i in range(0, 50, 7):
        a.add("x", shots[i:i + 7])
    for i in range(0, 50, 5):  # a different chunking of the same stream: same reservoir
        b.add("x", shots[i:i + 5])
    sa, _ = a.support_set()
    sb, _ = b.support_set()
    assert sa.shape == (6, DIM)
    np.testing.assert_array_equal(sa, sb)
    assert all(any(np.array_equal(row, s) for s in shots) for row in sa)
    c = Gallery(DIM, support_cap=6, seed=4)
    c.add("x", shots)
    assert not np.array_equal(c.support_set()[0], sa)  # the seed matters


def test_reservoir_keeps_every_shot_with_equal_probability():
    # 400 classes x 20 shots, cap 5: each shot position should be kept ~ 5/20 = 25% of the time.
    cap, n, classes = 5, 20, 400
    g = Gallery(1, "dot", support_cap=cap, seed=11)
    for c in range(classes):
        g.add(f"c{c}", np.arange(1, n + 1, dtype=np.float32)[:, None])
    kept = np.zeros(n)
    support, _ = g.support_set()
    for v in support[:, 0]:
        kept[int(v) - 1] += 1
    rate = kept / classes
    # binomial sd = sqrt(.25*.75/400) = 0.022: 5 sd bounds
    assert np.all(np.abs(rate - cap / n) < 0.11), rate


def test_support_cap_zero_keeps_nothing(rng):
    g = filled(rng, support_cap=0)
    assert g.support_set()[0].shape == (0, DIM)


def test_snapshots_are_immutable_and_unaffected_by_later_changes(rng):
    g = filled(rng, classes=3)
    snap = g.snapshot()
    before = snap.weights.copy()
    assert not snap.weights.flags.writeable
    for i in range(40):  # appends reuse spare rows past the snapshot's view
        g.add(f"new {i}", rng.standard_normal((2, DIM)).astype(np.float32))
    g.add("class 0", rng.standard_normal((2, DIM)).astype(np.float32))  # rewrites a row: copy-on-write
    g.remove("class 1")
    np.testing.assert_array_equal(snap.weights, before)
    assert snap.labels == ("class 0", "class 1", "class 2")
    assert len(g.snapshot()) == 42


def test_snapshot_host_topk_packs_on_the_second_call_and_stays_right(rng):
    g = filled(rng, classes=40)
    snap = g.snapshot()
    q = rng.standard_normal((1, DIM)).astype(np.float32)
    want = snap.topk(q, 5)
    assert snap.host_topk is None
    first = snap.first_host_topk(q, 5)  # plain topk: a snapshot used once never packs
    assert "matcher" not in vars(snap) and snap.host_topk is None
    second = snap.first_host_topk(q, 5)  # builds the packed matcher and hands over to it
    assert "matcher" in vars(snap) and snap.host_topk == snap.matcher.topk_float32
    third = snap.host_topk(q, 5)
    for scores, indices in (first, second, third):
        np.testing.assert_array_equal(indices, want[1])
        np.testing.assert_allclose(scores, want[0], rtol=1e-6)
    for i in range(3):  # later changes publish new snapshots; this one keeps scoring its own classes
        g.add(f"late {i}", rng.standard_normal((2, DIM)).astype(np.float32))
    np.testing.assert_array_equal(snap.host_topk(q, 5)[1], want[1])
    assert g.snapshot().host_topk is None
    ref = weakref.ref(snap)
    gc.disable()
    try:  # freed by reference counting alone: a cycle would keep big class matrices alive until a GC pass
        del snap
        assert ref() is None
    finally:
        gc.enable()


def test_forget_rename_and_errors(rng):
    g = filled(rng, classes=3)
    g.rename("class 1", "Schraube M6 ✓")
    assert g.labels == ["class 0", "Schraube M6 ✓", "class 2"]
    g.remove("class 0")
    assert g.labels == ["Schraube M6 ✓", "class 2"]
    with pytest.raises(UnknownLabelError, match="no class 'class 0'"):
        g.remove("class 0")
    with pytest.raises(KeyError):
        g.rename("nope", "x")
    with pytest.raises(ValueError, match="already exists"):
        g.rename("class 2", "Schraube M6 ✓")


@pytest.mark.parametrize("label,exc,words", [
    ("", ValueError, "non-empty"), ("   ", ValueError, "non-empty"), (" x", ValueError, "whitespace"),
    ("a\nb", ValueError, "control"), ("x" * (MAX_LABEL_LENGTH + 1), ValueError, "at most"),
    (3, TypeError, "str"), (None, TypeError, "str")])
def test_bad_labels_are_rejected_and_change_nothing(rng, label, exc, words):
    g = filled(rng)
    version = g.version
    with pytest.raises(exc, match=words):
        g.add(label, rng.standard_normal((1, DIM)).astype(np.float32))
    assert g.version == version and len(g) == 5


@pytest.mark.parametrize("emb,exc,words", [
    (np.zeros((0, DIM), np.float32), ValueError, "at least one"),
    (np.zeros((2, DIM + 1), np.float32), ValueError, r"\[n, 8\]"),
    (np.array([[np.nan] * DIM], np.float32), ValueError, "NaN"),
    (np.ones((2, DIM), np.int32), TypeError, "float"),
    ([[0.0] * DIM], TypeError, "numpy"),
])
def test_bad_embeddings_are_rejected_and_change_nothing(rng, emb, exc, words):
    g = filled(rng)
    before = g.prototypes().copy()
    with pytest.raises(exc, match=words):
        g.add("class 0", emb)
    np.testing.assert_array_equal(g.prototypes(), before)


# ---------------------------------------------------------------------------------------------- the store
def test_a_stored_gallery_reopens_with_everything(tmp_path, rng):
    path = tmp_path / "g.metaedge"
    g = Gallery.open(path, embedding_dim=DIM, fingerprint=FP, support_cap=3, seed=9)
    for c in range(6):
        g.add(f"class {c}", rng.standard_normal((4, DIM)).astype(np.float32))
    g.add("class 2", rng.standard_normal((2, DIM)).astype(np.float32))
    g.set_adapted(rng.standard_normal((6, DIM)).astype(np.float32), {"steps": 5})
    g.add("late", rng.standard_normal((1, DIM)).astype(np.float32))  # imprinted, not adapted
    g.set_threshold("prototypes", 0.25)
    assert g.save() == str(path)  # every change is already committed: save() only names the file
    h = Gallery.load(path, fingerprint=FP, embedding_dim=DIM, metric="cosine")
    assert_same_state(g, h)
    assert h.adaptation == {"steps": 5} and h.version == g.version
    assert [c.adapted for c in h.classes()] == [True] * 6 + [False]
    # continues identically after the reload (reservoir seeded by class id and shot index)
    more = rng.standard_normal((9, DIM)).astype(np.float32)
    g.add("class 4", more)
    h.add("class 4", more)
    np.testing.assert_array_equal(g.support_set()[0], h.support_set()[0])


def test_an_in_memory_gallery_saved_to_a_file_continues_there(tmp_path, rng):
    g = filled(rng, classes=3)
    path = tmp_path / "copy.metaedge"
    assert g.save(path) == str(path) and g.path == str(path)
    g.add("after save", rng.standard_normal((1, DIM)).astype(np.float32))  # committed to the file
    assert Gallery.load(path).labels == ["class 0", "class 1", "class 2", "after save"]
    with pytest.raises(ValueError, match="exists"):  # a copy never replaces a file another process may use
        filled(rng).save(path)
    assert len(Gallery.load(path)) == 4


def test_empty_gallery_round_trip(tmp_path):
    Gallery(DIM, "dot", FP, path=tmp_path / "e")
    h = Gallery.load(tmp_path / "e")
    assert len(h) == 0 and h.metric == "dot" and h.fingerprint == FP
    with pytest.raises(GalleryError, match="already exists"):
        Gallery(DIM, "dot", FP, path=tmp_path / "e")


def test_load_other_bundle_or_dimension_is_a_clear_error(tmp_path, rng):
    filled(rng).save(tmp_path / "g")
    with pytest.raises(GalleryMismatchError, match="another bundle"):
        Gallery.load(tmp_path / "g", fingerprint="b" * 64)
    with pytest.raises(GalleryMismatchError, match="dimension 8.*produces 16"):
        Gallery.load(tmp_path / "g", embedding_dim=16)
    with pytest.raises(GalleryMismatchError, match="metric"):
        Gallery.load(tmp_path / "g", metric="euclidean")


def test_a_legacy_fingerprint_is_accepted_and_restamped_with_an_audit_entry(tmp_path, rng):
    filled(rng).save(tmp_path / "g")  # recorded FP: what metaedge 0.1 recorded (the ONNX sha256)
    g = Gallery.load(tmp_path / "g", fingerprint="c" * 64, legacy_fingerprints=(FP,))
    assert g.fingerprint == "c" * 64
    assert g.history()[-1].op == "fingerprint" and g.history()[-1].detail == {"from": FP, "to": "c" * 64}
    assert Gallery.load(tmp_path / "g").fingerprint == "c" * 64
    with pytest.raises(GalleryMismatchError):  # the old one no longer matches
        Gallery.load(tmp_path / "g", fingerprint=FP)


def test_open_creates_the_store_and_loads_an_existing_one(tmp_path, rng):
    path = tmp_path / "new.metaedge"
    g = Gallery.open(path, embedding_dim=DIM, fingerprint=FP)
    assert path.exists() and len(g) == 0 and g.history()[0].op == "create"
    g.add("a", rng.standard_normal((1, DIM)).astype(np.float32))
    h = Gallery.open(path, embedding_dim=DIM, fingerprint=FP)
    assert h.labels == ["a"]
    with pytest.raises(GalleryMismatchError):
        Gallery.open(path, embedding_dim=DIM, fingerprint="c" * 64)
    with pytest.raises(FileNotFoundError):
        Gallery.open(tmp_path / "no-such-dir" / "g", embedding_dim=DIM)


def test_two_galleries_on_one_file_see_each_other_and_lose_nothing(tmp_path, rng):
    path = tmp_path / "shared.metaedge"
    a = Gallery.open(path, embedding_dim=DIM, fingerprint=FP)
    b = Gallery.open(path, embedding_dim=DIM, fingerprint=FP)
    x = rng.standard_normal((2, DIM)).astype(np.float32)
    y = rng.standard_normal((3, DIM)).astype(np.float32)
    a.add("bolt", x)
    snap = b.snapshot()  # the other instance catches up at its next snapshot
    assert snap.labels == ("bolt",) and snap.version == a.version
    b.add("bolt", y)     # computed from the committed row, not from a stale copy: no lost update
    a.add("nut", x)
    assert a.snapshot().labels == b.snapshot().labels == ("bolt", "nut")
    assert a.counts().tolist() == b.counts().tolist() == [5, 2]
    np.testing.assert_allclose(a.prototypes()[0], np.concatenate([x, y]).mean(0), rtol=1e-5, atol=1e-6)
    b.rename("bolt", "bolt M6")
    b.remove("nut")
    b.set_threshold("prototypes", 0.5)
    assert a.labels == ["bolt M6"] and a.thresholds["prototypes"] == 0.5
    b.set_adapted(np.ones((1, DIM), np.float32))
    assert a.adapted and a.snapshot().metric == "cosine"


def test_catching_up_with_few_or_many_changes_gives_the_same_as_a_fresh_load(tmp_path, rng):
    path = tmp_path / "g"
    a = Gallery.open(path, embedding_dim=DIM, support_cap=1)
    with a.transaction():
        for i in range(950):
            a.add(f"c{i}", rng.standard_normal((1, DIM)).astype(np.float32))
    b = Gallery.load(path)
    b.snapshot()
    for batch in (3, 300):  # a few classes are read one by one; many: everything is reloaded
        with a.transaction():
            for i in rng.choice(950, batch, replace=False):
                a.add(f"c{i}", rng.standard_normal((1, DIM)).astype(np.float32))
            a.rename("c5" if batch == 3 else "five 3", f"five {batch}")
            a.add(f"new {batch}", rng.standard_normal((1, DIM)).astype(np.float32))
        snap = b.snapshot()
        fresh = Gallery.load(path)
        assert snap.labels == tuple(fresh.labels) and snap.version == fresh.version
        np.testing.assert_array_equal(b.prototypes(), fresh.prototypes())
        assert b.counts().tolist() == fresh.counts().tolist()
    assert a.export_pack(tmp_path / "many.pack", a.labels[:920]) == 920  # more ids than one query takes
    assert len(Gallery(DIM, support_cap=1).import_pack(tmp_path / "many.pack").added) == 920


def test_changes_are_transactions_all_or_nothing(tmp_path, rng):
    path = tmp_path / "g"
    g = Gallery.open(path, embedding_dim=DIM, fingerprint=FP)
    g.add("a", rng.standard_normal((1, DIM)).astype(np.float32))
    version = g.version
    with pytest.raises(ZeroDivisionError):
        with g.transaction():
            g.add("b", rng.standard_normal((1, DIM)).astype(np.float32))
            g.remove("a")
            assert g.labels == ["b"]  # this thread sees its own uncommitted changes
            1 / 0
    assert g.labels == ["a"] and g.version == version
    assert Gallery.load(path).labels == ["a"]
    with g.transaction():
        g.add("b", rng.standard_normal((1, DIM)).astype(np.float32))
        g.add("c", rng.standard_normal((1, DIM)).astype(np.float32))
    assert g.version == version + 1  # one transaction, one version step
    assert [e.op for e in g.history()[-2:]] == ["enroll", "enroll"]


def test_the_audit_trail_records_every_change_and_who_made_it(tmp_path, rng):
    g = Gallery.open(tmp_path / "g", embedding_dim=DIM, fingerprint=FP)
    g.actor = "app on line 3"
    g.add("a", rng.standard_normal((3, DIM)).astype(np.float32), now=1000.0)
    with g.acting_as("token:operator-7"):
        g.add("a", rng.standard_normal((2, DIM)).astype(np.float32))
        g.rename("a", "b")
    g.set_adapted(np.ones((1, DIM), np.float32), {"steps": 3, "losses": [1.0, 0.5]})
    g.clear_adapted()
    g.set_threshold("prototypes", 0.3)
    g.remove("b")
    rows = [(e.op, e.label, e.shots, e.actor) for e in g.history()]
    assert rows == [("create", None, None, rows[0][3]), ("enroll", "a", 3, "app on line 3"),
                    ("enroll", "a", 2, "token:operator-7"), ("rename", "b", None, "token:operator-7"),
                    ("adapt", None, None, "app on line 3"), ("reset_adaptation", None, None, "app on line 3"),
                    ("threshold", None, None, "app on line 3"), ("forget", "b", 5, "app on line 3")]
    h = g.history()
    assert h[3].detail == {"from": "a"} and h[4].detail["trained"] == 1 and "losses" not in h[4].detail
    assert [e.version for e in h] == list(range(8)) and h[-1].version == g.version
    assert [e.op for e in g.history(label="a")] == ["enroll", "enroll"] and len(g.history(limit=2)) == 2
    # the time of the change itself (now= only sets the class's own times)
    assert abs(h[1].at - time.time()) < 300 and h[1].to_dict()["at"].endswith("+00:00")
    assert g.classes() == [] and h[1].to_dict()["label"] == "a"


def test_adapt_merges_with_changes_made_while_it_trained(tmp_path, rng):
    path = tmp_path / "g"
    g = filled(rng, classes=3)
    g.save(path)
    training = g.training_set()
    other = Gallery.load(path)  # another process, while adapt trains
    other.add("class 1", rng.standard_normal((1, DIM)).astype(np.float32))  # re-enrolled: its row is stale
    other.add("new", rng.standard_normal((1, DIM)).astype(np.float32))
    other.remove("class 2")
    weights = np.full((3, DIM), 0.5, np.float32)
    g.set_adapted(weights, {"steps": 1}, expected_version=training.version, classes=training.uids)
    assert g.labels == ["class 0", "class 1", "new"]
    assert [c.adapted for c in g.classes()] == [True, False, False]
    np.testing.assert_array_equal(g.adapted_weights()[0], weights[0])
    np.testing.assert_allclose(g.adapted_weights()[1], g.prototypes()[1] / np.linalg.norm(g.prototypes()[1]),
                               rtol=1e-5)
    with pytest.raises(RuntimeError, match="changed"):  # without the class ids the rows cannot be matched
        g.set_adapted(np.ones((3, DIM), np.float32), expected_version=training.version)


def test_a_closed_gallery_refuses_changes(tmp_path, rng):
    g = Gallery.open(tmp_path / "g", embedding_dim=DIM)
    g.add("a", rng.standard_normal((1, DIM)).astype(np.float32))
    g.close()
    g.close()
    assert g.labels == ["a"]
    with pytest.raises(GalleryError, match="closed"):
        g.add("b", rng.standard_normal((1, DIM)).astype(np.float32))


def test_labels_are_unicode_normalised_for_lookups(rng):
    g = Gallery(DIM)
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    g.add(decomposed, rng.standard_normal((1, DIM)).astype(np.float32))
    g.add(composed, rng.standard_normal((1, DIM)).astype(np.float32))  # the same label: more shots
    assert g.labels == [composed] and g.counts().tolist() == [2]
    assert decomposed in g and g.class_info(decomposed).shots == 2
    g.rename(decomposed, "tea")
    assert g.labels == ["tea"]
