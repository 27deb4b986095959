"""Shared benchmark helpers: thread pinning, median timing, environment capture, JSON, a printed table.

Typical use::

    from metaedge.bench import common
    common.pin_threads(2)          # before numpy/torch/faiss are imported: every library gets 2 threads
    import numpy as np
    t = common.time_call(lambda: np.dot(a, b))        # {"median_ms", "min_ms", "max_ms", "repeats"}
    ts = common.time_interleaved({"numpy": f, "mine": g})  # round-robin: fair under a changing load
    rows = [{"case": "n=1000", "method": "numpy", "ms": t["median_ms"]}, ...]
    common.add_ratios(rows, group=("case",), reference="metaedge")
    common.print_table(rows, [("case", "case", "{}"), ("method", "method", "{}"), ("ms", "ms", "{:.3f}"),
                              ("vs_reference", "x slower than metaedge", "{:.2f}")])
    common.write_json(path, {"environment": common.environment(), "results": rows})
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Iterable, Sequence

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")


def pin_threads(threads: int) -> None:
    """Give every library the same thread count. Environment variables work only before numpy, torch, faiss
    (and metaedge's OpenMP runtime) are loaded, so call this first; libraries already loaded are set through
    their own APIs where they have one."""
    for var in THREAD_VARIABLES:
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
    except ImportError:
        pass


def time_call(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 15, max_seconds: float = 5.0,
              min_repeats: int = 3) -> dict:
    """Median wall time of fn() after `warmup` untimed calls. Stops early once `max_seconds` have been spent
    timing (but not before `min_repeats` calls), so slow baselines do not stall a run."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (len(times) < min_repeats or spent < max_seconds):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3, "max_ms": max(times) * 1e3,
            "repeats": len(times)}


def time_interleaved(fns: dict[str, Callable[[], object]], *, warmup: int = 1, repeats: int = 15,
                     max_seconds: float = 10.0, min_repeats: int = 3,
                     flushes_cache: Iterable[str] = ()) -> dict[str, dict]:
    """Like time_call for several callables at once, measured round-robin (one call of each per round), so a
    change of machine load during the run hits all of them alike and their ratios stay meaningful. Stops after
    `repeats` rounds, or once `max_seconds` have been spent in total (but not before `min_repeats` rounds).
    Names in `flushes_cache` (e.g. a large memory copy) evict the caches: the function timed after one of them
    is first called once untimed, so it is not charged for refilling them."""
    flushes_cache = set(flushes_cache)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent, rounds = 0.0, 0
    previous = None
    while rounds < repeats and (rounds < min_repeats or spent < max_seconds):
        for name, fn in fns.items():
            if previous in flushes_cache and name not in flushes_cache:
                fn()
            previous = name
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            spent += elapsed
        rounds += 1
    return {name: {"median_ms": statistics.median(t) * 1e3, "min_ms": min(t) * 1e3, "max_ms": max(t) * 1e3,
                   "repeats": len(t)} for name, t in times.items()}


def numpy_topk(queries, protos, k: int):
    """The numpy way to a top-k: one matmul (BLAS gemv/gemm), argpartition, then a stable sort of the k.
    (scores[b, k], indices[b, k]), scores descending - the numpy baseline of the top-k benchmarks."""
    import numpy as np
    s = queries @ protos.T
    part = np.argpartition(s, -k, axis=1)[:, -k:]
    top = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(top, order, 1), np.take_along_axis(part, order, 1)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - a broken optional package is reported as absent
        return None
    return getattr(mod, "__version__", "unknown")


def environment() -> dict:
    """What the numbers depend on: CPU, threads, library versions and their BLAS, load, SIMD variant."""
    env: dict = {
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "thread_variables": {var: os.environ.get(var) for var in THREAD_VARIABLES},
        "openblas_variables": {var: os.environ.get(var) for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "versions": {m: _version(m) for m in ("numpy", "torch", "faiss", "PIL", "metaedge")},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if "torch" in sys.modules:
        env["torch_threads"] = sys.modules["torch"].get_num_threads()
    if "faiss" in sys.modules:
        env["faiss_threads"] = sys.modules["faiss"].omp_get_max_threads()
    try:
        from threadpoolctl import threadpool_info
        env["thread_pools"] = [{k: pool.get(k) for k in ("user_api", "internal_api", "num_threads", "version",
                                                          "architecture", "prefix")} for pool in threadpool_info()]
    except ImportError:
        env["thread_pools"] = "threadpoolctl not installed (pip install threadpoolctl to see which BLAS runs)"
    try:
        import metaedge
        info = metaedge.build_info()
        native = info.get("native", {})
        env["metaedge"] = {"version": info.get("version"), "simd": native.get("simd"),
                           "openmp_threads": native.get("openmp_threads"), "compiler": native.get("compiler")}
    except Exception as exc:  # noqa: BLE001 - the benchmark still runs its baselines
        env["metaedge"] = f"unavailable: {exc}"
    return env


def write_json(path: str, payload: dict) -> None:
    """Atomic write (metaedge.runtime.fileio: a temporary file in the same folder, fsync, rename)."""
    from metaedge.runtime.fileio import atomic_write_bytes
    atomic_write_bytes(path, (json.dumps(payload, indent=1, default=str) + "\n").encode())


def add_ratios(rows: list[dict], group: Sequence[str], reference: str, key: str = "ms",
               out: str = "vs_reference") -> None:
    """rows[i][out] = rows[i][key] / (key of the row whose "method" is `reference` in the same group):
    > 1 means slower than the reference. Rows of groups without the reference get None."""
    ref_values = {tuple(r[g] for g in group): r[key] for r in rows if r.get("method") == reference}
    for r in rows:
        base = ref_values.get(tuple(r[g] for g in group))
        r[out] = (r[key] / base) if (base and r.get(key) is not None) else None


def print_table(rows: Iterable[dict], columns: Sequence[tuple[str, str, str]], title: str | None = None,
                file=None) -> None:
    """columns: (key, header, format). Missing or None values print as '-'."""
    file = file or sys.stdout
    rows = list(rows)
    cells = [[header for _, header, _ in columns]]
    for r in rows:
        line = []
        for key, _, fmt in columns:
            value = r.get(key)
            line.append("-" if value is None else fmt.format(value))
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    if title:
        print(f"\n{title}", file=file)
    for n, line in enumerate(cells):
        print("  ".join(c.rjust(w) if n and _numeric(c) else c.ljust(w) for c, w in zip(line, widths)).rstrip(),
              file=file)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=file)
    file.flush()


def _numeric(text: str) -> bool:
    return text.replace(".", "", 1).replace("x", "").replace("-", "", 1).replace("e", "", 1).isdigit()
