#!/usr/bin/env python
"""Device SDK benchmark: EdgeClassifier on ONNX Runtime CPU.

Measures, for conv4 (1x28x28, fed 105x105 gray frames) and resnet18 (3x224x224, fed 480x640 RGB frames):
- per-frame ``predict`` latency (batch 1, k=5) with 10, 1,000 and 10,000 enrolled classes, split into
  pre-processing (image conversion + ``kernels.preprocess``), backbone (the ONNX Runtime call) and kernels
  (``kernels.topk``), with the bare backbone call on the same input measured in the same run as the baseline;
- ``enroll`` latency for 5 images at the same gallery sizes, into a gallery store on disk (the network, then
  one durable transaction);
- the gallery store against the old single-file format at 10 / 1,000 / 10,000 / 100,000 classes - a change,
  open, catch-up - and predict's added cost of the cross-process version check (tools/bench/gallery.py, in the
  same run);
- optionally (``--adapt``), whether ``adapt()`` helps: 5-way 5-shot accuracy on the Omniglot development split
  (small2-only alphabets) before and after adaptation, through the device path, with a conv4 ProtoNet trained
  briefly on small1 (or ``--omniglot-checkpoint``).

Gallery sizes above what a test enrolls are filled with random embeddings (the kernels' cost depends only on
the number of classes and the embedding size). Medians over ``--reps`` runs after warm-up.

    python tools/bench/sdk.py                       # table + out/bench/sdk.json
    python tools/bench/sdk.py --adapt --omniglot /work/shared/data/omniglot
Target (issue 6): kernels + pre-processing < 10% of predict time at 1,000 classes for both backbones.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np


BACKBONES = {  # name -> (build options, frame shape fed to predict)
    "conv4": ({}, (105, 105, 1)),
    "resnet18": ({"input_size": 224}, (480, 640, 3)),
}
CLASS_COUNTS = (10, 1000, 10000)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_bundle(name: str, directory: str) -> str:
    """Export a seeded, untrained backbone once (latency does not depend on the weights)."""
    path = os.path.join(directory, name)
    if os.path.exists(os.path.join(path, "manifest.json")):
        with open(os.path.join(path, "manifest.json")) as f:
            size = json.load(f)["spec"]["preprocess"]["size"]
        wanted = BACKBONES[name][0].get("input_size")
        if wanted is None or size == [wanted, wanted]:  # else a stale bundle of another input size: re-export
            return path
    import torch

    from metaedge.export.onnx import export_bundle
    from metaedge.train.backbones import build_backbone
    torch.manual_seed(0)
    log(f"exporting a {name} bundle to {path} (once) ...")
    export_bundle(build_backbone(name, **BACKBONES[name][0]).eval(), path, overwrite=True)
    return path


def fill(clf, classes: int, rng) -> None:
    """Top the gallery up to ``classes`` classes of 5 random shots each."""
    g = clf.gallery
    d = g.embedding_dim
    with g.transaction():
        for i in range(len(g), classes):
            g.add(f"filler {i}", rng.standard_normal((5, d)).astype(np.float32))


def median_timings(samples) -> dict:
    """Median milliseconds of each part of EdgeClassifier.last_timings over ``samples``."""
    keys = ("load", "preprocess", "backbone", "kernels", "total", "preprocessing")
    return {k: statistics.median(getattr(t, f"{k}_ms") for t in samples) for k in keys}


def bench_backbone(name: str, bundle_dir: str, reps: int, threads: int | None, rng, workdir: str) -> dict:
    from metaedge.runtime.backends import open_backend
    from metaedge.runtime.classifier import EdgeClassifier
    backend = open_backend(bundle_dir, "ort-cpu", threads=threads)
    clf = EdgeClassifier(bundle_dir, backend=backend, support_cap=5,
                         gallery=os.path.join(workdir, f"{name}.metaedge"))
    shape = BACKBONES[name][1]
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    shots = rng.integers(0, 256, (5, *shape), dtype=np.uint8)
    x = clf.spec.preprocess.apply(frame[None])
    for _ in range(3):
        backend.embed(x)
    result = {"backend": backend.describe(), "input": list(clf.spec.input_shape), "frame": list(shape),
              "embedding_dim": clf.spec.embedding_dim, "by_classes": {}}
    for classes in CLASS_COUNTS:
        fill(clf, classes, rng)
        for _ in range(3):
            clf.predict(frame, k=5)
        bare, predict = [], []
        for _ in range(reps):  # interleaved, so load changes hit baseline and SDK alike
            t0 = time.perf_counter()
            backend.embed(x)
            bare.append(time.perf_counter() - t0)
            clf.predict(frame, k=5)
            predict.append(clf.last_timings)
        enroll = []
        for i in range(max(3, reps // 3)):
            clf.enroll(f"bench {classes}-{i}", shots)
            enroll.append(clf.last_timings)
        p = median_timings(predict)
        row = {"classes": len(clf), "predict_ms": p, "bare_backbone_ms": statistics.median(bare) * 1e3,
               "enroll5_ms": median_timings(enroll)}
        row["kernels_plus_preprocessing_share"] = (p["kernels"] + p["preprocessing"]) / p["total"]
        row["predict_over_bare_backbone"] = p["total"] / row["bare_backbone_ms"]
        result["by_classes"][str(classes)] = row
        log(f"  {name} {classes:>6} classes: predict {p['total']:.2f} ms (pre {p['preprocessing']:.2f}, backbone "
            f"{p['backbone']:.2f}, kernels {p['kernels']:.3f}); enroll5 {row['enroll5_ms']['total']:.1f} ms")
    result["by_format"] = bench_formats(clf, backend, name, reps, rng)
    clf.close()
    backend.close()
    return result


def bench_formats(clf, backend, name: str, reps: int, rng) -> dict:
    """predict on the same picture delivered as RGB, BGR (OpenCV) and NV12 (Jetson cameras) frames, interleaved,
    at the gallery's current size: the camera layouts cost what RGB costs."""
    from metaedge.bench.preprocess import make_frame
    h, w = (104, 104) if name == "conv4" else (480, 640)  # (NV12 needs even sizes)
    frames = {fmt: make_frame(rng, fmt, h, w) for fmt in ("rgb", "bgr", "nv12")}
    samples: dict[str, list] = {fmt: [] for fmt in frames}
    for fmt, frame in frames.items():
        for _ in range(3):
            clf.predict(frame, k=5, pixel_format=fmt)
    for _ in range(reps):
        for fmt, frame in frames.items():
            clf.predict(frame, k=5, pixel_format=fmt)
            samples[fmt].append(clf.last_timings)
    out = {}
    for fmt, got in samples.items():
        p = median_timings(got)
        out[fmt] = {"frame": [h, w], "classes": len(clf), "predict_ms": p}
        log(f"  {name} {fmt:>4} {h}x{w} frames, {len(clf)} classes: predict {p['total']:.3f} ms "
            f"(pre {p['preprocessing']:.3f}, backbone {p['backbone']:.3f}, kernels {p['kernels']:.3f})")
    for fmt in ("bgr", "nv12"):
        out[fmt]["preprocess_vs_rgb"] = out[fmt]["predict_ms"]["preprocess"] / out["rgb"]["predict_ms"]["preprocess"]
    return out


