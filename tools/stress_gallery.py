#!/usr/bin/env python
"""Stress tests of the shared gallery store, with real processes.

``mixed``: WORKERS processes each make OPS random changes and predictions on one gallery - enroll a new class,
enroll more shots, forget, rename, adapt, predict - each either through the Python API (an EdgeClassifier the
worker keeps open) or by running the ``metaedge`` CLI, while a reader process predicts continuously. Checked at
the end: the final gallery equals its audit trail replayed from the start; every acknowledged change is in the
trail, attributed to whoever made it, and no failed one is; and every prediction the reader started after a
change was acknowledged saw that change (it sees each change within one predict).

``kill``: WRITERS processes enroll and forget in transactions of several changes while the driver SIGKILLs
random subsets of them at random moments, ROUNDS times. After every round the gallery must open, pass
``Gallery.check()`` (every page, row and checksum), equal its audit trail replayed, hold every acknowledged
change (and at most the one change per killed writer that committed before its acknowledgement was printed),
and a long-lived reader must have caught up to exactly the same state.

    python tools/stress_gallery.py mixed --workers 4 --ops 50
    python tools/stress_gallery.py kill --writers 3 --rounds 200       # the long run

Prints a JSON summary and exits 0; prints the first violation and exits 1. The bundle for ``mixed`` is a tiny
ONNX network made on the fly (needs the ``onnx`` package) unless ``--bundle`` names one.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

if "--worker" in sys.argv or "--writer" in sys.argv or "--reader" in sys.argv:
    sys.modules["torch"] = None  # the device side must not need torch: any import of it now fails loudly

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from metaedge.runtime.gallery import Gallery  # noqa: E402

KILL_DIM = 32
KILL_FINGERPRINT = "stress-" + "5" * 57


# ---------------------------------------------------------------------------------------------- the audit replay
def replay(history) -> tuple[list[str], list[int], bool, dict[int, tuple]]:
    """The classes (labels, shots, in enrollment order) and whether the head is adapted, as the audit trail says
    they must be; and per version the label set after it (for the reader check)."""
    classes: dict[int, list] = {}
    adapted = False
    sets: dict[int, tuple] = {}
    for e in history:
        d = e.detail or {}
        if e.op == "enroll":
            if d.get("new_class"):
                classes[e.uid] = [e.label, e.shots]
            else:
                classes[e.uid][1] += e.shots
        elif e.op == "import":
            if d.get("action") == "added":
                classes[e.uid] = [e.label, e.shots]
            elif d.get("action") == "replace":
                classes[e.uid][1] = e.shots
            else:
                classes[e.uid][1] += e.shots
        elif e.op == "forget":
            del classes[e.uid]
            adapted = adapted and bool(classes)
        elif e.op == "rename":
            classes[e.uid][0] = e.label
        elif e.op == "adapt":
            adapted = True
        elif e.op in ("reset_adaptation",):
            adapted = False
        elif e.op == "clear":
            classes, adapted = {}, False
        elif e.op not in ("create", "threshold", "fingerprint"):
            raise AssertionError(f"the stress run made no {e.op!r} change (audit entry {e.seq})")
        sets[e.version] = tuple(sorted(v[0] for v in classes.values()))
    order = sorted(classes)
    return [classes[u][0] for u in order], [classes[u][1] for u in order], adapted, sets


def check_against_history(g: Gallery) -> list:
    history = g.history()
    labels, shots, adapted, _ = replay(history)
    have = list(zip(g.labels, g.counts().tolist()))
    want = list(zip(labels, shots))
    if have != want or g.adapted != adapted:
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(have, want)) if a != b][:3]
        raise AssertionError(f"the gallery is not its audit trail replayed: {len(have)} vs {len(want)} classes, "
                             f"first differences (index, gallery, trail) {diff}, adapted {g.adapted} vs {adapted}")
    return history


# ---------------------------------------------------------------------------------------------- mixed
def _images(directory: str, worker: int, count: int = 6) -> list[str]:
    from PIL import Image
    rng = np.random.default_rng(1000 + worker)
    paths = []
    for i in range(count):
        path = os.path.join(directory, f"w{worker}-{i}.png")
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def mixed_worker(gallery: str, bundle: str, worker: int, ops: int, cli_share: float, log_path: str,
                 deadline: float) -> None:
    from metaedge.runtime.classifier import EdgeClassifier
    rnd = random.Random(worker)
    images = _images(os.path.dirname(log_path), worker)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with EdgeClassifier(bundle, gallery=gallery, backend="ort-cpu") as clf, open(log_path, "w") as log:
        clf.gallery.actor = f"stress-worker-{worker}"
        for i in range(ops):
            if time.monotonic() > deadline:
                break
            labels = clf.labels
            kind = rnd.choice(["new", "new", "more", "forget", "rename", "predict", "adapt"])
            if kind != "new" and len(labels) < 3:
                kind = "new"
            label = f"w{worker}-{i}" if kind == "new" else rnd.choice(labels)
            shots = rnd.sample(images, rnd.randint(1, 3))
            via = "cli" if rnd.random() < cli_share else "api"
            record = {"i": i, "op": kind, "label": label, "via": via, "shots": len(shots)}
            try:
                if via == "api":
                    if kind in ("new", "more"):
                        clf.enroll(label, shots)
                    elif kind == "forget":
                        clf.forget(label)
                    elif kind == "rename":
                        clf.rename(label, f"w{worker}-r{i}")
                    elif kind == "adapt":
                        clf.adapt(steps=3)
                    else:
                        clf.predict(shots[0], k=3)
                    record["ok"] = True
                else:
                    argv = {"new": ["enroll", bundle, gallery, label, *shots],
                            "more": ["enroll", bundle, gallery, label, *shots],
                            "forget": ["classes", "forget", gallery, label],
                            "rename": ["classes", "rename", gallery, label, f"w{worker}-r{i}"],
                            "adapt": ["adapt", bundle, gallery, "--steps", "3", "--no-progress"],
                            "predict": ["predict", bundle, gallery, shots[0]]}[kind]
                    proc = subprocess.Popen([sys.executable, "-m", "metaedge", *argv], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    _, err = proc.communicate(timeout=120)
                    record.update(pid=proc.pid, ok=proc.returncode == 0, code=proc.returncode, error=err.strip())
                    if proc.returncode not in (0, 2):  # 2: the class was changed by another worker meanwhile
                        raise AssertionError(f"metaedge {' '.join(argv[:2])} exited {proc.returncode}: {err}")
            except (KeyError, ValueError) as exc:  # a class another worker forgot or renamed meanwhile
                record.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            record["t"] = time.monotonic()
            log.write(json.dumps(record) + "\n")
            log.flush()


def mixed_reader(gallery: str, bundle: str, log_path: str, stop_path: str, deadline: float) -> None:
    from metaedge.runtime.classifier import EdgeClassifier, EmptyGalleryError
    frame = np.random.default_rng(7).integers(0, 256, (16, 16), dtype=np.uint8)
    with EdgeClassifier(bundle, gallery=gallery, backend="ort-cpu") as clf, open(log_path, "w") as log:
        while not os.path.exists(stop_path) and time.monotonic() < deadline:
            start = time.monotonic()
            try:
                labels = sorted(lab for lab, _ in clf.predict(frame, k=100000).topk)
            except EmptyGalleryError:
                labels = []
            log.write(json.dumps({"t": start, "labels": labels}) + "\n")
            time.sleep(0.01)


def _tiny_bundle(directory: str) -> str:
    from tests.runtime.bundles import make_bundle
    return str(make_bundle(os.path.join(directory, "bundle")))


def mixed(directory: str, workers: int = 4, ops: int = 50, cli_share: float = 0.25, seconds: float = 300,
          bundle: str | None = None) -> dict:
    bundle = bundle or _tiny_bundle(directory)
    gallery = os.path.join(directory, "shared.metaedge")
    deadline = time.monotonic() + seconds
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    me = [sys.executable, os.path.abspath(__file__)]
    stop = os.path.join(directory, "stop")
    reader = subprocess.Popen(me + ["--reader", gallery, bundle, os.path.join(directory, "reader.log"), stop,
                                    str(seconds)], env=env)
    procs = [subprocess.Popen(me + ["--worker", gallery, bundle, str(w), str(ops), str(cli_share),
                                    os.path.join(directory, f"worker{w}.log"), str(seconds)], env=env)
             for w in range(workers)]
    started = time.perf_counter()
    try:
        for p in procs:
            if p.wait(timeout=max(1.0, deadline - time.monotonic() + 30)) != 0:
                raise AssertionError(f"a worker failed (exit {p.returncode})")
    finally:
        open(stop, "w").close()
        for p in procs + [reader]:
            if p.poll() is None:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    raise AssertionError("a stress process did not stop in time") from None
    if reader.returncode != 0:
        raise AssertionError(f"the reader failed (exit {reader.returncode})")
    g = Gallery.load(gallery)
    history = check_against_history(g)
    problems = g.check()
    if problems:
        raise AssertionError(f"the gallery fails its check: {problems}")
    # every acknowledged change is in the trail under its actor, and no failed one is
    acked: list[tuple[float, int]] = []  # (acknowledgement time, version of the change)
    counts = {"api": 0, "cli": 0, "failed": 0, "changes": 0}
    for w in range(workers):
        records = [json.loads(line) for line in open(os.path.join(directory, f"worker{w}.log"))]
        mine = [e for e in history if e.actor == f"stress-worker-{w}"]
        api_changes = [r for r in records if r["via"] == "api" and r["ok"] and r["op"] != "predict"]
        if [(e.op, e.label) for e in mine] != [(_op(r["op"]), r["label"] if r["op"] != "rename" else
                                                f"w{w}-r{r['i']}") if r["op"] != "adapt" else ("adapt", None)
                                               for r in api_changes]:
            raise AssertionError(f"worker {w}: its acknowledged API changes and its audit entries differ")
        acked += [(r["t"], e.version) for r, e in zip(api_changes, mine)]
        for r in records:
            counts[r["via"]] += 1
            counts["failed"] += not r["ok"]
            if r["via"] != "cli" or r["op"] == "predict":
                continue
            theirs = [e for e in history if e.actor.endswith(f", pid {r['pid']})")]
            if r["ok"] != bool(theirs) or len(theirs) > 1:
                raise AssertionError(f"worker {w}: CLI {r['op']} {r['label']!r} exited {r['code']} but has "
                                     f"{len(theirs)} audit entries")
            if theirs:
                acked.append((r["t"], theirs[0].version))
        counts["changes"] += len(mine)
    # the reader saw every change acknowledged before its prediction started
    _, _, _, sets = replay(history)
    versions = sorted(sets)
    acked.sort()
    reads = [json.loads(line) for line in open(os.path.join(directory, "reader.log"))]
    j, required = 0, 0
    for r in reads:
        while j < len(acked) and acked[j][0] < r["t"]:
            required = max(required, acked[j][1])
            j += 1
        seen = tuple(r["labels"])
        if not any(sets[v] == seen for v in versions if v >= required):
            raise AssertionError(f"a prediction started after version {required} was acknowledged saw an older "
                                 f"gallery ({len(seen)} classes)")
    return {"workers": workers, "operations": counts, "audit_entries": len(history), "classes": len(g),
            "reader_predictions": len(reads), "acknowledged_changes": len(acked),
            "seconds": round(time.perf_counter() - started, 1)}


def _op(kind: str) -> str:
    return {"new": "enroll", "more": "enroll", "forget": "forget", "rename": "rename", "adapt": "adapt"}[kind]


# ---------------------------------------------------------------------------------------------- kill
def kill_writer(gallery: str, name: str, seed: int) -> None:
    """Enroll and forget in transactions of 1-4 changes; print each acknowledged transaction."""
    g = Gallery.open(gallery, embedding_dim=KILL_DIM, fingerprint=KILL_FINGERPRINT, support_cap=4, seed=7)
    g.actor = name
    rng = np.random.default_rng(seed)
    print("ready", flush=True)
    i = 0
    while True:
        changes = []
        with g.transaction():
            for _ in range(int(rng.integers(1, 5))):
                mine = [lab for lab in g.labels if lab.startswith(name + ":")]
                if mine and rng.random() < 0.2:
                    label = mine[int(rng.integers(len(mine)))]
                    g.remove(label)
                    changes.append(["forget", label, None])
                else:
                    label = f"{name}:{int(rng.integers(0, 6))}"
                    n = int(rng.integers(1, 6))
                    g.add(label, rng.standard_normal((n, KILL_DIM)).astype(np.float32))
                    changes.append(["enroll", label, n])
        i += 1
        print("ack " + json.dumps(changes), flush=True)


def kill(directory: str, writers: int = 3, rounds: int = 20, seed: int = 0, max_delay: float = 0.4,
         log=None) -> dict:
    rnd = random.Random(seed)
    gallery = os.path.join(directory, "kill.metaedge")
    Gallery.open(gallery, embedding_dim=KILL_DIM, fingerprint=KILL_FINGERPRINT, support_cap=4, seed=7).close()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    watcher = Gallery.load(gallery)  # a long-lived reader: must catch up with whatever survives the kills
    incarnation = 0
    live: dict[str, subprocess.Popen] = {}
    acked: dict[str, list] = {}
    kills = in_flight = 0
    started = time.perf_counter()

    def spawn():
        nonlocal incarnation
        name = f"writer-{incarnation}"
        incarnation += 1
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--writer", gallery, name,
                                 str(rnd.randrange(1 << 30))], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, text=True)
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise AssertionError(f"a writer failed to start: {proc.stderr.read()}")
        live[name] = proc
        acked[name] = []

    for _ in range(writers):
        spawn()
    for rnd_i in range(rounds):
        time.sleep(rnd.uniform(0.02, max_delay))
        victims = rnd.sample(sorted(live), rnd.randint(1, len(live)))  # several at once, often
        for name in victims:
            live[name].send_signal(signal.SIGKILL)
        for name in victims:
            proc = live.pop(name)
            out, err = proc.communicate()
            if "Traceback" in err:
                raise AssertionError(f"{name} failed by itself: {err}")
            acked[name] += [json.loads(line[4:]) for line in out.splitlines() if line.startswith("ack ")]
            kills += 1
        for proc in live.values():  # the survivors pause (maybe mid-transaction) while the state is compared
            proc.send_signal(signal.SIGSTOP)  # with its history: both must be read at one moment
        g = Gallery.load(gallery)  # opens after every round
        problems = g.check()
        if problems:
            raise AssertionError(f"round {rnd_i}: the gallery fails its check: {problems}")
        history = check_against_history(g)
        for name in victims:
            entries = [[e.op, e.label, e.shots if e.op == "enroll" else None] for e in history if e.actor == name]
            done = [c for transaction in acked[name] for c in transaction]
            if entries[:len(done)] != done:
                raise AssertionError(f"round {rnd_i}: {name}: acknowledged changes missing from the gallery")
            extra = entries[len(done):]
            if len(extra) > 4:  # at most the one transaction that committed before its acknowledgement
                raise AssertionError(f"round {rnd_i}: {name}: {len(extra)} changes beyond the acknowledged ones")
            in_flight += bool(extra)
        watcher.refresh()
        if (watcher.labels, watcher.counts().tolist(), watcher.version) != (g.labels, g.counts().tolist(),
                                                                           g.version):
            raise AssertionError(f"round {rnd_i}: the long-lived reader did not catch up")
        g.close()
        for proc in live.values():
            proc.send_signal(signal.SIGCONT)
        while len(live) < writers:
            spawn()
        if log:
            log(f"round {rnd_i}: killed {len(victims)}, {len(g)} classes, version {watcher.version}")
    for proc in live.values():
        proc.kill()
        proc.communicate()
    return {"writers": writers, "rounds": rounds, "kills": kills, "committed_but_unacknowledged": in_flight,
            "classes": len(watcher), "version": watcher.version, "seconds": round(time.perf_counter() - started, 1)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        gallery, bundle, w, ops, share, log, seconds = argv[1:8]
        mixed_worker(gallery, bundle, int(w), int(ops), float(share), log, time.monotonic() + float(seconds))
        return 0
    if argv and argv[0] == "--reader":
        gallery, bundle, log, stop, seconds = argv[1:6]
        mixed_reader(gallery, bundle, log, stop, time.monotonic() + float(seconds))
        return 0
    if argv and argv[0] == "--writer":
        kill_writer(argv[1], argv[2], int(argv[3]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("mixed", help="processes mixing API and CLI changes, and a reader")
    m.add_argument("--workers", type=int, default=4)
    m.add_argument("--ops", type=int, default=50, help="operations per worker (default 50)")
    m.add_argument("--cli-share", type=float, default=0.25, help="fraction of operations run through the CLI")
    m.add_argument("--seconds", type=float, default=300, help="stop after this long (default 300)")
    m.add_argument("--bundle", help="bundle directory (default: a tiny one made on the fly)")
    k = sub.add_parser("kill", help="SIGKILL writers mid-transaction, several at once")
    k.add_argument("--writers", type=int, default=3)
    k.add_argument("--rounds", type=int, default=50)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--max-delay", type=float, default=0.4, help="longest time between kill rounds, seconds")
    for q in (m, k):
        q.add_argument("--dir", help="where to work (default: a temporary directory)")
        q.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        try:
            if args.mode == "mixed":
                summary = mixed(d, args.workers, args.ops, args.cli_share, args.seconds, args.bundle)
            else:
                summary = kill(d, args.writers, args.rounds, args.seed, args.max_delay,
                               log=print if args.verbose else None)
        except AssertionError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
