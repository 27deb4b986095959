#!/usr/bin/env python3
"""Every CUDA kernel once on small inputs, checked against numpy: the workload that tools/gpu_check.sh runs
under compute-sanitizer (memcheck for out-of-bounds/misaligned accesses, racecheck for shared-memory races in
the top-k selection). No torch, no pytest, so the sanitizer has little else to trace.

    python3 tools/gpu_kernel_smoke.py [--only topk]
Exit status 0 when every result matches, 1 otherwise (the sanitizer's own findings set its exit status).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ref_topk(q, p, k, metric):
    q, p = q.astype(np.float64), p.astype(np.float64)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    s = q @ p.T
    if metric == "euclidean":
        s = -((q * q).sum(1)[:, None] + (p * p).sum(1)[None, :] - 2 * s)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1)


def check(name, ok, failures):
    print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
    if not ok:
        failures.append(name)


def run_topk(rng, gpu, kernels, failures):
    # One case per code path: rows (1 and 4 queries per block, long lists), tiled, materialised, scalar loads.
    cases = [(1, 700, 64, 5, np.float32), (3, 700, 64, 5, np.float16), (20, 900, 64, 9, np.float32),
             (70, 900, 64, 32, np.float16), (5, 600, 32, 100, np.float32), (4, 300, 16, 290, np.float32),
             (6, 333, 7, 4, np.float32), (1, 257, 12, 3, np.float16)]
    for b, C, d, k, dtype in cases:
        q = rng.standard_normal((b, d)).astype(np.float32)
        p = rng.standard_normal((C, d)).astype(dtype)
        for metric in ("cosine", "dot", "euclidean"):
            s, idx = kernels.topk(gpu(q), gpu(p), k, metric)
            want = ref_topk(q, p.astype(np.float32), k, metric)
            scale = 1.0 if metric == "cosine" else float(np.abs(want).max()) + 1
            got = s.to_numpy()
            ok = np.allclose(got, want, rtol=0, atol=1e-5 * scale) and len(set(idx.to_numpy()[0].tolist())) == k
            check(f"topk b={b} C={C} d={d} k={k} {np.dtype(dtype).name} {metric}", ok, failures)
    p = rng.standard_normal((500, 16)).astype(np.float32)
    p[123, 4] = np.nan
    try:
        kernels.topk(gpu(rng.standard_normal((2, 16)).astype(np.float32)), gpu(p), 3)
        check("topk rejects NaN protos", False, failures)
    except ValueError as exc:
        check("topk rejects NaN protos", f"flat index {123 * 16 + 4})" in str(exc), failures)


def run_others(rng, gpu, kernels, failures):
    x = rng.standard_normal((33, 70)).astype(np.float32)
    got = kernels.l2_normalize(gpu(x)).to_numpy()
    check("l2_normalize", np.allclose(got, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6), failures)

    emb, labels = rng.standard_normal((90, 24)).astype(np.float32), rng.integers(0, 11, 90)
    protos, counts = kernels.class_prototypes(gpu(emb), gpu(labels), 12)
    want = np.stack([emb[labels == c].mean(0) if (labels == c).any() else np.zeros(24) for c in range(12)])
    check("class_prototypes", np.allclose(protos.to_numpy(), want, atol=1e-6)
          and counts.to_numpy().tolist() == np.bincount(labels, minlength=12).tolist(), failures)
    new, new_labels = rng.standard_normal((7, 24)).astype(np.float32), rng.integers(0, 12, 7)
    kernels.update_prototypes(protos, counts, gpu(new), gpu(new_labels))
    all_emb, all_labels = np.concatenate([emb, new]), np.concatenate([labels, new_labels])
    want = np.stack([all_emb[all_labels == c].mean(0) if (all_labels == c).any() else np.zeros(24)
                     for c in range(12)])
    check("update_prototypes", np.allclose(protos.to_numpy(), want, atol=1e-5), failures)

    W = rng.standard_normal((5, 32)).astype(np.float32)
    S, y = rng.standard_normal((20, 32)).astype(np.float32), rng.integers(0, 5, 20)
    dW = gpu(W)
    losses = kernels.adapt_head(dW, gpu(S), gpu(y), steps=30, lr=0.5).to_numpy()
    check("adapt_head (loss falls, finite)", bool(np.isfinite(losses).all() and losses[-1] < losses[0]), failures)

    frames = rng.integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    for color in ("keep", "gray"):
        out = kernels.preprocess(gpu(frames), (20, 31), color=color).to_numpy()
        oc = 3 if color == "keep" else 1
        check(f"preprocess {color}", out.shape == (2, oc, 20, 31) and bool(np.isfinite(out).all())
              and float(out.min()) >= 0 and float(out.max()) <= 1, failures)
    same = kernels.preprocess(gpu(frames), (37, 53)).to_numpy()
    check("preprocess identity size", np.allclose(same, frames.transpose(0, 3, 1, 2) / 255.0, atol=1e-6), failures)
    # camera layouts, boxes at the borders, every resize mode, the box prefilter: each against the CPU kernel
    layouts = {"bgr": (48, 62, 3), "bgra": (48, 62, 4), "nv12": (72, 62), "yuyv": (48, 62, 2), "gray": (48, 62)}
    for fmt, shape in layouts.items():
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        for resize in ("squeeze", "letterbox", "center_crop"):
            kw = dict(pixel_format=fmt, resize=resize, antialias=True, rois=[(0, 0, 62, 48), (61, 47, 1, 1),
                                                                           (5, 7, 33, 21)])
            got = kernels.preprocess(gpu(frame), (9, 7), **kw).to_numpy()
            check(f"preprocess {fmt} {resize}", np.allclose(got, kernels.preprocess(frame, (9, 7), **kw), atol=4e-5),
                  failures)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["topk", "others"], help="run one group")
    args = ap.parse_args(argv)
    from metaedge import cuda, kernels
    if not cuda.is_available():
        print(f"no usable GPU: {cuda.why_unavailable()}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(3)
    gpu = cuda.DeviceArray.from_numpy
    failures: list[str] = []
    if args.only in (None, "topk"):
        run_topk(rng, gpu, kernels, failures)
    if args.only in (None, "others"):
        run_others(rng, gpu, kernels, failures)
    cuda.synchronize()
    print(f"{'all kernels ok' if not failures else f'{len(failures)} FAILED: ' + ', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
