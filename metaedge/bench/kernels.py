"""Benchmark of metaedge's CPU kernels against the usual alternatives, every baseline in the same run and all
with the same number of threads (--threads, default 2). Prints one table per section and writes JSON.

Sections (--only picks one; default all):

  topk        k = 5, C in {1k, 10k, 100k}, d in {64, 512}, batch in {1, 32}. metaedge.kernels.topk with
              metric dot, euclidean and cosine, against numpy (matmul + argpartition + sort of the k), torch CPU
              (mm + topk) and faiss-cpu IndexFlatIP / IndexFlatL2, each faiss index both at faiss' default
              distance_compute_blas_threshold and at 20 (then batches of 20+ queries go through BLAS).
              Column "x metaedge" divides by metaedge's time for the same metric (dot for numpy, torch and
              faiss IP; euclidean for faiss L2): above 1 means metaedge is faster. For batch 1 the
              memory-bandwidth floor is the bytes of the prototype matrix divided by the copy bandwidth
              measured in this run (read + write bytes of a 256 MiB copy, the faster of a 1-thread and an
              N-thread copy, timed in the same rounds as the methods), and "x floor" is each method's time over
              it. All methods of a case are timed round-robin, so a change of load hits them alike.

  matcher     metaedge.kernels.PrototypeMatcher (the class matrix packed once, as a device app scoring frame
              after frame uses it; EdgeClassifier keeps one per gallery snapshot) against metaedge.kernels.topk
              on the same matrix: same C, d as topk, batch in {1, 3, 32}, each metric, the two timed in
              alternation and nothing else in between (in the topk section's round-robin every other method
              reads the row-major matrix, which keeps it warm and the packed copy cold). "x topk" is the
              matcher's time over topk's (below 1: the matcher is faster); "packed" whether it keeps a packed
              copy (up to 8 MiB of class matrix); "pack ms" the one-off making of the matcher.

  adapt       metaedge.kernels.adapt_head against the same maths in torch eager autograd, 100 steps, (C, d) in
              {(5, 64), (20, 512), (100, 512), (1000, 512)}, n = 5 shots x C support rows (standard normal),
              W initialised to the class means. The maths of both, per step:
                  Wn = W / max(||W_c||, 1e-12) per row;  Sn = S / max(||S_i||, 1e-12) per row
                  logits = scale * Sn Wn^T  [n, C];  loss = mean_i cross_entropy(logits_i, y_i)
                  g = d loss / d W;  v = momentum * v + g + weight_decay * W;  W = W - lr * v
              with lr 0.1, momentum 0.9, weight_decay 5e-4, scale 10 (torch: F.normalize, F.cross_entropy,
              torch.optim.SGD, which is exactly that update). Both start from the same W each timed call; the
              column "max |dloss|" is the largest difference of the 100 per-step losses between the two.

  preprocess  metaedge.kernels.preprocess against PIL + numpy (Image.resize BILINEAR, then /255, mean/std,
              HWC -> CHW) and torch (F.interpolate bilinear, align_corners=False, antialias=False: the same maths
              as metaedge) for 1 and 32 frames of 480x640 RGB -> 3x224x224 (ImageNet mean/std) and -> 1x28x28
              gray (ITU-R 601 luma; PIL converts to "L" before resizing, as a user would). PIL antialiases when
              shrinking, so its pixels differ; it is the pipeline people write, not a numerical reference.

  compact     metaedge.kernels.CompactClassMatrix (int8 first pass + exact float32 re-rank) against the float32
              scan, numpy gemv, faiss IndexFlatIP and faiss IndexScalarQuantizer (8-bit and fp16) + a top-64
              float32 re-rank, and the float32 / int8 memory floors, at 10k / 100k (1M with --large) x 512 classes,
              batch 1 / 8 / 32, 1 and 2 threads (tools/bench/compact.py says more).

  scale       enrolling 200,000 (1,000,000 with --large) x 512 classes one add() at a time: add and match times
              as the matrix grows, memory per class, and the time to rebuild the compact copy from float32 rows.

A section whose metaedge kernel is not implemented yet (or whose baseline package is missing) is skipped
with a message. --quick uses fewer repetitions (same cases) for a fast look.

Environment quirk: some machines set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (older OpenBLAS builds need them on
certain processors); they make a current numpy pick a slower kernel. Run the benchmark with both unset, in
that command only:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/bench/kernels.py --json out/bench_kernels.json

The script warns when they are set; the JSON records them, the CPU, the thread counts, library versions and
which BLAS kernel numpy runs (via threadpoolctl). Run it on a quiet machine: the load average is recorded too.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


from metaedge.bench import common  # stdlib only; numpy & co. load after the thread pinning

TOPK_K = 5
TOPK_CLASSES = (1000, 10000, 100000)
TOPK_DIMS = (64, 512)
TOPK_BATCHES = (1, 32)
MATCHER_BATCHES = (1, 3, 32)
ADAPT_SIZES = ((5, 64), (20, 512), (100, 512), (1000, 512))
ADAPT_STEPS, ADAPT_SHOTS = 100, 5
ADAPT_HYPER = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "scale": 10.0}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.5,), (0.5,)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Timer:
    def __init__(self, quick: bool):
        self.quick = quick

    def many(self, fns: dict, slow: bool = False, flushes_cache=()) -> dict:
        if self.quick:
            return common.time_interleaved(fns, warmup=1, repeats=5, max_seconds=2.0, min_repeats=1 if slow else 3,
                                           flushes_cache=flushes_cache)
        return common.time_interleaved(fns, warmup=1, repeats=21, max_seconds=30.0 if slow else 10.0,
                                       min_repeats=3 if slow else 5, flushes_cache=flushes_cache)


def not_implemented(exc: Exception) -> bool:
    return "not implemented" in str(exc)


# ----------------------------------------------------------------------------------------------------------- topk
class CopyProbe:
    """Copies of a buffer much larger than the caches, with 1 thread and with N threads, to time alongside the
    methods (round-robin), so the bandwidth floor is measured under the same load as what it bounds."""

    def __init__(self, threads: int, nbytes: int = 256 << 20):
        from concurrent.futures import ThreadPoolExecutor

        import numpy as np
        self.nbytes = nbytes
        self.src = np.ones(nbytes // 4, np.float32)
        self.dst = np.empty_like(self.src)
        edges = np.linspace(0, self.src.size, threads + 1).astype(int)
        self.bounds = list(zip(edges[:-1], edges[1:]))
        self.pool = ThreadPoolExecutor(threads)
        self.threads = threads

    def copy_1(self):
        import numpy as np
        np.copyto(self.dst, self.src)

    def copy_n(self):  # numpy releases the GIL while copying
        import numpy as np
        list(self.pool.map(lambda b: np.copyto(self.dst[b[0]:b[1]], self.src[b[0]:b[1]]), self.bounds))

    def bandwidth(self, timings: dict) -> dict:
        """Read + write bytes per second of the faster copy."""
        single, multi = timings["copy 1 thread"]["median_ms"], timings[f"copy {self.threads} threads"]["median_ms"]
        return {"copy_1_thread_ms": single, f"copy_{self.threads}_threads_ms": multi,
                "bandwidth_gb_s": 2 * self.nbytes / (min(single, multi) * 1e-3) / 1e9}


def topk_class_matrices(rng):
    """(C, d, standard normal float32 protos[C, d]) for every case of the topk and matcher sections."""
    import numpy as np
    for C in TOPK_CLASSES:
        for d in TOPK_DIMS:
            yield C, d, rng.standard_normal((C, d)).astype(np.float32)


def bench_topk(args, timer: Timer) -> tuple[list[dict], dict]:
    import numpy as np

    from metaedge import kernels
    baselines: dict = {}
    try:
        import torch
        baselines["torch"] = torch
    except ImportError:
        log("topk: torch not installed, skipping its baseline")
    try:
        import faiss
        faiss.omp_set_num_threads(args.threads)
        baselines["faiss"] = faiss
    except ImportError:
        log("topk: faiss not installed (pip install faiss-cpu), skipping its baseline")
    probe = np.ones((1, 4), np.float32)
    try:
        kernels.topk(probe, probe, 1)
    except RuntimeError as exc:
        if not_implemented(exc):
            log(f"topk: skipped, the CPU kernel is not implemented yet ({exc})")
            return [], {}
        raise

    probe = CopyProbe(args.threads)
    bandwidths = []
    rng = np.random.default_rng(0)
    k = TOPK_K
    rows: list[dict] = []
    for C, d, protos in topk_class_matrices(rng):
        indexes = {}
        if "faiss" in baselines:
            faiss = baselines["faiss"]
            default_threshold = faiss.cvar.distance_compute_blas_threshold
            for name, cls in (("IP", faiss.IndexFlatIP), ("L2", faiss.IndexFlatL2)):
                indexes[name] = cls(d)
                indexes[name].add(protos)
        for b in TOPK_BATCHES:
            log(f"  topk C={C} d={d} batch={b}")
            queries = rng.standard_normal((b, d)).astype(np.float32)
            methods = {}
            for metric in ("dot", "euclidean", "cosine"):
                methods[f"metaedge {metric}"] = (metric, lambda m=metric: kernels.topk(queries, protos, k, m))

            def numpy_topk():
                return common.numpy_topk(queries, protos, k)
            methods["numpy matmul+argpartition"] = ("dot", numpy_topk)
            if "torch" in baselines:
                torch = baselines["torch"]
                tq, tp = torch.from_numpy(queries), torch.from_numpy(protos)

                def torch_topk():
                    with torch.inference_mode():
                        return torch.topk(torch.mm(tq, tp.T), k, dim=1)
                methods["torch mm+topk"] = ("dot", torch_topk)
            for name, index in indexes.items():
                metric = "dot" if name == "IP" else "euclidean"
                for label, threshold in (("default", default_threshold), ("blas>=20", 20)):
                    def faiss_search(index=index, threshold=threshold):
                        faiss.cvar.distance_compute_blas_threshold = threshold
                        try:
                            return index.search(queries, k)
                        finally:
                            faiss.cvar.distance_compute_blas_threshold = default_threshold
                    methods[f"faiss Flat{name} {label}"] = (metric, faiss_search)

            # The baselines must compute the same thing: compare their best scores with metaedge's.
            me_dot = kernels.topk(queries, protos, k, "dot")[0]
            np_dot = numpy_topk()[0]
            if not np.allclose(me_dot, np_dot, rtol=1e-3, atol=1e-3):
                log(f"  WARNING: metaedge and numpy disagree on the top-{k} dot scores at C={C} d={d} b={b}")

            case = {"C": C, "d": d, "batch": b}
            fns = {method: fn for method, (_, fn) in methods.items()}
            if b == 1:
                fns.update({"copy 1 thread": probe.copy_1, f"copy {args.threads} threads": probe.copy_n})
                # (a 256 MiB copy evicts the caches: the method timed after it gets an untimed call first)
            copies = ("copy 1 thread", f"copy {args.threads} threads")
            timings = timer.many(fns, slow=C * d * b >= 10000 * 512 * 32, flushes_cache=copies)
            floor_ms = None
            if b == 1:
                bw = probe.bandwidth(timings)
                bandwidths.append({**case, **bw})
                floor_ms = protos.nbytes / (bw["bandwidth_gb_s"] * 1e9) * 1e3
            for method, (metric, _) in methods.items():
                t = timings[method]
                rows.append({**case, "method": method, "metric": metric, "ms": t["median_ms"],
                             "min_ms": t["min_ms"], "repeats": t["repeats"], "floor_ms": floor_ms})
    reference = {(r["C"], r["d"], r["batch"], r["metric"]): r["ms"] for r in rows if r["method"].startswith("metaedge")}
    for r in rows:
        r["x_metaedge"] = r["ms"] / reference[(r["C"], r["d"], r["batch"], r["metric"])]
        r["x_floor"] = r["ms"] / r["floor_ms"] if r["floor_ms"] else None
    measured = ", ".join(f"{bw['bandwidth_gb_s']:.1f}" for bw in bandwidths)
    common.print_table(rows, [("C", "C", "{}"), ("d", "d", "{}"), ("batch", "batch", "{}"),
                              ("method", "method", "{}"), ("ms", "median ms", "{:.3f}"),
                              ("x_metaedge", "x metaedge", "{:.2f}"), ("floor_ms", "floor ms", "{:.2f}"),
                              ("x_floor", "x floor", "{:.2f}")],
                       title=f"topk, k={k}, {args.threads} threads; batch-1 floor = protos bytes / copy bandwidth "
                             f"(read + write of a 256 MiB copy, timed round-robin with the methods: {measured} GB/s)")
    probe.pool.shutdown()
    return rows, {"copy_bandwidth": bandwidths, "targets": topk_targets(rows)}


def topk_targets(rows: list[dict]) -> list[dict]:
    """Issue 2 targets at C=100k, d=512, judged strictly: metaedge's slowest metric against the best baseline."""
    out = []

    def pick(batch, pred):
        return [r for r in rows if r["C"] == 100000 and r["d"] == 512 and r["batch"] == batch and pred(r["method"])]

    me1, numpy1 = pick(1, lambda m: m.startswith("metaedge")), pick(1, lambda m: m.startswith("numpy"))
    faiss1 = pick(1, lambda m: m.startswith("faiss"))
    if me1:
        worst = max(me1, key=lambda r: r["ms"])
        out.append({"target": "batch 1: within 1.3x of the bandwidth floor", "value": worst["x_floor"],
                    "met": worst["x_floor"] <= 1.3, "metaedge": worst["method"]})
        if numpy1:
            out.append({"target": "batch 1: at least as fast as numpy", "value": numpy1[0]["ms"] / worst["ms"],
                        "met": worst["ms"] <= numpy1[0]["ms"], "metaedge": worst["method"]})
        if faiss1:
            best = min(faiss1, key=lambda r: r["ms"])
            out.append({"target": f"batch 1: 1.5x faster than faiss ({best['method']})",
                        "value": best["ms"] / worst["ms"], "met": best["ms"] >= 1.5 * worst["ms"],
                        "metaedge": worst["method"]})
    me32 = pick(32, lambda m: m.startswith("metaedge"))
    others32 = pick(32, lambda m: m.startswith("numpy") or (m.startswith("faiss") and "blas>=20" in m))
    if me32 and others32:
        worst = max(me32, key=lambda r: r["ms"])
        best = min(others32, key=lambda r: r["ms"])
        out.append({"target": f"batch 32: at least 0.8x the speed of the best of numpy / tuned faiss "
                              f"({best['method']})", "value": best["ms"] / worst["ms"],
                    "met": best["ms"] / worst["ms"] >= 0.8, "metaedge": worst["method"]})
    return out


