"""The main job end to end, on the embedded SyntheticGlyphs default (or Omniglot / an image folder):
meta-train a conv4 ProtoNet briefly -> export a verified bundle -> open an EdgeClassifier on the best backend
-> enroll never-seen classes with 1..K shots -> predict held-out images -> adapt the head -> report accuracy
with 95% CIs, per-frame latency split into pre-processing / backbone / kernels, and plots.

``run_demo`` is what ``metaedge demo`` calls; everything it writes goes to ``out_dir``:
``summary.json``, ``bundle/``, ``gallery.metaedge`` (the classes of the last 5-shot episode), ``run/`` (the
training run: config, metrics, checkpoints), and ``training_curve.png``, ``accuracy_vs_shots.png``,
``predictions.png``.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from metaedge._optional import require


@dataclass
class DemoConfig:
    out_dir: str = "demo_out"
    data: str = "synthetic"                 # "synthetic" | "omniglot" | "folder"
    omniglot: Sequence[str] = ()            # directory or zip paths (omniglot)
    folder: str | None = None               # image folder (one sub-folder per class)
    time_budget_s: float = 100.0            # meta-training wall time
    max_episodes: int = 4000
    ways: int = 20                          # evaluation: classes per episode (5-way saturates on glyphs)
    shots: Sequence[int] = (1, 2, 5, 10)
    queries: int = 5                        # held-out images per class and episode
    episodes: int = 30                      # evaluation episodes per shot count
    adapt_steps: int = 50
    backend: str = "auto"
    latency_frames: int = 100
    seed: int = 0
    quick: bool = False
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick_defaults(cls, **overrides) -> "DemoConfig":
        """A sub-minute smoke run: tiny training, few episodes (used by the tests)."""
        base = dict(time_budget_s=12.0, max_episodes=60, shots=(1, 5), episodes=8, adapt_steps=20,
                    latency_frames=20, quick=True)
        base.update(overrides)
        return cls(**base)


def _ci95(values: np.ndarray) -> float:
    return float(1.96 * values.std(ddof=0) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def _datasets(cfg: DemoConfig):
    """(train, val, test) datasets with disjoint classes, and a description."""
    from metaedge.train.data import Omniglot, SyntheticGlyphs
    if cfg.data == "synthetic":
        return (SyntheticGlyphs("train", seed=cfg.seed), SyntheticGlyphs("val", seed=cfg.seed),
                SyntheticGlyphs("test", seed=cfg.seed), "SyntheticGlyphs (embedded, procedural; 120/40/40 classes)")
    if cfg.data == "omniglot":
        if not cfg.omniglot:
            raise ValueError("--omniglot needs at least one directory or zip")
        roots = list(cfg.omniglot)
        if len(roots) == 1 and os.path.isdir(roots[0]) and \
                os.path.exists(os.path.join(roots[0], "images_background_small1.zip")) and \
                os.path.exists(os.path.join(roots[0], "images_background_small2.zip")):
            # The development protocol of shared/data/omniglot/README.md.
            root = roots[0]
            train_all = Omniglot(root, sets=["images_background_small1"], rotations=(0, 90, 180, 270))
            train, val = train_all.split((0.85, 0.15), seed=cfg.seed)
            test = Omniglot(root, sets=["images_background_small2"],
                            alphabets=["Japanese_(katakana)", "Sanskrit", "Tagalog"])
            return train, val, test, "Omniglot development protocol (train small1 + rotations; test 3 small2 alphabets)"
        full = Omniglot(roots[0]) if len(roots) == 1 else \
            _concat([Omniglot(r) for r in roots])
        train, val, test = full.split((0.6, 0.2, 0.2), seed=cfg.seed)
        return train, val, test, f"Omniglot from {', '.join(roots)} (classes split 60/20/20)"
    if cfg.data == "folder":
        from metaedge.train.data import ImageFolderDataset
        full = ImageFolderDataset(cfg.folder, size=cfg.extra.get("size", 84), color=cfg.extra.get("color", "rgb"))
        train, val, test = full.split((0.6, 0.2, 0.2), seed=cfg.seed)
        return train, val, test, f"image folder {cfg.folder} (classes split 60/20/20)"
    raise ValueError(f"data: expected synthetic, omniglot or folder, got {cfg.data!r}")


def _concat(datasets):
    from metaedge.train.data.base import FewShotDataset
    return FewShotDataset.concat(datasets)


def _episode_classes(rng: np.random.Generator, dataset, ways: int, need: int) -> list[int]:
    eligible = [c for c in range(dataset.num_classes) if len(dataset.class_indices(c)) >= need]
    if len(eligible) < ways:
        raise ValueError(f"{dataset.name}: only {len(eligible)} classes have >= {need} images; "
                         f"need {ways} for a {ways}-way episode")
    return sorted(rng.choice(eligible, size=ways, replace=False).tolist())


def evaluate_on_device(classifier_factory, dataset, ways: int, shots: int, queries: int, episodes: int,
                       seed: int, adapt_steps: int = 0, keep_last: Callable | None = None) -> dict[str, Any]:
    """N-way K-shot episodes run through the device SDK: a fresh in-memory gallery per episode, ``enroll``
    with raw uint8 images, ``predict`` held-out ones (and again after ``adapt`` when ``adapt_steps``)."""
    rng = np.random.default_rng([seed, shots])
    accs, adapted_accs, samples = [], [], []
    for episode in range(episodes):
        classes = _episode_classes(rng, dataset, ways, shots + queries)
        support, query, truth = {}, [], []
        for c in classes:
            idx = dataset.class_indices(c).numpy()
            pick = rng.choice(idx, size=shots + queries, replace=False)
            support[dataset.class_names[c]] = dataset.raw_images(pick[:shots])
            query.append(dataset.raw_images(pick[shots:]))
            truth += [dataset.class_names[c]] * queries
        queries_u8 = np.concatenate(query)
        with classifier_factory() as clf:
            for label, images in support.items():
                clf.enroll(label, images)
            preds = clf.predict(queries_u8, k=1)
            accs.append(np.mean([p.label == t for p, t in zip(preds, truth)]))
            if adapt_steps:
                clf.adapt(steps=adapt_steps)
                preds = clf.predict(queries_u8, k=1)
                adapted_accs.append(np.mean([p.label == t for p, t in zip(preds, truth)]))
            if episode == episodes - 1:
                samples = [(queries_u8[i], truth[i], preds[i].label) for i in range(len(truth))]
                if keep_last is not None:
                    keep_last(clf)
    out = {"ways": ways, "shots": shots, "queries": queries, "episodes": episodes,
           "accuracy": float(np.mean(accs)), "ci95": _ci95(np.asarray(accs)),
           "per_episode": [float(a) for a in accs], "samples": samples}
    if adapt_steps:
        out["adapted"] = {"steps": adapt_steps, "accuracy": float(np.mean(adapted_accs)),
                          "ci95": _ci95(np.asarray(adapted_accs)), "per_episode": [float(a) for a in adapted_accs]}
    return out


def measure_latency(clf, frames: np.ndarray, n: int) -> dict[str, float]:
    """Median per-frame ``predict`` time split as EdgeClassifier.last_timings reports it (milliseconds)."""
    parts: dict[str, list[float]] = {"preprocessing": [], "backbone": [], "kernels": [], "total": []}
    for i in range(n + 3):
        clf.predict(frames[i % len(frames)], k=5)
        t = clf.last_timings
        if i >= 3:  # warm-up frames excluded
            for key in parts:
                parts[key].append(getattr(t, f"{key}_ms"))
    return {key: float(np.median(v)) for key, v in parts.items()}


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole demo; returns the summary (also written to ``out_dir/summary.json``)."""
    require("torch", "metaedge demo (it meta-trains a backbone)")
    from metaedge.export import export_bundle
    from metaedge.runtime.backends import open_backend
    from metaedge.runtime.bundle import Bundle
    from metaedge.runtime.classifier import EdgeClassifier
    from metaedge.train import fit
    from metaedge.train import plots

    started = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("run", "bundle"):
        shutil.rmtree(out / stale, ignore_errors=True)

    say("[1/5] data")
    train, val, test, data_desc = _datasets(cfg)
    say(f"      {data_desc}: {train.num_classes} training classes, {val.num_classes} validation, "
        f"{test.num_classes} never-seen test classes")

    say(f"[2/5] meta-training conv4 ProtoNet for up to {cfg.time_budget_s:.0f} s")
    t0 = time.perf_counter()
    model = fit(backbone="conv4", method="protonet", data=train, val_data=val, run_dir=str(out / "run"),
                ways=min(20, train.num_classes), shots=5, queries=5, episodes=cfg.max_episodes,
                time_budget_s=cfg.time_budget_s, val_every=5 if cfg.quick else 50, log_every=1 if cfg.quick else 5,
                val_episodes=10 if cfg.quick else 60, val_ways=cfg.ways, seed=cfg.seed, progress=cfg.progress,
                tensorboard=False, lr=2e-3)
    train_seconds = time.perf_counter() - t0

    say("[3/5] exporting and verifying the bundle (ONNX, parity with torch)")
    parity_images = test.raw_images(np.arange(min(32, len(test))))
    bundle = export_bundle(model, out / "bundle", images=parity_images, overwrite=True)
    bundle = Bundle.load(out / "bundle")
    parity = bundle.manifest.get("parity", {})

    say("[4/5] enrolling never-seen classes on the device SDK and predicting held-out images")
    backend = open_backend(bundle, backend=cfg.backend)
    selection = getattr(backend, "selection_log", [])
    gallery_path = out / "gallery.metaedge"

    def factory():
        return EdgeClassifier(bundle, gallery=None, backend=backend)

    def keep(clf):
        from metaedge.runtime.store.files import remove_gallery
        remove_gallery(str(gallery_path))  # the previous run's (no process of ours uses it)
        clf.save(gallery_path)

    results = []
    max_shots = max(cfg.shots)
    for shots in cfg.shots:
        res = evaluate_on_device(factory, test, cfg.ways, shots, cfg.queries, cfg.episodes, cfg.seed,
                                 adapt_steps=cfg.adapt_steps if shots == max_shots else 0,
                                 keep_last=keep if shots == max_shots else None)
        line = f"      {cfg.ways}-way {shots}-shot: {100 * res['accuracy']:.1f}% +- {100 * res['ci95']:.1f}"
        if "adapted" in res:
            line += (f"; after adapt_head ({cfg.adapt_steps} steps): {100 * res['adapted']['accuracy']:.1f}% "
                     f"+- {100 * res['adapted']['ci95']:.1f}")
        say(line)
        results.append(res)

    say("[5/5] latency and plots")
    with EdgeClassifier(bundle, gallery=str(gallery_path), backend=backend, autosave=False) as clf:
        frames = test.raw_images(np.arange(min(64, len(test))))
        latency = measure_latency(clf, frames, cfg.latency_frames)
    backend.close()

    samples = results[0]["samples"]
    history = plots.read_metrics(out / "run" / "metrics.jsonl")
    plots.training_curve(history, out / "training_curve.png")
    plots.accuracy_vs_shots(results, out / "accuracy_vs_shots.png", ways=cfg.ways)
    plots.prediction_grid(samples, out / "predictions.png", title=f"{cfg.ways}-way {results[0]['shots']}-shot "
                                                                   f"queries (wrong in red)")

    summary = {
        "data": data_desc, "backbone": "conv4", "method": "protonet",
        "training": {"seconds": round(train_seconds, 1), "episodes": _last_episode(history),
                     "best_val_accuracy": max((h["val_accuracy"] for h in history if "val_accuracy" in h),
                                              default=None)},
        "bundle": {"path": str(out / "bundle"), "onnx_sha256": bundle.onnx_sha256, "fingerprint": bundle.fingerprint,
                   "parity": parity},
        "backend": backend.describe(), "backend_selection": [list(s) for s in selection],
        "accuracy": [{k: v for k, v in r.items() if k != "samples"} for r in results],
        "latency_ms": latency, "gallery": str(gallery_path),
        "plots": [str(out / n) for n in ("training_curve.png", "accuracy_vs_shots.png", "predictions.png")],
        "machine": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "seconds": round(time.perf_counter() - started, 1), "quick": cfg.quick,
    }
    from metaedge.runtime.fileio import atomic_write_json
    atomic_write_json(out / "summary.json", summary)
    say("")
    say(format_summary(summary))
    return summary