def bench_gallery_store(sizes: list[int], reps: int, rng, workdir: str) -> dict:
    """tools/bench/gallery.py in this run: the store vs the old format at each size, and the version check."""
    from metaedge.bench import gallery
    rows = []
    for classes in sizes:
        log(f"  gallery store vs old format at {classes:,} classes ...")
        rows.append(gallery.bench_size(classes, workdir, reps, 5 if classes <= 10_000 else 1, rng))
    return {"sizes": rows, "version_check": gallery.bench_version_check(workdir, rng)}


def _adapt_model(omniglot: str, checkpoint: str | None, train_seconds: float, workdir: str):
    """-> (model, description): a checkpoint, or a conv4 ProtoNet trained briefly on small1 (cached in workdir)."""
    import torch

    from metaedge.train.checkpoint import load_checkpoint
    from metaedge.train.data.omniglot import Omniglot
    run_dir = os.path.join(workdir, "omniglot-conv4-protonet")
    if not checkpoint and os.path.exists(os.path.join(run_dir, "last", "model.json")):
        checkpoint = os.path.join(run_dir, "last")  # trained by an earlier run of this benchmark
    if checkpoint:
        return load_checkpoint(checkpoint), checkpoint
    from metaedge.train.trainer import fit
    train = Omniglot(omniglot, sets="images_background_small1", rotations=(0, 90, 180, 270))
    log(f"training a conv4 ProtoNet on Omniglot small1 for {train_seconds:.0f} s ...")
    torch.manual_seed(0)
    model = fit(backbone="conv4", method="protonet", data=train, ways=20, shots=5, queries=5,
                time_budget_s=train_seconds, episodes=100000, progress=False, tensorboard=False, run_dir=run_dir)
    return model, f"conv4 protonet, {train_seconds:.0f} s on small1"


