#!/usr/bin/env python
"""Crash-safety stress test of the gallery file: SIGKILL a writer at random moments, check what survives.

A worker process loops over a deterministic sequence of changes (enroll new classes, add shots, forget,
rename; numpy-only embeddings, no torch, no network) and saves the gallery after each one, printing the
number of changes saved. The driver kills it with SIGKILL after a random delay, then loads the file: it
must load without error and equal - exactly - a replica of the gallery after either the last reported
change or the one after it (the save that may have completed before the report). The worker restarts from
the file and the cycle repeats.

    python tools/stress_gallery.py --iterations 5000 --min-kills 200      # the long run
    python tools/stress_gallery.py --autosave                             # via Gallery(autosave=True)

Exit status 0 and a JSON summary on success; 1 with the first violation otherwise.
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

if "--worker" in sys.argv:  # the writer must not need torch: make any import of it fail loudly
    sys.modules["torch"] = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from metaedge.runtime.gallery import Gallery  # noqa: E402  (numpy + kernels only: no torch)

DIM = 64
FINGERPRINT = "stress-" + "5" * 57


def apply_change(g: Gallery, i: int) -> None:
    """Change number ``i``: a function of i and the gallery's current labels only (so replicas agree)."""
    rng = np.random.default_rng(i)
    kind = i % 10
    labels = g.labels
    if len(labels) < 3 or kind in (0, 1, 2, 3, 4):
        g.add(f"class {i}", rng.standard_normal((int(rng.integers(1, 6)), DIM)).astype(np.float32), now=float(i))
    elif kind in (5, 6, 7):
        g.add(labels[int(rng.integers(len(labels)))], rng.standard_normal((3, DIM)).astype(np.float32),
              now=float(i))
    elif kind == 8:
        g.remove(labels[int(rng.integers(len(labels)))])
    else:
        g.rename(labels[int(rng.integers(len(labels)))], f"renamed {i}")


def new_gallery(path=None, autosave=False) -> Gallery:
    return Gallery(DIM, "cosine", FINGERPRINT, support_cap=4, seed=7, path=path, autosave=autosave)


def worker(path: str, start: int, autosave: bool) -> None:
    if os.path.exists(path):
        g = Gallery.load(path, fingerprint=FINGERPRINT, embedding_dim=DIM, autosave=autosave)
    else:
        g = new_gallery(path, autosave)
    print("ready", flush=True)
    i = start
    while True:
        apply_change(g, i)
        if not autosave:
            g.save()
        i += 1
        print(f"saved {i}", flush=True)


def same(a: Gallery, b: Gallery) -> bool:
    if a.labels != b.labels or a.counts().tolist() != b.counts().tolist():
        return False
    if not np.array_equal(a.prototypes(), b.prototypes()):
        return False
    sa, sb = a.support_set(), b.support_set()
    return np.array_equal(sa[0], sb[0]) and np.array_equal(sa[1], sb[1])


def stress(path: str, iterations: int = 200, min_kills: int = 10, seed: int = 0, autosave: bool = False,
           max_delay: float = 0.25, log=None) -> dict:
    """Run the kill/verify cycle until ``iterations`` changes were saved and ``min_kills`` kills happened."""
    rnd = random.Random(seed)
    replica = new_gallery()          # state after `done` changes
    done = kills = restarts_from_next = 0
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    while done < iterations or kills < min_kills:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", path, "--start", str(done)]
                                + (["--autosave"] if autosave else []),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        ready = proc.stdout.readline().strip()
        if ready != "ready":
            proc.kill()
            raise AssertionError(f"worker failed to start from {done} changes: {ready!r} {proc.stderr.read()}")
        time.sleep(rnd.uniform(0.0, max_delay))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        kills += 1
        reported = [int(line.split()[1]) for line in out.splitlines() if line.startswith("saved ")]
        last = reported[-1] if reported else done
        if "Traceback" in err:
            raise AssertionError(f"worker crashed by itself: {err}")
        # Bring the replica to `last`, then check the file equals it or the state one change later.
        for i in range(done, last):
            apply_change(replica, i)
        candidates = [(last, replica)]
        ahead = new_gallery()
        try:
            ahead = Gallery.from_bytes(replica.to_bytes())
            apply_change(ahead, last)
            candidates.append((last + 1, ahead))
        except Exception as exc:  # pragma: no cover - apply_change itself failing is a bug in the driver
            raise AssertionError(f"replica cannot apply change {last}: {exc}")
        if not os.path.exists(path):
            if last != 0:
                raise AssertionError(f"gallery file vanished after {last} saved changes")
            continue
        try:
            loaded = Gallery.load(path, fingerprint=FINGERPRINT, embedding_dim=DIM)
        except Exception as exc:
            raise AssertionError(f"after kill {kills} (reported {last} changes) the file does not load: {exc}")
        match = [n for n, g in candidates if same(loaded, g)]
        if not match:
            raise AssertionError(f"after kill {kills} the file is neither the state after change {last} nor "
                                 f"{last + 1} (labels {loaded.labels[-3:]} vs {replica.labels[-3:]})")
        if match[0] == last + 1:
            replica = ahead
            restarts_from_next += 1
        done = match[0]
        if log:
            log(f"kill {kills}: {done} changes on disk")
    def temp_files() -> int:
        return len([n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")])

    # Each killed writer may leave its temporary file (several in a row when writers die before their first
    # save completes); the next completed save removes those of dead processes.
    left_by_kills = temp_files()
    Gallery.load(path, fingerprint=FINGERPRINT, embedding_dim=DIM).save()
    return {"changes": done, "kills": kills, "kills_after_save_before_report": restarts_from_next,
            "classes": len(replica), "seconds": round(time.perf_counter() - started, 2),
            "temp_files_left_by_kills": left_by_kills, "temp_files_after_next_save": temp_files()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=3000, help="changes to save in total (default 3000)")
    p.add_argument("--min-kills", type=int, default=100, help="SIGKILLs at least (default 100)")
    p.add_argument("--max-delay", type=float, default=0.25, help="longest time a worker lives, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--autosave", action="store_true", help="save through Gallery(autosave=True)")
    p.add_argument("--dir", help="where to put the gallery (default: a temporary directory)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--worker", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.start, args.autosave)
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        try:
            summary = stress(os.path.join(d, "stress.metaedge"), args.iterations, args.min_kills, args.seed,
                             args.autosave, args.max_delay, log=print if args.verbose else None)
        except AssertionError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
