"""One EdgeClassifier shared by threads: predictions stay consistent while others enroll, forget, rename,
adapt and save. (No timing: the threads just run many iterations each.)"""
import threading

import numpy as np

from metaedge.runtime.gallery import Gallery
from tests.runtime.doubles import Glyphs, make_classifier

BASE = 6          # classes that nobody touches: their queries must always be recognised
CHURN = 6         # classes that writer threads enroll and forget again and again


def test_predict_is_consistent_while_other_threads_change_the_gallery(tmp_path):
    glyphs = Glyphs(BASE + CHURN, size=20, seed=5)
    path = tmp_path / "shared.metaedge"
    clf = make_classifier(gallery=path, autosave=False)
    for k in range(BASE):
        clf.enroll(f"base {k}", glyphs.sample(k, 4))
    queries = [glyphs.sample(k, 4) for k in range(BASE)]
    errors: list[BaseException] = []
    stop = threading.Event()
    checked = [0]

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                stop.set()
        return run

    def reader():
        for it in range(60):
            k = it % BASE
            preds = clf.predict(queries[k], k=3)
            for p in preds:
                labels = [lab for lab, _ in p.topk]
                assert p.label == f"base {k}", (p.label, labels)
                assert len(set(labels)) == 3, labels                           # one snapshot: no duplicates
                assert [s for _, s in p.topk] == sorted((s for _, s in p.topk), reverse=True)
                assert np.isfinite(p.score)
            checked[0] += len(preds)
            if stop.is_set():
                return

    def churner(offset):
        for it in range(15):
            label = f"churn {offset}-{it}"
            clf.enroll(label, glyphs.sample(BASE + (it + offset) % CHURN, 2))
            if it % 3 == 0:
                clf.rename(label, label + " renamed")
                label += " renamed"
            if it % 2 == 0:
                clf.forget(label)
            if stop.is_set():
                return

    def adapter():
        for it in range(6):
            clf.adapt(steps=5, lr=0.05)
            if it % 2:
                clf.reset_adaptation()
            if stop.is_set():
                return

    def saver():
        for _ in range(10):
            clf.save()
            loaded = Gallery.load(path)  # every saved file is complete and consistent
            labels = loaded.labels       # once: the loaded view follows the writers between two reads
            assert len(labels) == len(set(labels))
            if stop.is_set():
                return

    threads = [threading.Thread(target=guarded(f)) for f in
               (reader, reader, reader, lambda: churner(0), lambda: churner(1), adapter, saver)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
    if errors:
        raise errors[0]
    assert checked[0] == 3 * 60 * 4
    # the final state is exactly what the writers did: base classes + the churn classes not forgotten
    expected = {f"base {k}" for k in range(BASE)}
    for offset in (0, 1):
        for it in range(15):
            if it % 2:
                expected.add(f"churn {offset}-{it}" + (" renamed" if it % 3 == 0 else ""))
    assert set(clf.labels) == expected
    clf.save()
    assert set(Gallery.load(path).labels) == expected