# ---------------------------------------------------------------------------------------------------------- adapt
def bench_adapt(args, timer: Timer) -> tuple[list[dict], dict]:
    import numpy as np

    from metaedge import kernels
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        log("adapt: torch not installed, nothing to compare against; skipped")
        return [], {}
    rng = np.random.default_rng(1)
    try:
        kernels.adapt_head(np.zeros((2, 4), np.float32), np.ones((2, 4), np.float32), [0, 1], steps=1)
    except RuntimeError as exc:
        if not_implemented(exc):
            log(f"adapt: skipped, the CPU kernel is not implemented yet ({exc})")
            return [], {}
        raise
    h = ADAPT_HYPER
    rows = []
    for C, d in ADAPT_SIZES:
        n = ADAPT_SHOTS * C
        log(f"  adapt C={C} d={d} n={n}, {ADAPT_STEPS} steps")
        support = rng.standard_normal((n, d)).astype(np.float32)
        labels = np.repeat(np.arange(C), ADAPT_SHOTS)
        w0 = np.stack([support[labels == c].mean(0) for c in range(C)]).astype(np.float32)
        result = {}

        def run_metaedge():
            w = w0.copy()
            result["metaedge"] = kernels.adapt_head(w, support, labels, steps=ADAPT_STEPS, lr=h["lr"],
                                                    momentum=h["momentum"], weight_decay=h["weight_decay"],
                                                    scale=h["scale"])

        s_t, y_t = torch.from_numpy(support), torch.from_numpy(labels)

        def run_torch():
            w = torch.tensor(w0, requires_grad=True)
            opt = torch.optim.SGD([w], lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"])
            sn = F.normalize(s_t, dim=1)
            losses = []
            for _ in range(ADAPT_STEPS):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(h["scale"] * sn @ F.normalize(w, dim=1).T, y_t)
                loss.backward()
                opt.step()
                losses.append(loss.detach())
            result["torch"] = torch.stack(losses).numpy()

        timings = timer.many({"metaedge": run_metaedge, "torch": run_torch}, slow=C * d >= 100 * 512)
        t_me, t_torch = timings["metaedge"], timings["torch"]
        dloss = float(np.abs(result["metaedge"].astype(np.float64) - result["torch"]).max())
        case = {"C": C, "d": d, "n": n}
        rows.append({**case, "method": "metaedge adapt_head", "ms": t_me["median_ms"],
                     "ms_per_step": t_me["median_ms"] / ADAPT_STEPS, "max_dloss": dloss})
        rows.append({**case, "method": "torch eager autograd", "ms": t_torch["median_ms"],
                     "ms_per_step": t_torch["median_ms"] / ADAPT_STEPS, "max_dloss": dloss})
    common.add_ratios(rows, group=("C", "d"), reference="metaedge adapt_head", out="x_metaedge")
    common.print_table(rows, [("C", "C", "{}"), ("d", "d", "{}"), ("n", "n", "{}"), ("method", "method", "{}"),
                              ("ms", "median ms", "{:.2f}"), ("ms_per_step", "ms/step", "{:.3f}"),
                              ("x_metaedge", "x metaedge", "{:.2f}"), ("max_dloss", "max |dloss|", "{:.1e}")],
                       title=f"adapt_head, {ADAPT_STEPS} steps, {args.threads} threads")
    targets = []
    for C, d, want in ((20, 512, 20.0), (1000, 512, 0.8)):
        torch_row = next((r for r in rows if (r["C"], r["d"]) == (C, d) and r["method"].startswith("torch")), None)
        if torch_row:
            targets.append({"target": f"adapt_head at ({C}, {d}): at least {want}x torch eager",
                            "value": torch_row["x_metaedge"], "met": torch_row["x_metaedge"] >= want})
    return rows, {"targets": targets}


# ----------------------------------------------------------------------------------------------------- preprocess
def bench_preprocess(args, timer: Timer) -> tuple[list[dict], dict]:
    import numpy as np

    from metaedge import kernels
    try:
        from PIL import Image
    except ImportError:
        log("preprocess: pillow not installed, nothing to compare against; skipped")
        return [], {}
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = None
    try:
        kernels.preprocess(np.zeros((4, 4, 3), np.uint8), (2, 2))
    except RuntimeError as exc:
        if not_implemented(exc):
            log(f"preprocess: skipped, the CPU kernel is not implemented yet ({exc})")
            return [], {}
        raise
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (32, 480, 640, 3), dtype=np.uint8)
    targets_spec = {"3x224x224 rgb": ((224, 224), "keep", IMAGENET_MEAN, IMAGENET_STD),
                    "1x28x28 gray": ((28, 28), "gray", GRAY_MEAN, GRAY_STD)}
    rows = []
    for count in (1, 32):
        batch = frames[:count]
        for name, (size, color, mean, std) in targets_spec.items():
            log(f"  preprocess {count} frame(s) -> {name}")
            mean_a = np.asarray(mean, np.float32)[:, None, None]
            std_a = np.asarray(std, np.float32)[:, None, None]

            def run_pil():
                out = []
                for frame in batch:
                    img = Image.fromarray(frame)
                    if color == "gray":
                        img = img.convert("L")
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                    a = np.asarray(img, np.float32) / 255.0
                    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
                    out.append((a - mean_a) / std_a)
                return np.stack(out)

            methods = {"metaedge preprocess": lambda: kernels.preprocess(batch, size, mean, std, color),
                       "PIL + numpy": run_pil}
            if torch is not None:
                luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
                mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

                def run_torch():
                    with torch.inference_mode():
                        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
                        if color == "gray":
                            x = (x * luma).sum(1, keepdim=True)
                        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
                        return (x / 255.0 - mean_t) / std_t
                methods["torch interpolate"] = run_torch
            for method, t in timer.many(methods).items():
                rows.append({"frames": count, "output": name, "method": method, "ms": t["median_ms"]})
    common.add_ratios(rows, group=("frames", "output"), reference="metaedge preprocess", out="x_metaedge")
    common.print_table(rows, [("frames", "frames", "{}"), ("output", "output", "{}"), ("method", "method", "{}"),
                              ("ms", "median ms", "{:.3f}"), ("x_metaedge", "x metaedge", "{:.2f}")],
                       title=f"preprocess, 480x640 RGB uint8 frames, {args.threads} threads")
    targets = [{"target": f"preprocess {r['frames']} frame(s) -> {r['output']}: at least 2x PIL + numpy",
                "value": r["x_metaedge"], "met": r["x_metaedge"] >= 2.0}
               for r in rows if r["method"] == "PIL + numpy"]
    return rows, {"targets": targets}


