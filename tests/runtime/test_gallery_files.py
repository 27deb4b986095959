"""Gallery files as hostile input and as history. Whatever a gallery file holds, opening it gives exactly what was
written or a GalleryError naming the problem - never silently other data; every field is range-checked, so what
loads can be changed and written back. Old single-file galleries open read-only and convert exactly; class packs
move classes between galleries of one bundle; files are created with the umask's permissions."""
import json
import os
import random
import shlex
import shutil
import sqlite3
import struct
import textwrap
import time

import numpy as np
import pytest

from metaedge.runtime.gallery import (Gallery, GalleryCorruptError, GalleryError, GalleryMismatchError,
                                      GalleryReadOnlyError, GalleryVersionError, LabelConflictError)
from metaedge.runtime.store import db
from metaedge.runtime.store.container import payload_digest
from tests.runtime.fs import in_small_tmpfs, within

FP = "a" * 64
DIM = 8
DATA = os.path.join(os.path.dirname(__file__), "data")
LEGACY = os.path.join(DATA, "legacy_v1.metaedge")


def stored(path, rng, classes=5, shots=3, **kw) -> Gallery:
    g = Gallery.open(path, embedding_dim=DIM, fingerprint=FP, support_cap=kw.pop("support_cap", 3), **kw)
    for c in range(classes):
        g.add(f"class {c}", rng.standard_normal((shots, DIM)).astype(np.float32))
    return g


def content(g: Gallery):
    """Everything a gallery holds, comparable."""
    return (g.labels, g.prototypes().tobytes(), g.counts().tolist(), g.thresholds, g.adaptation,
            None if g.adapted_weights() is None else g.adapted_weights().tobytes(),
            [c.to_dict() for c in g.classes()], [(e.op, e.label, e.shots, e.actor) for e in g.history()],
            g.support_set()[0].tobytes(), g.support_set()[1].tolist())


def only_the_database(path):
    for suffix in ("-wal", "-shm", "-changes"):
        if os.path.exists(str(path) + suffix):
            os.unlink(str(path) + suffix)


# ------------------------------------------------------------------------------------------ not galleries
@pytest.mark.parametrize("data,words", [
    (b"", "empty"), (b"\x01\x02", "truncated"), (b"hello world, this is text\n" * 3, "not a metaedge.gallery"),
    (struct.pack("<Q", 20) + b'{"a": 1}', "truncated")])
def test_garbage_files_are_not_galleries(tmp_path, data, words):
    (tmp_path / "g").write_bytes(data)
    with pytest.raises(GalleryCorruptError, match=words):
        Gallery.load(tmp_path / "g")


