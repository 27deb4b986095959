"""Gallery: running means, reservoir memory, copy-on-write snapshots, file round trip, corruption, atomicity."""
import gc
import json
import os
import struct
import weakref

import numpy as np
import pytest

from metaedge.runtime import gallery as gallery_mod
from metaedge.runtime.gallery import (MAX_LABEL_LENGTH, Gallery, GalleryCorruptError, GalleryError,
                                      GalleryMismatchError, GalleryVersionError, UnknownLabelError)

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


# ---------------------------------------------------------------------------------------------- files
def test_round_trip_keeps_everything(tmp_path, rng):
    g = filled(rng, classes=6, shots=4, support_cap=3, seed=9)
    g.add("class 2", rng.standard_normal((2, DIM)).astype(np.float32))
    g.set_adapted(rng.standard_normal((6, DIM)).astype(np.float32), {"steps": 5})
    g.add("late", rng.standard_normal((1, DIM)).astype(np.float32))  # imprinted, not adapted
    g.set_threshold("prototypes", 0.25)
    path = tmp_path / "g.metaedge"
    assert g.save(path) == str(path)
    h = Gallery.load(path, fingerprint=FP, embedding_dim=DIM, metric="cosine")
    assert_same_state(g, h)
    assert h.adaptation == {"steps": 5}
    assert [c.adapted for c in h.classes()] == [True] * 6 + [False]
    # continues identically after the reload (reservoir seeded by class id and shot index)
    more = rng.standard_normal((9, DIM)).astype(np.float32)
    g.add("class 4", more)
    h.add("class 4", more)
    np.testing.assert_array_equal(g.support_set()[0], h.support_set()[0])


def test_empty_gallery_round_trip(tmp_path):
    g = Gallery(DIM, "dot", FP)
    g.save(tmp_path / "e")
    h = Gallery.load(tmp_path / "e")
    assert len(h) == 0 and h.metric == "dot" and h.fingerprint == FP


def test_load_other_bundle_or_dimension_is_a_clear_error(tmp_path, rng):
    filled(rng).save(tmp_path / "g")
    with pytest.raises(GalleryMismatchError, match="another bundle"):
        Gallery.load(tmp_path / "g", fingerprint="b" * 64)
    with pytest.raises(GalleryMismatchError, match="dimension 8.*produces 16"):
        Gallery.load(tmp_path / "g", embedding_dim=16)
    with pytest.raises(GalleryMismatchError, match="metric"):
        Gallery.load(tmp_path / "g", metric="euclidean")


def _rewrite_metadata(path, **changes):
    """Edit metadata as a newer writer would (and recompute the checksum, so only the edit matters)."""
    from safetensors.numpy import load, save
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8:8 + n])["__metadata__"]
    meta.update(changes)
    tensors = load(data)
    meta["payload_sha256"] = gallery_mod._payload_digest(tensors, meta)
    open(path, "wb").write(save(tensors, metadata=meta))


def test_newer_schema_is_refused_with_upgrade_hint(tmp_path, rng):
    filled(rng).save(tmp_path / "g")
    _rewrite_metadata(tmp_path / "g", schema_version="99")
    with pytest.raises(GalleryVersionError, match="schema 99.*upgrade metaedge"):
        Gallery.load(tmp_path / "g")


@pytest.mark.parametrize("content,words", [
    (b"", "empty"), (b"\x01\x02", "truncated"), (b"hello world, this is text\n" * 3, "not a metaedge gallery"),
    (struct.pack("<Q", 20) + b'{"a": 1}', "truncated"),
])
def test_garbage_files_are_not_galleries(tmp_path, content, words):
    (tmp_path / "g").write_bytes(content)
    with pytest.raises(GalleryCorruptError, match=words):
        Gallery.load(tmp_path / "g")