def bench_adapt(omniglot: str, checkpoints: list[str], episodes: int, train_seconds: float, workdir: str,
                rng) -> dict:
    """N-way 5-shot on the small2-only alphabets: prototypes vs adapt(), both through EdgeClassifier, for each
    model (``LABEL=PATH`` or ``PATH`` checkpoints; none: a ProtoNet trained briefly on small1)."""
    from metaedge.export.onnx import export_bundle
    from metaedge.runtime.backends import open_backend
    from metaedge.runtime.classifier import EdgeClassifier
    from metaedge.train.data.omniglot import Omniglot
    from metaedge.train.data.samplers import TaskSampler
    dev = Omniglot(omniglot, sets="images_background_small2", alphabets=["Japanese_(katakana)", "Sanskrit",
                                                                          "Tagalog"])
    settings = {"adapt() [default: 100 steps, lr 0.1]": {},
                "adapt(lr=0.01)": {"lr": 0.01}}

    def hwc(idx):
        return np.ascontiguousarray(dev.images[idx].numpy().transpose(0, 2, 3, 1))

    def ci(a):
        a = np.asarray(a)
        return [float(a.mean()), float(1.96 * a.std(ddof=1) / np.sqrt(len(a)))]

    out = {"episodes": episodes, "queries": 10, "models": []}
    for entry in checkpoints or [None]:
        label, path = entry.split("=", 1) if entry and "=" in entry else ("", entry)
        model, source = _adapt_model(omniglot, path, train_seconds, workdir)
        bundle = export_bundle(model.eval(), os.path.join(workdir, "omniglot-bundle"), overwrite=True)
        result = {"label": label or source, "model": source, "metric": bundle.spec.metric, "tasks": []}
        with open_backend(bundle, "ort-cpu") as backend:
            for ways, shots in ((5, 5), (20, 5)):
                sampler = TaskSampler(dev, ways, shots, 10, seed=0)
                accs: dict[str, list] = {"prototypes": [], **{name: [] for name in settings}}
                adapt_s = []
                for i in range(episodes):
                    ep = sampler.sample(i)
                    with EdgeClassifier(bundle, backend=backend) as clf:
                        s, sl = ep.support.numpy(), ep.support_labels.numpy()
                        for j in range(ways):
                            clf.enroll(str(j), hwc(s[sl == j]))
                        queries, truth = hwc(ep.query.numpy()), [str(t) for t in ep.query_labels.tolist()]

                        def acc():
                            return float(np.mean([p.label == t for p, t in zip(clf.predict(queries), truth)]))
                        accs["prototypes"].append(acc())
                        for name, kwargs in settings.items():
                            adapt_s.append(clf.adapt(**kwargs).seconds)
                            accs[name].append(acc())
                            clf.reset_adaptation()
                task = {"ways": ways, "shots": shots, **{k: ci(v) for k, v in accs.items()},
                        "adapt_minus_prototypes": ci(np.subtract(accs[next(iter(settings))], accs["prototypes"])),
                        "adapt_ms_median": statistics.median(adapt_s) * 1e3}
                result["tasks"].append(task)
                log(f"  {result['label']}: adapt {ways}-way {shots}-shot: " + ", ".join(
                    f"{k} {100 * np.mean(v):.2f}%" for k, v in accs.items()))
        out["models"].append(result)
    return out


