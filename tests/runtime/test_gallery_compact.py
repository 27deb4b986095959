"""Large galleries are scored through the compact int8 class matrix, kept in step with every change: the
predictions equal kernels.topk on the snapshot's own float32 rows, exactly, through enrolls, more shots,
renames, forgets, adapt and reset - in one process and when another process changes the gallery."""
import numpy as np
import pytest

from metaedge import kernels
from metaedge.runtime.gallery import Gallery

DIM = 24


def assert_exact(g: Gallery, queries: np.ndarray, k: int = 5):
    snap = g.snapshot()
    kk = min(k, len(snap))
    s, i = snap.host_topk(queries, kk)  # the per-frame route predict takes
    want_s, want_i = kernels.topk(queries, snap.kernel_weights, kk, snap.metric)
    np.testing.assert_array_equal(s, want_s)  # compared by scores: ties may order indices differently
    for row_s, row_i, w_s, w_i in zip(s, i, want_s, want_i):
        for a, b, x, y in zip(row_i, w_i, row_s, w_s):
            assert a == b or x == y
    return snap


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_every_kind_of_change_keeps_the_compact_copy_exact(tmp_path, rng, metric):
    g = Gallery.open(tmp_path / "g", embedding_dim=DIM, metric=metric)
    g.matching = "compact"  # (auto would use it from 1 MiB of classes; forced here for a small, fast test)
    queries = rng.standard_normal((3, DIM)).astype(np.float32)
    with g.transaction():
        for c in range(60):
            g.add(f"c{c}", rng.standard_normal((2, DIM)).astype(np.float32))
    snap = assert_exact(g, queries)
    assert snap.compact is not None and len(snap.compact) == 60
    for step in range(40):
        op = rng.integers(0, 4)
        labels = g.labels
        if op == 0:
            g.add(f"new{step}", rng.standard_normal((1, DIM)).astype(np.float32))
        elif op == 1:
            g.add(labels[rng.integers(len(labels))], rng.standard_normal((3, DIM)).astype(np.float32))
        elif op == 2 and len(labels) > 10:
            g.remove(labels[rng.integers(len(labels))])
        else:
            g.rename(labels[rng.integers(len(labels))], f"renamed{step}")
        snap = assert_exact(g, queries)
        assert len(snap.compact) == len(g)
    weights = kernels.l2_normalize(g.prototypes().copy() + 0.1)
    g.set_adapted(weights, {"steps": 1})
    snap = assert_exact(g, queries)
    assert snap.adapted and snap.metric == "cosine" and snap.compact is not None
    g.add("after adapt", rng.standard_normal((2, DIM)).astype(np.float32))  # imprinted into the head
    assert_exact(g, queries)
    g.clear_adapted()
    assert not assert_exact(g, queries).adapted


def test_an_old_snapshot_stays_exact_after_the_copy_moved_on(tmp_path, rng):
    g = Gallery.open(tmp_path / "g", embedding_dim=DIM)
    g.matching = "compact"
    for c in range(30):
        g.add(f"c{c}", rng.standard_normal((1, DIM)).astype(np.float32))
    q = rng.standard_normal((1, DIM)).astype(np.float32)
    old = g.snapshot()
    before = old.host_topk(q, 3)
    g.remove("c0")  # the copy swaps a row in when the next snapshot is made
    g.snapshot().host_topk(q, 3)
    after = old.host_topk(q, 3)  # scored from the old snapshot's own rows now
    np.testing.assert_array_equal(after[0], before[0])
    assert [old.labels[j] for j in after[1][0]] == [old.labels[j] for j in before[1][0]]


def test_another_processes_changes_reach_the_compact_copy(tmp_path, rng):
    path = tmp_path / "g"
    reader = Gallery.open(path, embedding_dim=DIM)
    reader.matching = "compact"
    writer = Gallery.open(path, embedding_dim=DIM)
    q = rng.standard_normal((2, DIM)).astype(np.float32)
    for c in range(20):
        writer.add(f"c{c}", rng.standard_normal((1, DIM)).astype(np.float32))
    assert len(assert_exact(reader, q)) == 20
    writer.remove("c3")
    writer.add("c7", rng.standard_normal((2, DIM)).astype(np.float32))
    writer.add("late", rng.standard_normal((1, DIM)).astype(np.float32))
    snap = assert_exact(reader, q)
    assert len(snap) == 20 and "c3" not in snap.labels and len(snap.compact) == 20


def test_small_galleries_stay_on_float32_unless_asked(tmp_path, rng, monkeypatch):
    g = Gallery.open(tmp_path / "g", embedding_dim=DIM)
    g.add("a", rng.standard_normal((1, DIM)).astype(np.float32))
    assert g.snapshot().compact is None  # auto: 96 bytes of classes
    monkeypatch.setenv("METAEDGE_MATCHING", "compact")
    g.add("b", rng.standard_normal((1, DIM)).astype(np.float32))
    assert g.snapshot().compact is not None
    g.matching = "fp32"
    g.add("c", rng.standard_normal((1, DIM)).astype(np.float32))
    assert g.snapshot().compact is None


def test_edge_classifier_predictions_are_the_same_with_either_matching(rng):
    from tests.runtime.doubles import Glyphs, make_classifier
    glyphs = Glyphs(12, size=16, seed=4)
    shots = [glyphs.sample(c, 3) for c in range(12)]
    frames = [glyphs.sample(c, 1)[0] for c in range(12)]
    results = {}
    for matching in ("fp32", "compact"):
        clf = make_classifier(matching=matching)
        for c in range(12):
            clf.enroll(f"g{c}", shots[c])
        results[matching] = [clf.predict(f, k=3) for f in frames for _ in range(2)]  # 2nd call: the matcher
        assert (clf.gallery.snapshot().compact is not None) == (matching == "compact")
    for a, b in zip(results["fp32"], results["compact"]):
        assert a.label == b.label and [lab for lab, _ in a.topk] == [lab for lab, _ in b.topk]
        np.testing.assert_allclose([s for _, s in a.topk], [s for _, s in b.topk], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="matching"):
        make_classifier(matching="int4")