def test_a_checkpoint_like_safetensors_file_is_not_a_gallery(tmp_path):
    from safetensors.numpy import save_file
    save_file({"conv.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(GalleryCorruptError, match="not a metaedge gallery.*checkpoint"):
        Gallery.load(tmp_path / "model.safetensors")


def test_every_truncation_is_detected(tmp_path, rng):
    filled(rng, classes=3, shots=2).save(tmp_path / "g")
    data = (tmp_path / "g").read_bytes()
    for cut in sorted(set(np.linspace(0, len(data) - 1, 60).astype(int).tolist() + [len(data) - 1, 7, 8, 9])):
        (tmp_path / "t").write_bytes(data[:cut])
        with pytest.raises(GalleryCorruptError, match="truncated|empty"):
            Gallery.load(tmp_path / "t")
    (tmp_path / "t").write_bytes(data + b"\0")
    with pytest.raises(GalleryCorruptError, match="unexpected bytes"):
        Gallery.load(tmp_path / "t")


def test_every_flipped_byte_is_detected(tmp_path, rng):
    filled(rng, classes=3, shots=2).save(tmp_path / "g")
    data = (tmp_path / "g").read_bytes()
    positions = sorted(set(rng.integers(0, len(data), 150).tolist() + list(range(8)) + [len(data) - 1]))
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        (tmp_path / "f").write_bytes(bytes(flipped))
        with pytest.raises(GalleryError):
            Gallery.load(tmp_path / "f")
    # and a flip in the tensor data names the checksum
    flipped = bytearray(data)
    flipped[-3] ^= 0x01
    (tmp_path / "f").write_bytes(bytes(flipped))
    with pytest.raises(GalleryCorruptError, match="checksum mismatch"):
        Gallery.load(tmp_path / "f")


def test_failed_save_leaves_the_previous_file_and_no_temp(tmp_path, rng, monkeypatch):
    g = filled(rng)
    path = tmp_path / "g"
    g.save(path)
    good = path.read_bytes()
    g.add("extra", rng.standard_normal((1, DIM)).astype(np.float32))

    import safetensors.numpy as stn

    def dies_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stn, "save_file", dies_half_way)
    with pytest.raises(OSError, match="No space"):
        g.save(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["g"]


def test_failed_autosave_rolls_back_the_change_in_memory(tmp_path, rng, monkeypatch):
    path = tmp_path / "g"
    g = Gallery.open(path, embedding_dim=DIM, fingerprint=FP, autosave=True)
    g.add("a", rng.standard_normal((2, DIM)).astype(np.float32))
    assert Gallery.load(path).labels == ["a"]
    import safetensors.numpy as stn
    monkeypatch.setattr(stn, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        g.add("b", rng.standard_normal((2, DIM)).astype(np.float32))
    with pytest.raises(OSError):
        g.remove("a")
    assert g.labels == ["a"] and Gallery.load(path).labels == ["a"]


def test_nan_state_is_never_written(tmp_path, rng):
    g = filled(rng)
    g.save(tmp_path / "g")
    good = (tmp_path / "g").read_bytes()
    with pytest.raises(ValueError, match="NaN"):
        g.set_adapted(np.full((5, DIM), np.nan, np.float32))
    g._state.protos.base[0, 0] = np.nan  # simulate memory corruption behind the API's back
    with pytest.raises(GalleryError, match="refusing to save"):
        g.save(tmp_path / "g")
    assert (tmp_path / "g").read_bytes() == good


def test_save_through_a_symlink_replaces_the_target(tmp_path, rng):
    real = tmp_path / "real.metaedge"
    filled(rng, classes=1).save(real)
    (tmp_path / "link").symlink_to(real)
    filled(rng, classes=2).save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert len(Gallery.load(real)) == 2


def test_temp_files_of_dead_writers_are_cleaned_up(tmp_path, rng):
    dead = tmp_path / ".g.999999999.deadbeef.tmp"  # pid that cannot exist
    alive = tmp_path / f".g.{os.getpid()}.cafebabe.tmp"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    filled(rng).save(tmp_path / "g")
    assert not dead.exists() and alive.exists()


def test_open_creates_lazily_and_loads_existing(tmp_path, rng):
    path = tmp_path / "new.metaedge"
    g = Gallery.open(path, embedding_dim=DIM, fingerprint=FP, autosave=False)
    assert not path.exists()
    g.add("a", rng.standard_normal((1, DIM)).astype(np.float32))
    assert not path.exists()
    g.save()
    h = Gallery.open(path, embedding_dim=DIM, fingerprint=FP)
    assert h.labels == ["a"] and h.autosave
    with pytest.raises(GalleryMismatchError):
        Gallery.open(path, embedding_dim=DIM, fingerprint="c" * 64)


def test_labels_are_unicode_normalised_for_lookups(rng):
    g = Gallery(DIM)
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    g.add(decomposed, rng.standard_normal((1, DIM)).astype(np.float32))
    g.add(composed, rng.standard_normal((1, DIM)).astype(np.float32))  # the same label: more shots
    assert g.labels == [composed] and g.counts().tolist() == [2]
    assert decomposed in g and g.class_info(decomposed).shots == 2
    g.rename(decomposed, "tea")
    assert g.labels == ["tea"]