def bench_matcher(args, timer: Timer) -> tuple[list[dict], dict]:
    import numpy as np

    from metaedge import kernels
    rng = np.random.default_rng(0)
    k = TOPK_K
    rows: list[dict] = []
    for C, d, protos in topk_class_matrices(rng):
        for metric in ("dot", "euclidean", "cosine"):
            started = time.perf_counter()
            matcher = kernels.PrototypeMatcher(protos, metric, copy=False)
            pack_ms = (time.perf_counter() - started) * 1e3
            for b in MATCHER_BATCHES:
                log(f"  matcher C={C} d={d} {metric} batch={b}")
                queries = rng.standard_normal((b, d)).astype(np.float32)
                want = kernels.topk(queries, protos, k, metric)
                got = matcher.topk_float32(queries, k)
                if not (np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0], rtol=1e-4, atol=1e-4)):
                    log(f"  WARNING: matcher and topk disagree at C={C} d={d} {metric} b={b}")
                t = timer.many({"topk": lambda m=metric: kernels.topk(queries, protos, k, m),
                                "matcher": lambda: matcher.topk_float32(queries, k)},
                               slow=C * d * b >= 10000 * 512 * 32)
                rows.append({"C": C, "d": d, "metric": metric, "batch": b, "topk_ms": t["topk"]["median_ms"],
                             "matcher_ms": t["matcher"]["median_ms"], "pack_ms": pack_ms,
                             "packed": "yes" if matcher.packed else "no",
                             "x_topk": t["matcher"]["median_ms"] / t["topk"]["median_ms"]})
        del matcher
    common.print_table(rows, [("C", "C", "{}"), ("d", "d", "{}"), ("metric", "metric", "{}"),
                              ("batch", "batch", "{}"), ("topk_ms", "topk ms", "{:.3f}"),
                              ("matcher_ms", "matcher ms", "{:.3f}"), ("x_topk", "x topk", "{:.2f}"),
                              ("packed", "packed", "{}"), ("pack_ms", "pack ms", "{:.2f}")],
                       title=f"PrototypeMatcher vs topk, k={k}, {args.threads} threads")
    return rows, {}