def table(results: dict) -> str:
    lines = ["| backbone | classes | predict ms | pre-proc ms | backbone ms | kernels ms | kern+pre share | "
             "bare backbone ms | predict/bare | enroll 5 imgs ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"] if results["backbones"] else []
    for name, r in results["backbones"].items():
        for classes, row in r["by_classes"].items():
            p = row["predict_ms"]
            lines.append(f"| {name} | {int(classes):,} | {p['total']:.2f} | {p['preprocessing']:.2f} | "
                         f"{p['backbone']:.2f} | {p['kernels']:.3f} | {100 * row['kernels_plus_preprocessing_share']:.1f}% "
                         f"| {row['bare_backbone_ms']:.2f} | {row['predict_over_bare_backbone']:.2f}x | "
                         f"{row['enroll5_ms']['total']:.1f} |")
    if any("by_format" in r for r in results["backbones"].values()):
        lines.append("")
        lines.append("| backbone | frame | pixel format | classes | predict ms | pre-proc ms | backbone ms | kernels ms "
                     "| pre-proc vs RGB |")
        lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for name, r in results["backbones"].items():
            for fmt, row in r.get("by_format", {}).items():
                p = row["predict_ms"]
                vs = row.get("preprocess_vs_rgb")
                lines.append(f"| {name} | {row['frame'][0]}x{row['frame'][1]} | {fmt} | {row['classes']:,} | "
                             f"{p['total']:.3f} | {p['preprocessing']:.3f} | {p['backbone']:.3f} | "
                             f"{p['kernels']:.3f} | {'-' if vs is None else f'{vs:.2f}x'} |")
    store = results.get("gallery_store")
    if store:
        lines.append("")
        lines.append("| classes | enroll (store) ms | more shots ms | forget ms | SQLite commit floor ms | old format "
                     "change ms | open (store) ms | open (old) ms | catch-up ms |")
        lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in store["sizes"]:
            lines.append(f"| {r['classes']:,} | {r['store enroll new class ms']:.2f} | "
                         f"{r['store enroll 5 more shots ms']:.2f} | {r['store forget ms']:.2f} | "
                         f"{r['sqlite commit floor ms']:.2f} | {r['old format change ms']:.1f} | "
                         f"{r['store open ms']:.0f} | {r['old format open ms']:.0f} | "
                         f"{r['catch-up after 1 enroll ms']:.2f} |")
        check = store["version_check"]
        lines.append(f"predict's cross-process version check: +{check['added by the version check us']:.3f} us per "
                     f"call (snapshot() {check['snapshot() store gallery (change counter)']:.3f} us vs "
                     f"{check['snapshot() in-memory gallery']:.3f} us in memory; PRAGMA data_version would cost "
                     f"{check['PRAGMA data_version (not used)']:.2f} us)")
    ad = results.get("adapt")
    if ad:
        lines.append("")
        lines.append(f"adapt() on the Omniglot development split through EdgeClassifier ({ad['episodes']} episodes, "
                     f"{ad['queries']} queries/class; mean +- 95% CI; the difference is paired per episode):")
        for m in ad["models"]:
            lines.append(f"  {m['label']} ({m['metric']} prototypes):")
            for task in m["tasks"]:
                cells = [f"{k} {100 * v[0]:.2f} +- {100 * v[1]:.2f}%" for k, v in task.items()
                         if isinstance(v, list) and k != "adapt_minus_prototypes"]
                diff = task["adapt_minus_prototypes"]
                lines.append(f"    {task['ways']}-way {task['shots']}-shot: " + "; ".join(cells)
                             + f"; default adapt - prototypes {100 * diff[0]:+.2f} +- {100 * diff[1]:.2f} points"
                             + f" (adapt {task['adapt_ms_median']:.1f} ms)")
    for name, ok in results.get("targets", {}).items():
        lines.append(f"target {name}: {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="*", default=list(BACKBONES), choices=list(BACKBONES),
                   help="latency benchmarks to run (none: only --adapt)")
    p.add_argument("--bundles", default=os.path.join("out", "bench", "bundles"),
                   help="where exported bench bundles are cached (default out/bench/bundles)")
    p.add_argument("--reps", type=int, default=30, help="timed predict calls per configuration (default 30)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--omp-threads", type=int, default=None,
                   help="OpenMP threads of metaedge's CPU kernels (sets OMP_NUM_THREADS before they load; default: "
                        "the environment's)")
    p.add_argument("--no-io", action="store_true", help="skip the gallery store measurements")
    p.add_argument("--gallery-sizes", type=int, nargs="+", default=[10, 1000, 10000, 100000],
                   help="gallery sizes for the store vs old-format comparison (default 10 1000 10000 100000)")
    p.add_argument("--adapt", action="store_true", help="also measure accuracy before/after adapt() on Omniglot")
    p.add_argument("--omniglot", default=os.environ.get("METAEDGE_OMNIGLOT"), help="Omniglot zips directory")
    p.add_argument("--omniglot-checkpoint", nargs="+", default=[], metavar="[LABEL=]PATH",
                   help="trained conv4 checkpoints to compare (else a ProtoNet is trained briefly)")
    p.add_argument("--train-seconds", type=float, default=240.0, help="training time for --adapt (default 240)")
    p.add_argument("--adapt-episodes", type=int, default=100)
    p.add_argument("--json", default=os.path.join("out", "bench", "sdk.json"), help="where to write JSON")
    args = p.parse_args(argv)
    if args.omp_threads:
        if "metaedge._C" in sys.modules:
            p.error("--omp-threads must be applied before metaedge's kernels are loaded")
        os.environ["OMP_NUM_THREADS"] = str(args.omp_threads)
    rng = np.random.default_rng(0)
    os.makedirs(args.bundles, exist_ok=True)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results: dict = {"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                                 "cores": os.cpu_count(), "loadavg_1min_at_start": load_before,
                                 "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
                     "backbones": {}}
    os.makedirs("out", exist_ok=True)
    workdir = tempfile.mkdtemp(dir="out")
    try:
        for name in args.backbones:
            results["backbones"][name] = bench_backbone(name, make_bundle(name, args.bundles), args.reps,
                                                        args.threads, rng, workdir)
        if not args.no_io:
            results["gallery_store"] = bench_gallery_store(args.gallery_sizes, 40, rng, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.adapt:
        if not args.omniglot:
            p.error("--adapt needs --omniglot DIR (or $METAEDGE_OMNIGLOT)")
        results["adapt"] = bench_adapt(args.omniglot, args.omniglot_checkpoint, args.adapt_episodes,
                                       args.train_seconds, os.path.dirname(os.path.abspath(args.bundles)), rng)
    results["targets"] = {f"kernels+pre-processing < 10% of predict at 1,000 classes ({name})":
                          r["by_classes"]["1000"]["kernels_plus_preprocessing_share"] < 0.10
                          for name, r in results["backbones"].items()}
    results["machine"]["loadavg_1min_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(table(results))
    print(f"(JSON: {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