def test_a_checkpoint_like_safetensors_file_is_not_a_gallery(tmp_path):
    from safetensors.numpy import save_file
    save_file({"conv.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(GalleryCorruptError, match="not a metaedge.gallery.*checkpoint"):
        Gallery.load(tmp_path / "model.safetensors")


def test_other_sqlite_databases_and_foreign_schema_objects_are_refused(tmp_path, rng):
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    with pytest.raises(GalleryCorruptError, match="not a metaedge gallery"):
        Gallery.load(tmp_path / "other.db")
    stored(tmp_path / "g", rng).close()
    conn = sqlite3.connect(tmp_path / "g")
    conn.execute("CREATE TRIGGER sneaky AFTER INSERT ON classes BEGIN DELETE FROM classes; END")
    conn.commit()
    conn.close()
    with pytest.raises(GalleryCorruptError, match="unexpected trigger 'sneaky'"):
        Gallery.load(tmp_path / "g")


def test_a_newer_schema_is_refused_with_an_upgrade_hint(tmp_path, rng):
    stored(tmp_path / "g", rng).close()
    conn = sqlite3.connect(tmp_path / "g")
    conn.execute(f"PRAGMA user_version={db.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(GalleryVersionError, match=f"schema {db.SCHEMA_VERSION + 1}.*upgrade metaedge"):
        Gallery.load(tmp_path / "g")


def test_truncations_and_flipped_bytes_are_detected_or_change_nothing(tmp_path, rng):
    g = stored(tmp_path / "g", rng, classes=6)
    g.set_adapted(rng.standard_normal((6, DIM)).astype(np.float32), {"steps": 2})
    g.set_threshold("prototypes", 0.3)
    g.close()  # the last connection merges the WAL into the file
    only_the_database(tmp_path / "g")
    data = (tmp_path / "g").read_bytes()
    with Gallery.load(tmp_path / "g") as ref:
        want = content(ref)
    only_the_database(tmp_path / "g")
    outcomes = {"refused": 0, "same": 0}
    damaged = [data[:cut] for cut in range(0, len(data), 331)]
    for pos in random.Random(0).sample(range(len(data)), 200):
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        damaged.append(bytes(flipped))
    for i, bad in enumerate(damaged):
        path = tmp_path / f"d{i}"
        path.write_bytes(bad)
        try:
            with Gallery.load(path) as h:
                got = content(h)
        except GalleryError:
            outcomes["refused"] += 1
            continue
        assert got == want, f"damage {i} loaded as other data"  # never silently different contents
        outcomes["same"] += 1
    # bytes in unused space (page padding, free pages) may change harmlessly; damage to data is always refused
    assert outcomes["refused"] > 0 and outcomes["refused"] + outcomes["same"] == len(damaged), outcomes


def _tamper(path, sql, params=(), recompute=True):
    """Change rows behind the gallery's back, recomputing their checksums: only the range checks can object."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(sql, params)
    if recompute:
        for key, value in conn.execute("SELECT key, value FROM meta").fetchall():
            conn.execute("UPDATE meta SET crc=? WHERE key=?", (db._crc(f"{key}={value}"), key))
        for row in conn.execute("SELECT uid, label, shots, enrolled_at, updated_at, fresh, support, prototype, "
                                "adapted FROM classes").fetchall():
            conn.execute("UPDATE classes SET crc=? WHERE uid=?", (db._class_crc(*row), row[0]))
        for uid, rows, blob in conn.execute("SELECT uid, rows, embeddings FROM support").fetchall():
            conn.execute("UPDATE support SET crc=? WHERE uid=?", (db._crc(f"{uid}|{rows}", blob), uid))
    conn.close()


@pytest.mark.parametrize("sql,params,words", [
    ("UPDATE meta SET value='{\"prototypes\": NaN, \"adapted\": null}' WHERE key='thresholds'", (), "thresholds"),
    ("UPDATE meta SET value=? WHERE key='next_uid'", (str(2 ** 70),), "next_uid"),
    ("UPDATE meta SET value='-1' WHERE key='generation'", (), "generation"),
    ("UPDATE meta SET value='{\"heads\": {\"adapted\": {\"how\": \"guessed\"}}, \"calibration\": null}' "
     "WHERE key='open_set'", (), "open_set: head 'adapted'"),
    ("UPDATE meta SET value='{\"heads\": {}, \"calibration\": {\"negatives\": \"others\", \"target_fpr\": 2}}' "
     "WHERE key='open_set'", (), "calibration: target_fpr"),
    ("DELETE FROM meta WHERE key='open_set'", (), "'open_set' is missing"),
    ("UPDATE meta SET value='0' WHERE key='embedding_dim'", (), "embedding_dim"),
    ("UPDATE meta SET value='manhattan' WHERE key='metric'", (), "metric"),
    ("UPDATE meta SET value='-5' WHERE key='seed'", (), "seed"),
    ("UPDATE meta SET value=? WHERE key='support_cap'", (str(10 ** 9),), "support_cap"),
    ("UPDATE meta SET value='\"x\"' WHERE key='adaptation'", (), "adaptation"),
    ("UPDATE meta SET value=? WHERE key='bundle_fingerprint'", ("x" * 300,), "bundle_fingerprint"),
    ("UPDATE meta SET value='1e300' WHERE key='created_at'", (), "created_at"),
    ("DELETE FROM meta WHERE key='metric'", (), "'metric' is missing"),
    ("UPDATE classes SET shots=? WHERE uid=1", (2 ** 63 - 1,), "shots"),
    ("UPDATE classes SET shots=0 WHERE uid=1", (), "shots"),
    ("UPDATE classes SET label='a\nb' WHERE uid=1", (), "invalid label"),
    ("UPDATE classes SET label=? WHERE uid=1", ("cafe\u0301",), "NFC"),
    ("UPDATE classes SET label='class 0' WHERE uid=1", (), "UNIQUE|duplicate"),
    ("UPDATE classes SET prototype=zeroblob(12) WHERE uid=1", (), "expected blobs of 32"),
    ("UPDATE classes SET prototype=? WHERE uid=1", (np.full(DIM, np.nan, np.float32).tobytes(),), "non-finite"),
    ("UPDATE classes SET enrolled_at=1e300 WHERE uid=1", (), "enrolled_at"),
    ("UPDATE classes SET fresh=7 WHERE uid=1", (), "fresh"),
    ("UPDATE classes SET support=99 WHERE uid=1", (), "support"),
    ("UPDATE classes SET uid=? WHERE uid=1", (2 ** 62 + 5,), "uid|next_uid"),
    ("UPDATE classes SET prototype=? WHERE uid=1", (np.ones(DIM, np.float32).tobytes(),), "checksum"),
])
def test_out_of_range_fields_are_refused_naming_them(tmp_path, rng, sql, params, words):
    stored(tmp_path / "g", rng).close()
    try:
        _tamper(tmp_path / "g", sql, params, recompute=words != "checksum")
    except sqlite3.IntegrityError:
        return  # SQLite's own constraint refused the damage
    with pytest.raises(GalleryCorruptError, match=words):
        Gallery.load(tmp_path / "g")


@pytest.mark.parametrize("sql,params", [
    ("UPDATE support SET rows=50, embeddings=zeroblob(50*32) WHERE uid=2", ()),
    ("UPDATE support SET embeddings=? WHERE uid=2", (np.full(3 * DIM, np.inf, np.float32).tobytes(),)),
    ("UPDATE support SET embeddings=zeroblob(7) WHERE uid=2", ())])
def test_damaged_support_memories_are_refused_when_read(tmp_path, rng, sql, params):
    stored(tmp_path / "g", rng).close()
    _tamper(tmp_path / "g", sql, params)
    g = Gallery.load(tmp_path / "g")  # support is read when a change or adapt needs it
    with pytest.raises(GalleryCorruptError, match="class 2: .*support"):
        g.training_set()
    with pytest.raises(GalleryCorruptError, match="support"):
        g.add("class 2", rng.standard_normal((1, DIM)).astype(np.float32))
    assert g.check() and "class 2" in g.check()[0]


def test_whatever_loads_can_be_changed_exported_and_checked(tmp_path, rng):
    shutil.copy(LEGACY, tmp_path / "old.metaedge")
    path = Gallery.migrate(tmp_path / "old.metaedge", tmp_path / "new.metaedge")
    g = Gallery.load(path)
    assert g.check() == []
    g.add("class 0", rng.standard_normal((2, DIM)).astype(np.float32))
    g.add("fresh", rng.standard_normal((2, DIM)).astype(np.float32))
    g.rename("late", "later")
    g.remove("class 4")
    g.set_adapted(rng.standard_normal((len(g), DIM)).astype(np.float32))
    g.clear_adapted()
    assert g.export_pack(tmp_path / "all.pack") == 5
    h = Gallery(DIM, "cosine", FP, support_cap=3, path=tmp_path / "h")
    assert len(h.import_pack(tmp_path / "all.pack").added) == 5 and h.check() == []


# ------------------------------------------------------------------------------------------ special files
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_special_files_are_refused_without_blocking(tmp_path, rng):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(GalleryError, match="FIFO"):
        within(5, lambda: Gallery.load(tmp_path / "fifo"))
    with pytest.raises(GalleryError, match="FIFO"):
        within(5, lambda: Gallery.migrate(tmp_path / "fifo"))
    g = stored(tmp_path / "g", rng)
    with pytest.raises(GalleryError, match="FIFO"):
        within(5, lambda: g.import_pack(tmp_path / "fifo"))
    g.close()
    os.unlink(str(tmp_path / "g") + "-changes")
    os.mkfifo(str(tmp_path / "g") + "-changes")
    with pytest.raises(GalleryError, match="change counter must be a regular file"):
        within(5, lambda: Gallery.load(tmp_path / "g"))
    with pytest.raises(GalleryError, match="directory"):
        Gallery.load(tmp_path)
    with pytest.raises(GalleryError, match="character device"):
        within(5, lambda: Gallery.load("/dev/zero"))


def _legacy_with(tmp_path, *, state=None, meta=None, tensors=None):
    """The schema-1 fixture with edited metadata/tensors and a recomputed checksum (only the edit can object)."""
    from safetensors.numpy import load, save
    data = open(LEGACY, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])["__metadata__"]
    arrays = dict(load(data))
    st = json.loads(header["state"])
    st.update(state or {})
    header["state"] = json.dumps(st, allow_nan=True)
    header.update(meta or {})
    arrays.update(tensors or {})
    header["payload_sha256"] = payload_digest(arrays, header)
    path = tmp_path / "edited.metaedge"
    path.write_bytes(save(arrays, metadata=header))
    return path


def test_a_sparse_file_claiming_gigabytes_is_refused_unread(tmp_path):
    """A header consistent with its metadata (1 class, dimension 65536, a support memory of 8192 rows) makes the
    file 2 GiB long; on disk it is a few KiB. It is refused before any of it is read."""
    import resource
    c, d, m = 1, 65536, 8192
    entries = {"prototypes": ("F32", [c, d]), "counts": ("I64", [c]), "uids": ("I64", [c]),
               "enrolled_at": ("F64", [c]), "updated_at": ("F64", [c]), "support": ("F32", [m, d]),
               "support_labels": ("I64", [m])}
    header, offset = {}, 0
    for name, (dtype, shape) in entries.items():
        size = int(np.prod(shape)) * (4 if dtype == "F32" else 8)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    state = {"names": ["a"], "next_uid": 1, "support_cap": m, "seed": 0}
    header["__metadata__"] = {"format": "metaedge.gallery", "schema_version": "1", "embedding_dim": str(d),
                              "metric": "cosine", "state": json.dumps(state), "payload_sha256": "0" * 64}
    raw = json.dumps(header).encode()
    path = tmp_path / "sparse.metaedge"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    assert os.path.getsize(path) > 2 ** 31 and os.stat(path).st_blocks * 512 < 2 ** 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(GalleryCorruptError, match="sparse"):
        Gallery.load(path)
    assert time.perf_counter() - start < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: nothing was read


def test_deeply_nested_json_in_a_file_header_is_refused(tmp_path):
    raw = b"[" * 100_000 + b"]" * 100_000
    (tmp_path / "deep").write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(GalleryCorruptError, match="nested more than"):
        Gallery.load(tmp_path / "deep")
    path = _legacy_with(tmp_path, meta={"state": "[" * 50_000 + "]" * 50_000})
    with pytest.raises(GalleryCorruptError, match="nested more than"):
        Gallery.load(path)


# ------------------------------------------------------------------------------------------ old gallery files
def _expected():
    with open(os.path.join(DATA, "legacy_v1.expected.json")) as f:
        return json.load(f)


def _assert_holds_the_fixture(g: Gallery):
    want = _expected()
    assert g.labels == want["labels"] and g.counts().tolist() == want["counts"]
    np.testing.assert_array_equal(g.prototypes(), np.array(want["prototypes"], np.float32))
    np.testing.assert_array_equal(g.adapted_weights(), np.array(want["adapted_weights"], np.float32))
    support, labels = g.support_set()
    np.testing.assert_array_equal(support, np.array(want["support"], np.float32))
    assert labels.tolist() == want["support_labels"]
    assert g.thresholds == want["thresholds"] and g.adaptation == want["adaptation"]
    assert [c.to_dict() for c in g.classes()] == want["classes"]
    assert (g.support_cap, g.seed, g.fingerprint) == (want["support_cap"], want["seed"], want["fingerprint"])


def test_an_old_gallery_file_opens_read_only_with_exactly_what_it_held(tmp_path, rng):
    g = Gallery.load(LEGACY)
    assert g.legacy and g.readonly
    _assert_holds_the_fixture(g)
    for change in (lambda: g.add("x", rng.standard_normal((1, DIM)).astype(np.float32)),
                   lambda: g.remove("late"), lambda: g.set_threshold("prototypes", 0.1)):
        with pytest.raises(GalleryReadOnlyError, match="metaedge classes migrate"):
            change()
    assert g.snapshot().labels == tuple(_expected()["labels"])


def test_migrate_in_place_keeps_a_backup_and_carries_everything_over(tmp_path, rng):
    path = tmp_path / "classes.metaedge"
    shutil.copy(LEGACY, path)
    original = path.read_bytes()
    assert Gallery.migrate(path) == str(path)
    assert (tmp_path / "classes.metaedge.v1-backup").read_bytes() == original
    g = Gallery.load(path)
    assert not g.legacy
    _assert_holds_the_fixture(g)
    assert [e.op for e in g.history()] == ["create", "migrate"]
    g.add("class 0", rng.standard_normal((2, DIM)).astype(np.float32))  # a store now
    with pytest.raises(GalleryError, match="already a gallery store"):
        Gallery.migrate(path)


def test_migrate_to_another_path_restamps_the_fingerprint(tmp_path):
    out = Gallery.migrate(LEGACY, tmp_path / "new.metaedge", fingerprint="f" * 64)
    g = Gallery.load(out)
    assert g.fingerprint == "f" * 64 and g.history()[-1].detail["fingerprint_from"] == "a" * 64
    with pytest.raises(ValueError, match="exists"):
        Gallery.migrate(LEGACY, out)


@pytest.mark.parametrize("edit,words", [
    (dict(state={"next_uid": 2 ** 70}), "next_uid"),
    (dict(state={"thresholds": {"prototypes": float("nan")}}), "NaN is not valid JSON"),
    (dict(state={"names": ["class 0", "class 2", "\ud800", "class 4", "late"]}), "lone surrogate"),
    (dict(state={"names": ["class 0", "class 2", "a\tb", "class 4", "late"]}), "control characters"),
    (dict(state={"support_cap": -1}), "support_cap"),
    (dict(state={"seed": -1}), "seed"),
    (dict(state={"created_at": 1e300}), "created_at"),
    (dict(meta={"metric": "manhattan"}), "metric"),
    (dict(tensors={"counts": np.array([4, 6, 2 ** 63 - 1, 4, 1], np.int64)}), "shots"),
    (dict(tensors={"updated_at": np.array([1.0, 2.0, float("inf"), 4.0, 5.0])}), "updated_at"),
    (dict(tensors={"uids": np.array([0, 2, 3, 4, 4], np.int64)}), "class ids"),
    (dict(meta={"schema_version": "7"}), "schema 7.*upgrade metaedge"),
])
def test_old_files_with_out_of_range_fields_are_refused_naming_them(tmp_path, edit, words):
    with pytest.raises(GalleryError, match=words):
        Gallery.load(_legacy_with(tmp_path, **edit))


def test_every_truncation_and_flip_of_an_old_file_is_detected(tmp_path, rng):
    data = open(LEGACY, "rb").read()
    for cut in sorted(set(np.linspace(0, len(data) - 1, 40).astype(int).tolist() + [7, 8, 9])):
        (tmp_path / "t").write_bytes(data[:cut])
        with pytest.raises(GalleryCorruptError, match="truncated|empty"):
            Gallery.load(tmp_path / "t")
    (tmp_path / "t").write_bytes(data + b"\0")
    with pytest.raises(GalleryCorruptError, match="unexpected bytes"):
        Gallery.load(tmp_path / "t")
    for pos in sorted(set(rng.integers(0, len(data), 80).tolist() + list(range(8)) + [len(data) - 1])):
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        (tmp_path / "f").write_bytes(bytes(flipped))
        with pytest.raises(GalleryError):
            Gallery.load(tmp_path / "f")


# ------------------------------------------------------------------------------------------ class packs
def test_class_packs_move_classes_between_galleries(tmp_path, rng):
    a = stored(tmp_path / "a", rng, classes=4)
    assert a.export_pack(tmp_path / "two.pack", ["class 1", "class 3"]) == 2
    b = Gallery(DIM, "cosine", FP, support_cap=3, path=tmp_path / "b")
    b.actor = "fleet sync"
    report = b.import_pack(tmp_path / "two.pack")
    assert report.added == ["class 1", "class 3"] and b.labels == ["class 1", "class 3"]
    for label in b.labels:
        i, j = a.labels.index(label), b.labels.index(label)
        np.testing.assert_array_equal(a.prototypes()[i], b.prototypes()[j])
        assert a.classes()[i].to_dict() == b.classes()[j].to_dict()
    sa, la = a.support_set()
    sb, lb = b.support_set()
    np.testing.assert_array_equal(sb[lb == 0], sa[la == 1])
    again = b.import_pack(tmp_path / "two.pack")  # importing twice changes nothing
    assert again.unchanged == ["class 1", "class 3"] and not again.added and len(b) == 2
    assert [(e.op, e.label, e.actor) for e in b.history()[-2:]] == [("import", "class 1", "fleet sync"),
                                                                      ("import", "class 3", "fleet sync")]


def test_import_conflicts_follow_the_stated_policy(tmp_path, rng):
    a = stored(tmp_path / "a", rng, classes=2, shots=4)
    a.export_pack(tmp_path / "a.pack")
    b = stored(tmp_path / "b", rng, classes=3, shots=2)  # "class 0/1" here hold other shots
    before = content(b)
    with pytest.raises(LabelConflictError, match="'class 0', 'class 1'.*nothing was imported") as exc:
        b.import_pack(tmp_path / "a.pack")
    assert exc.value.labels == ["class 0", "class 1"] and content(b) == before
    assert b.import_pack(tmp_path / "a.pack", "skip").skipped == ["class 0", "class 1"] and content(b) == before
    mine = b.prototypes()[0].astype(np.float64)
    assert b.import_pack(tmp_path / "a.pack", "merge").merged == ["class 0", "class 1"]
    assert b.counts().tolist() == [6, 6, 2]
    np.testing.assert_allclose(b.prototypes()[0], (mine * 2 + a.prototypes()[0] * 4) / 6, rtol=1e-5, atol=1e-6)
    assert b.classes()[0].support == 3  # merged memories still hold at most support_cap rows
    assert b.import_pack(tmp_path / "a.pack", "replace").replaced == ["class 0", "class 1"]
    np.testing.assert_array_equal(b.prototypes()[:2], a.prototypes())
    assert b.counts().tolist() == [4, 4, 2] and b.labels == ["class 0", "class 1", "class 2"]
    with pytest.raises(ValueError, match="on_conflict"):
        b.import_pack(tmp_path / "a.pack", "overwrite")


def test_packs_of_another_bundle_or_damaged_packs_are_refused(tmp_path, rng):
    a = stored(tmp_path / "a", rng)
    a.export_pack(tmp_path / "a.pack")
    other = Gallery(DIM, "cosine", "b" * 64)
    with pytest.raises(GalleryMismatchError, match="another bundle"):
        other.import_pack(tmp_path / "a.pack")
    with pytest.raises(GalleryMismatchError, match="dimension"):
        Gallery(DIM + 1, "cosine", FP).import_pack(tmp_path / "a.pack")
    data = (tmp_path / "a.pack").read_bytes()
    flipped = bytearray(data)
    flipped[-5] ^= 0x01
    (tmp_path / "bad.pack").write_bytes(bytes(flipped))
    with pytest.raises(GalleryCorruptError, match="checksum mismatch"):
        Gallery(DIM, "cosine", FP).import_pack(tmp_path / "bad.pack")
    (tmp_path / "short.pack").write_bytes(data[:len(data) // 2])
    with pytest.raises(GalleryCorruptError, match="truncated"):
        Gallery(DIM, "cosine", FP).import_pack(tmp_path / "short.pack")
    with pytest.raises(GalleryCorruptError, match="not a metaedge.classpack"):
        Gallery(DIM, "cosine", FP).import_pack(LEGACY)


def test_importing_into_an_adapted_gallery_imprints_the_new_classes(tmp_path, rng):
    stored(tmp_path / "a", rng, classes=2).export_pack(tmp_path / "a.pack", ["class 1"])
    b = Gallery(DIM, "cosine", FP)
    b.add("x", rng.standard_normal((2, DIM)).astype(np.float32))
    b.set_adapted(np.ones((1, DIM), np.float32))
    b.import_pack(tmp_path / "a.pack")
    assert b.labels == ["x", "class 1"] and [c.adapted for c in b.classes()] == [True, False]
    p = b.prototypes()[1]
    np.testing.assert_allclose(b.adapted_weights()[1], p / np.linalg.norm(p), rtol=1e-5)


def test_exports_are_atomic_and_leave_no_temp_files_of_dead_writers(tmp_path, rng):
    g = stored(tmp_path / "g", rng)
    dead = tmp_path / ".x.pack.999999999.deadbeef.tmp"  # a pid that cannot exist
    alive = tmp_path / f".x.pack.{os.getpid()}.cafebabe.tmp"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    g.export_pack(tmp_path / "x.pack")
    assert not dead.exists() and alive.exists()
    (tmp_path / "link.pack").symlink_to(tmp_path / "x.pack")
    g.add("more", rng.standard_normal((1, DIM)).astype(np.float32))
    g.export_pack(tmp_path / "link.pack")  # replaces the link's target, keeps the link
    assert (tmp_path / "link.pack").is_symlink()
    assert len(Gallery(DIM, "cosine", FP).import_pack(tmp_path / "x.pack").added) == 6


# ------------------------------------------------------------------------------------------ permissions
@pytest.mark.parametrize("umask,mode", [(0o027, 0o640), (0o002, 0o664)])
def test_created_files_honour_the_umask(tmp_path, rng, umask, mode):
    from metaedge.runtime.fileio import atomic_write_json
    old = os.umask(umask)
    try:
        g = stored(tmp_path / "g", rng)
        g.export_pack(tmp_path / "p.pack")
        g.save(tmp_path / "copy")
        atomic_write_json(tmp_path / "m.json", {"a": 1})
        Gallery.migrate(LEGACY, tmp_path / "migrated")
    finally:
        os.umask(old)
    for name in ("g", "g-changes", "g-wal", "g-shm", "p.pack", "copy", "m.json", "migrated"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == mode, name
    os.chmod(tmp_path / "p.pack", 0o600)  # a replaced file keeps the mode its owner gave it
    g.export_pack(tmp_path / "p.pack")
    assert os.stat(tmp_path / "p.pack").st_mode & 0o777 == 0o600


# ------------------------------------------------------------------------------------------ full disk
def test_a_full_disk_fails_the_change_and_loses_nothing():
    code = textwrap.dedent("""
        import os, sys, numpy as np
        from metaedge.runtime.gallery import Gallery, GalleryWriteError
        D = sys.argv[1]
        g = Gallery.open(D + "/g", embedding_dim=64, fingerprint="f" * 64)
        rng = np.random.default_rng(0)
        for i in range(5):
            g.add(f"c{i}", rng.standard_normal((3, 64)).astype(np.float32))
        try:
            with open(D + "/filler", "wb") as f:
                while True:
                    f.write(bytes(4096)); f.flush()
        except OSError as exc:
            print("filled:", exc.errno)
        version, labels = g.version, g.labels
        try:
            for i in range(200):
                g.add(f"x{i}", rng.standard_normal((20, 64)).astype(np.float32))
                labels, version = g.labels, g.version  # acknowledged
        except GalleryWriteError as exc:
            print("write error:", exc.errno, isinstance(exc, OSError), str(exc))
        assert g.labels == labels and g.version == version, "memory holds exactly the acknowledged changes"
        try:
            g.export_pack(D + "/all.pack")
        except GalleryWriteError as exc:
            print("export error:", exc.errno, os.path.exists(D + "/all.pack"))
        os.unlink(D + "/filler")
        g.add("after", rng.standard_normal((1, 64)).astype(np.float32))
        g.close()
        h = Gallery.load(D + "/g")
        assert h.labels == labels + ["after"], (h.labels, labels)
        assert h.check() == []
        print("acknowledged:", len(labels), "ok")
    """)
    proc = in_small_tmpfs(f'"$PY" -c {shlex.quote(code)} "$D"')
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "filled: 28" in out and "write error: 28 True" in out and "disk is full" in out, out
    assert "export error: 28 False" in out and "ok" in out, out