def bench_compact(args, timer: Timer) -> tuple[list[dict], dict]:
    from metaedge.bench import compact
    return compact.bench_compact(args, timer)


def bench_scale(args, timer: Timer) -> tuple[list[dict], dict]:
    from metaedge.bench import compact
    return compact.bench_scale(args, timer)


SECTIONS = {"topk": bench_topk, "matcher": bench_matcher, "adapt": bench_adapt, "preprocess": bench_preprocess,
            "compact": bench_compact, "scale": bench_scale}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append",
                        help="run only this section (repeatable); default: all")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (same cases), for a fast look")
    parser.add_argument("--threads", type=int, default=2, help="threads for every library (default 2; the compact "
                        "section times 1 and 2 threads itself)")
    parser.add_argument("--large", action="store_true", help="also 1,000,000 classes in the compact and scale "
                        "sections (about 8 GiB of memory and several minutes)")
    parser.add_argument("--json", default=os.path.join("out", "bench_kernels.json"),
                        help="where to write the results (default out/bench_kernels.json)")
    args = parser.parse_args(argv)
    common.pin_threads(args.threads)  # before numpy, torch, faiss and metaedge's OpenMP load
    quirks = {v: os.environ[v] for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ}
    if quirks:
        log(f"WARNING: {quirks} set: numpy's OpenBLAS may pick a slower kernel. For a fair run: "
            "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/bench/kernels.py")
    timer = Timer(args.quick)
    started = time.time()
    payload = {"environment": None, "quick": args.quick, "threads": args.threads, "sections": {}}
    targets = []
    for name in args.only or list(SECTIONS):
        log(f"[{name}]")
        rows, extra = SECTIONS[name](args, timer)
        payload["sections"][name] = {"rows": rows, **extra}
        targets += extra.get("targets", [])
    payload["environment"] = common.environment()
    payload["seconds"] = time.time() - started
    if targets:
        common.print_table([{**t, "verdict": "met" if t["met"] else "NOT MET"} for t in targets],
                           [("target", "target", "{}"), ("value", "measured", "{:.2f}"), ("verdict", "", "{}")],
                           title="targets (issues 2 and 19)")
    env = payload["environment"]
    pools = env["thread_pools"]
    blas = ", ".join(f"{p.get('prefix')}: {p.get('internal_api')} {p.get('version')} ({p.get('architecture')}, "
                     f"{p.get('num_threads')} threads)" for p in pools if p.get("user_api") == "blas") \
        if isinstance(pools, list) else pools
    print(f"\n{env['cpu_model']}; load average at the end {env['load_average_1_5_15']}; BLAS libraries: {blas}; "
          f"metaedge SIMD: {env['metaedge'].get('simd') if isinstance(env['metaedge'], dict) else env['metaedge']}")
    common.write_json(args.json, payload)
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