def _last_episode(history: list[dict]) -> int:
    return max((int(h["episode"]) for h in history), default=0)


def format_summary(s: dict[str, Any]) -> str:
    rows = [f"metaedge demo - {s['data']}",
            f"  conv4 ProtoNet, trained {s['training']['seconds']} s ({s['training']['episodes']} episodes); "
            f"backend: {s['backend']}",
            "",
            f"  {'never-seen classes':<28}{'accuracy':>10}{'95% CI':>9}"]
    for r in s["accuracy"]:
        label = f"{r['ways']}-way {r['shots']}-shot"
        rows.append(f"  {label:<28}{100 * r['accuracy']:>9.1f}%{100 * r['ci95']:>8.1f}")
        if "adapted" in r:
            a = r["adapted"]
            label = f"{r['ways']}-way {r['shots']}-shot + adapt_head"
            rows.append(f"  {label:<28}{100 * a['accuracy']:>9.1f}%{100 * a['ci95']:>8.1f}")
    lat = s["latency_ms"]
    rows += ["", "  latency per frame (median, ms):  "
             f"pre-processing {lat['preprocessing']:.3f} | backbone {lat['backbone']:.3f} | "
             f"kernels {lat['kernels']:.3f} | total {lat['total']:.3f}",
             f"  outputs: {Path(s['bundle']['path']).parent}/ (summary.json, bundle/, gallery.metaedge, *.png)",
             f"  total time: {s['seconds']} s"]
    return "\n".join(rows)
