#!/usr/bin/env python
"""Gallery benchmark: the SQLite store against the old single-file format, and what sharing costs predict.

At 10 / 1,000 / 10,000 / 100,000 classes (dimension 512, 5 stored shots each), in the same run:
- a change: enroll a new class (5 shots), 5 more shots of a class, rename, forget - in the store (one durable
  transaction: WAL, synchronous=FULL) and in the old format (what metaedge 0.1 did per change: the whole gallery
  rewritten to a temporary file, fsynced, renamed), with the bare SQLite commit of the same bytes as the floor;
- open: ``Gallery.load`` of the store (every row checked) and of the old file (read + checksum + checks);
- catch-up: a classifier's first ``snapshot()`` after another process enrolled one class;
- predict's added cost of the cross-process version check, per call: ``snapshot()`` of a store gallery (counter
  read) vs an in-memory one vs the bare attribute read, with ``PRAGMA data_version`` (the alternative we did not
  take) beside them; and whole ``EdgeClassifier.predict`` calls with a store vs an in-memory gallery, interleaved.

    python tools/bench/gallery.py                 # table + out/bench/gallery.json
    python tools/bench/gallery.py --quick         # 10 and 1,000 classes only
Targets (issue 13 / the brief): a change at 10,000 classes <= 1 ms p50 (plus the network); predict's version
check <= 1 us at 1,000 classes. Numbers from a shared machine are indicative (fsync latency varies most).
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import timeit

import numpy as np


from metaedge.bench import common

DIM = 512
SHOTS = 5
SIZES = (10, 1_000, 10_000, 100_000)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _p50(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def _old_format_bytes(g) -> bytes:
    """The gallery as metaedge 0.1 wrote it: every tensor of every class, checksummed (schema 1)."""
    import json

    from metaedge import __version__
    from metaedge.runtime.store.container import write_container
    t = g.training_set()
    rec = g._view().rec
    tensors = {"prototypes": t.prototypes, "counts": np.array(rec["shots"]), "uids": t.uids,
               "enrolled_at": np.array(rec["enrolled_at"]), "updated_at": np.array(rec["updated_at"]),
               "support": t.support, "support_labels": t.support_labels}
    state = {"names": list(t.labels), "next_uid": int(t.uids.max()) + 1 if len(t.uids) else 0,
             "support_cap": g.support_cap, "seed": g.seed, "thresholds": g.thresholds, "adaptation": None,
             "created_at": g.created_at, "saved_at": time.time()}
    meta = {"format": "metaedge.gallery", "schema_version": "1", "bundle_fingerprint": g.fingerprint or "",
            "metric": g.metric, "embedding_dim": str(DIM), "metaedge_version": __version__,
            "state": json.dumps(state)}
    return write_container(tensors, meta)


def fill(g, classes: int, rng) -> None:
    with g.transaction():
        for i in range(len(g), classes):
            g.add(f"class {i}", rng.standard_normal((SHOTS, DIM)).astype(np.float32))


def bench_size(classes: int, directory: str, reps: int, old_reps: int, rng) -> dict:
    from metaedge.runtime.fileio import atomic_write
    from metaedge.runtime.gallery import Gallery
    from metaedge.runtime.store.legacy import read_legacy
    path = os.path.join(directory, f"g{classes}.metaedge")
    g = Gallery.open(path, embedding_dim=DIM, metric="euclidean", fingerprint="bench-" + "0" * 58,
                     support_cap=SHOTS)
    start = time.perf_counter()
    fill(g, classes, rng)
    fill_s = time.perf_counter() - start
    g.snapshot()
    shots = rng.standard_normal((SHOTS, DIM)).astype(np.float32)
    changes = {"enroll new class": lambda i: g.add(f"new {i}", shots),
               "enroll 5 more shots": lambda i: g.add(f"class {i % classes}", shots),
               "rename": lambda i: g.rename(f"new {i}", f"renamed {i}"),
               "forget": lambda i: g.remove(f"renamed {i}")}
    row = {"classes": classes, "fill_s": fill_s, "store_mib": os.path.getsize(path) / 2**20}
    # the floor: one bare SQLite transaction writing the same bytes (a 2 KiB class row, a 10 KiB support row),
    # interleaved with the changes so that both see the same disk (fsync latency drifts on a shared machine)
    conn = sqlite3.connect(os.path.join(directory, f"floor{classes}.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (a BLOB, b BLOB)")
    blob_a, blob_b = bytes(4 * DIM), bytes(4 * DIM * SHOTS)

    def floor(i):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (blob_a, blob_b))
        conn.execute("COMMIT")
    samples = {name: [] for name in ["sqlite commit floor", *changes]}
    cpu = {name: [] for name in samples}
    for i in range(reps):
        for name, change in (("sqlite commit floor", floor), *changes.items()):
            g.snapshot()  # a predicting app holds the current snapshot: changes must not write into it
            t0, c0 = time.perf_counter(), time.process_time()
            change(i)
            samples[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)  # what the change computes, without waiting for the disk
    conn.close()
    for name, values in samples.items():
        key = f"{name}" if name.startswith("sqlite") else f"store {name}"
        row[f"{key} ms"] = _p50(values)
        row[f"{key} cpu ms"] = _p50(cpu[name])
    # the old format: every change rewrote the whole file
    old_path = os.path.join(directory, f"old{classes}.metaedge")
    samples = []
    for i in range(old_reps):
        t0 = time.perf_counter()
        atomic_write(old_path, _old_format_bytes(g))
        samples.append(time.perf_counter() - t0)
    row["old format change ms"] = _p50(samples)
    row["old_mib"] = os.path.getsize(old_path) / 2**20
    row["speedup_enroll_vs_old_format"] = row["old format change ms"] / row["store enroll new class ms"]
    # open
    samples = []
    for _ in range(max(1, min(5, reps // 4))):
        t0 = time.perf_counter()
        h = Gallery.load(path)
        samples.append(time.perf_counter() - t0)
        assert len(h) == len(g)
        h.close()
    row["store open ms"] = _p50(samples)
    samples = []
    for _ in range(max(1, min(3, old_reps))):
        t0 = time.perf_counter()
        read_legacy(old_path)
        samples.append(time.perf_counter() - t0)
    row["old format open ms"] = _p50(samples)
    os.unlink(old_path)
    # catch-up: another instance (another process, in effect) enrolled one class
    other = Gallery.load(path)
    other.snapshot()
    samples = []
    for i in range(max(3, reps // 4)):
        g.add(f"seen {i}", shots)
        t0 = time.perf_counter()
        snap = other.snapshot()
        samples.append(time.perf_counter() - t0)
        assert snap.labels[-1] == f"seen {i}"
    row["catch-up after 1 enroll ms"] = _p50(samples)
    other.close()
    g.close()
    return row


def bench_version_check(directory: str, rng) -> dict:
    """Per-call cost of finding out whether another process changed the gallery, at 1,000 classes."""
    from metaedge.runtime.gallery import Gallery
    from metaedge.bench.projection import make_classifier
    stored = Gallery.open(os.path.join(directory, "check.metaedge"), embedding_dim=32)
    memory = Gallery(32)
    for g in (stored, memory):
        with g.transaction():
            for i in range(1000):
                g.add(f"c{i}", rng.standard_normal((2, 32)).astype(np.float32))
    stored.snapshot(), memory.snapshot()
    state = memory._state
    conn = sqlite3.connect(os.path.join(directory, "check.metaedge"))
    n = 300_000
    out = {}
    for name, fn in (("bare attribute read (state.matrix)", lambda: state.matrix),
                     ("snapshot() in-memory gallery", memory.snapshot),
                     ("snapshot() store gallery (change counter)", stored.snapshot),
                     ("PRAGMA data_version (not used)", lambda: conn.execute("PRAGMA data_version").fetchone())):
        best = min(timeit.repeat(fn, number=n if "PRAGMA" not in name else n // 20, repeat=5))
        out[name] = best / (n if "PRAGMA" not in name else n // 20) * 1e6
    conn.close()
    out["added by the version check us"] = (out["snapshot() store gallery (change counter)"]
                                            - out["snapshot() in-memory gallery"])
    # whole predictions (test-double network, 16x16 gray frames), store vs in-memory gallery, interleaved
    frame = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    clfs = {"predict, store gallery": make_classifier(gallery=os.path.join(directory, "clf.metaedge")),
            "predict, in-memory gallery": make_classifier()}
    for clf in clfs.values():
        with clf.gallery.transaction():
            for i in range(1000):
                clf.gallery.add(f"c{i}", rng.standard_normal((2, 32)).astype(np.float32))
        clf.predict(frame)

    def many(clf):
        def run():
            for _ in range(200):
                clf.predict(frame)
        return run
    timed = common.time_interleaved({k: many(c) for k, c in clfs.items()}, repeats=30, max_seconds=20)
    for k, t in timed.items():
        out[f"{k} us"] = t["median_ms"] * 1e3 / 200
    stored.close()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="gallery sizes (classes)")
    p.add_argument("--reps", type=int, default=40, help="timed changes per kind and size (default 40)")
    p.add_argument("--old-reps", type=int, default=5, help="whole-file rewrites timed per size (default 5)")
    p.add_argument("--quick", action="store_true", help="10 and 1,000 classes, fewer repetitions")
    p.add_argument("--dir", default=None, help="where the galleries are written (default: a temporary directory "
                                               "under out/; use the device's real storage to measure it)")
    p.add_argument("--json", default=os.path.join("out", "bench", "gallery.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.reps, args.old_reps = [10, 1000], 15, 3
    rng = np.random.default_rng(0)
    base = args.dir or "out"
    os.makedirs(base, exist_ok=True)
    env = common.environment()
    rows = []
    with tempfile.TemporaryDirectory(dir=base) as d:
        for classes in args.sizes:
            log(f"gallery of {classes:,} classes ...")
            old_reps = args.old_reps if classes <= 10_000 else 1
            rows.append(bench_size(classes, d, args.reps, old_reps, rng))
            r = rows[-1]
            log(f"  enroll {r['store enroll new class ms']:.2f} ms (old format {r['old format change ms']:.1f} ms), "
                f"open {r['store open ms']:.1f} ms")
        check = bench_version_check(d, rng)
    payload = {"environment": env, "dim": DIM, "support_per_class": SHOTS, "sizes": rows, "version_check": check}
    ten_k = next((r for r in rows if r["classes"] == 10_000), None)
    payload["targets"] = {
        "enroll at 10,000 classes <= 1 ms p50 (wall: includes this disk's fsync)":
            None if ten_k is None else ten_k["store enroll new class ms"] <= 1.0,
        "what the store adds to a bare SQLite commit at 10,000 classes <= 1 ms (CPU)": None if ten_k is None
        else ten_k["store enroll new class cpu ms"] - ten_k["sqlite commit floor cpu ms"] <= 1.0,
        "version check <= 1 us at 1,000 classes": check["added by the version check us"] <= 1.0}
    common.write_json(args.json, payload)
    cols = [("classes", "classes", "{:,}")] + [(k, k.replace(" ms", "").replace("store ", ""), "{:.2f}") for k in (
        "store enroll new class ms", "store enroll new class cpu ms", "store enroll 5 more shots ms",
        "store enroll 5 more shots cpu ms", "store rename ms", "store forget ms", "store forget cpu ms",
        "sqlite commit floor ms", "sqlite commit floor cpu ms", "old format change ms",
        "catch-up after 1 enroll ms", "store open ms", "old format open ms")] + [
        ("speedup_enroll_vs_old_format", "enroll speedup", "{:.0f}x"),
                                  ("store_mib", "store MiB", "{:.1f}"), ("old_mib", "old MiB", "{:.1f}")]
    common.print_table(rows, cols, title=f"gallery changes and opens (ms, p50; dim {DIM}, {SHOTS} stored shots per "
                                         f"class; 'cpu': the process's CPU time, i.e. without waiting for fsync)")
    print("\npredict's cross-process version check (us per call, 1,000 classes):")
    for k, v in check.items():
        print(f"  {k:<45} {v:8.3f}")
    for name, ok in payload["targets"].items():
        print(f"target {name}: {'-' if ok is None else 'PASS' if ok else 'FAIL'}")
    print(f"(JSON: {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
