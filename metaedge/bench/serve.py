#!/usr/bin/env python
"""Load test of `metaedge serve` on loopback (127.0.0.1 only; every phase is bounded in time and stops by itself).

For 1 and 2 worker processes, for a 28x28 PNG and a 224x224 JPEG, at concurrency 1, 8 and 32 (keep-alive
connections, each sending its next request when the last one is answered) for ``--duration`` seconds each:
requests/s and predict latency p50/p99, with ``--enroll-share`` (10%) of the requests enrolling the same image
into one of ten classes. Afterwards the server's class list must hold every acknowledged enrollment (lost = 0),
and no request may fail (errors = 0).

Baselines in the same run: in-process ``EdgeClassifier.predict`` on the same encoded bytes (decoding included,
the same ONNX Runtime threads as one worker), in blocks alternating with blocks of requests to the 1-worker
server -> the HTTP overhead at concurrency 1; and 1 worker vs 2 workers -> the scaling. Targets (issue 14):
overhead <= 1 ms at p50, concurrency 1; 2 workers >= 1.6x the requests/s of 1 on 2 cores.

The servers with 1 and 2 workers run side by side. The predictions-only figures (latency, overhead, scaling)
come from 2 s blocks that alternate between them, so that both see the same drift of a shared machine; then
each server runs a mixed phase (the enrollment share, through every worker into the one gallery store; errors
and lost enrollments).
The client is a minimal asyncio HTTP/1.1 client (a few tens of microseconds per request), so the load generator
is not what is measured; it still shares the machine's cores with the server - on a 2-core machine, read the
scaling with that in mind.

    metaedge bench --suites serve                # ~11 min: the table, and the ratios with the other suites'
    python -m metaedge.bench.serve               # the same (also python tools/bench/serve.py): out/bench/serve.json
    python -m metaedge.bench.serve --quick       # 3 s per phase
    python -m metaedge.bench.serve --bundle my_bundle/ --concurrency 1 8 --workers 1
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from metaedge.bench import common

LABELS = [f"bench-{i}" for i in range(10)]


# ---------------------------------------------------------------------------------------------------- material
def make_bundle(directory: str) -> str:
    """A seeded (untrained) conv4 for 28x28 gray images, exported like a trained one: the network is small, so
    what the server adds is visible."""
    import torch

    from metaedge.export.onnx import export_bundle
    from metaedge.train.backbones import build_backbone
    torch.manual_seed(0)
    model = build_backbone("conv4", color="gray", input_size=28).eval()
    return str(export_bundle(model, os.path.join(directory, "bundle"), overwrite=True).path)


def make_images() -> dict[str, tuple[bytes, str]]:
    from PIL import Image
    rng = np.random.default_rng(0)
    glyph = np.full((28, 28), 255, np.uint8)
    glyph[6:22, 12:16] = 0
    glyph[12:16, 6:22] = 0
    photo = (rng.random((224, 224, 3)) * 60 + np.linspace(60, 190, 224)[None, :, None]).astype(np.uint8)
    out = {}
    for name, array, fmt, mime in (("png28", glyph, "PNG", "image/png"), ("jpeg224", photo, "JPEG", "image/jpeg")):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out[name] = (buf.getvalue(), mime)
    return out


# ---------------------------------------------------------------------------------------------------- the server
def _server_environment() -> dict[str, str]:
    """The server process imports the metaedge this benchmark runs (a source checkout's or the installed one),
    whatever its working directory."""
    import metaedge
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(metaedge.__file__)))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}


class ServerProcess:
    def __init__(self, bundle: str, gallery: str, workdir: str, workers: int):
        args = [sys.executable, "-m", "metaedge", "serve", bundle, gallery, "--port", "0", "--workers", str(workers),
                "--rate-limit", "off", "--no-access-log", "--tokens", os.path.join(workdir, "no-tokens.json")]
        self.log = open(os.path.join(workdir, f"server-{workers}.log"), "w+")
        self.out = open(os.path.join(workdir, f"server-{workers}.out"), "w+")
        self.proc = subprocess.Popen(args, cwd=workdir, stdout=self.out, stderr=self.log, env=_server_environment())
        self.port = None
        seen = set()  # the worker processes that have answered /readyz
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {open(self.log.name).read()[-3000:]}")
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", open(self.out.name).read())
            pid = self._ready_pid(int(m.group(1))) if m else None
            if pid is not None:
                seen.add(pid)
            # every worker up: a connection made before would stay with the workers already listening
            if len(seen) >= workers:
                self.port = int(m.group(1))
                return
            time.sleep(0.2 if pid is None else 0.05)
        self.stop()
        raise RuntimeError(f"the server did not become ready within 180 s ({len(seen)} of {workers} workers answered)")

    @staticmethod
    def _ready_pid(port: int) -> int | None:
        """The process id of the worker that answered /readyz on a new connection, or None if none is ready."""
        import json
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return json.loads(r.read())["pid"] if r.status == 200 else None
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        self.out.close()


# ---------------------------------------------------------------------------------------------------- the client
def request(method: str, path: str, body: bytes = b"", content_type: str | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return (head + "\r\n").encode() + body


async def _response(reader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    body = await reader.readexactly(int(m.group(1))) if m else b""
    return status, body


async def _connection(port, plan, stop_at, measure_from, out):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            kind, label, payload = plan()
            start = time.perf_counter()
            writer.write(payload)
            await writer.drain()
            status, body = await _response(reader)
            elapsed = time.perf_counter() - start
            ok = status in (200, 201)
            if start >= measure_from:
                out["latency"][kind].append(elapsed)
                out["errors"] += 0 if ok else 1
                if not ok and len(out["error_samples"]) < 5:
                    out["error_samples"].append(f"{status} {body[:200]!r}")
            if kind == "enroll" and ok:
                out["acked"][label] = out["acked"].get(label, 0) + 1  # acknowledged: it must be in the gallery
    finally:
        writer.close()


def _summary(latency: dict, acked: dict, errors: int, samples: list, measured: float) -> dict:
    pred = sorted(latency["predict"])
    n = len(pred) + len(latency["enroll"])
    return {"requests": n, "rps": n / measured, "predict_rps": len(pred) / measured,
            "p50_ms": 1e3 * statistics.median(pred) if pred else None,
            "p99_ms": 1e3 * pred[min(len(pred) - 1, int(0.99 * len(pred)))] if pred else None,
            "enroll_p50_ms": 1e3 * statistics.median(latency["enroll"]) if latency["enroll"] else None,
            "errors": errors, "error_samples": samples, "acked": acked}


def run_load(port: int, image: bytes, mime: str, concurrency: int, seconds: float, warmup: float,
             enroll_share: float, seed: int) -> dict:
    rng = random.Random(seed)
    predict = request("POST", "/v1/predict", image, mime)
    enrolls = {label: request("POST", f"/v1/classes/{label}/shots", image, mime) for label in LABELS}

    def plan():
        if enroll_share and rng.random() < enroll_share:
            label = rng.choice(LABELS)
            return "enroll", label, enrolls[label]
        return "predict", None, predict

    out = {"latency": {"predict": [], "enroll": []}, "errors": 0, "error_samples": [], "acked": {}}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def main():
        await asyncio.gather(*(_connection(port, plan, stop_at, measure_from, out) for _ in range(concurrency)))
    asyncio.run(main())
    measured = time.perf_counter() - measure_from
    return _summary(out["latency"], out["acked"], out["errors"], out["error_samples"], measured)


def interleaved_load(ports: dict[int, int], image: bytes, mime: str, concurrency: int, seconds: float,
                     block_s: float = 2.0, settle_s: float = 0.25) -> dict[int, dict]:
    """Predictions at ``concurrency`` against several servers (``{workers: port}``) in alternating blocks of
    ``block_s`` seconds - all of one server's connections busy, the others idle - until each has been measured
    for ``seconds``; the first ``settle_s`` of each block are not counted. The servers see the same drift of a
    shared machine: on this VM the speed of one core moved by up to 1.6x within a minute, so phases run one
    after the other (20 s with 1 worker, later 20 s with 2) measured the drift as much as the scaling.
    Requests/s count the answers within the measured time; latencies, the requests made and answered within it;
    requests still in flight at a block's end are awaited before the next block.
    -> {workers: the run_load summary (rps over the measured time) + blocks}."""
    payload = request("POST", "/v1/predict", image, mime)
    stats = {w: {"latency": {"predict": [], "enroll": []}, "errors": 0, "error_samples": [], "measured": 0.0,
                 "completed": 0, "blocks": 0} for w in ports}

    async def connection_block(reader, writer, block_end, measure_from, out):
        while time.perf_counter() < block_end:
            t0 = time.perf_counter()
            writer.write(payload)
            await writer.drain()
            status, body = await _response(reader)
            t1 = time.perf_counter()
            if measure_from <= t1 <= block_end:  # throughput: the answers within the measured time
                out["completed"] += 1
                if measure_from <= t0:           # latency: the requests wholly within it
                    out["latency"]["predict"].append(t1 - t0)
            if status != 200:
                out["errors"] += 1
                if len(out["error_samples"]) < 5:
                    out["error_samples"].append(f"{status} {body[:200]!r}")

    async def main():
        connections = {w: [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
                       for w, port in ports.items()}
        try:
            while min(s["measured"] for s in stats.values()) < seconds:
                for w, conns in connections.items():
                    start = time.perf_counter()
                    measure_from, block_end = start + settle_s, start + settle_s + block_s
                    await asyncio.gather(*(connection_block(r, wr, block_end, measure_from, stats[w])
                                           for r, wr in conns))
                    stats[w]["measured"] += block_end - measure_from
                    stats[w]["blocks"] += 1
        finally:
            for conns in connections.values():
                for _, writer in conns:
                    writer.close()
    asyncio.run(main())
    out = {}
    for w, s in stats.items():
        summary = _summary(s["latency"], {}, s["errors"], s["error_samples"], s["measured"])
        summary.update(requests=s["completed"], rps=s["completed"] / s["measured"],
                       predict_rps=s["completed"] / s["measured"], blocks=s["blocks"])
        out[w] = summary
    return out


def classes(port: int) -> dict[str, int]:
    import json
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/classes", timeout=30) as r:
        return {c["label"]: c["shots"] for c in json.loads(r.read())["classes"]}


def seed_classes(port: int, image: bytes, mime: str) -> None:
    import urllib.request
    for label in LABELS:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/classes/{label}/shots", data=image, method="POST",
                                     headers={"Content-Type": mime})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status in (200, 201)


# ---------------------------------------------------------------------------------------------------- baseline
class _BlockingClient:
    """One keep-alive connection, one request at a time (the HTTP side of the overhead blocks)."""

    def __init__(self, port: int):
        import socket
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def roundtrip(self, payload: bytes) -> int:
        self.sock.sendall(payload)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, rest = self.buffer.split(b"\r\n\r\n", 1)
        m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        while len(rest) < length:
            rest += self._recv()
        self.buffer = rest[length:]
        return int(head[9:12])

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def overhead_rounds(port: int, bundle: str, images: dict, threads: int, seconds: float,
                    block_s: float = 0.25, settle: int = 5) -> dict:
    """The HTTP overhead at concurrency 1, measured against in-process ``EdgeClassifier.predict`` on the same
    encoded bytes (decoding included; the same ONNX Runtime threads as one worker; the same classes as the
    server) in alternating blocks of ``block_s`` seconds - requests back to back, then in-process calls back to
    back, the first ``settle`` calls of each block not counted - so that both see the same drift of a shared
    machine (back-to-back phases drifted by +-0.3 ms on this VM), each in its steady state (alternating single
    calls instead slowed both sides 2-3x: each process found its caches cold after the other had run).
    -> {image: {http_p50_ms, in_process_p50_ms, overhead_ms, rounds}}."""
    from metaedge.runtime.classifier import EdgeClassifier
    out = {}
    with EdgeClassifier(bundle, backend="ort-cpu", backend_options={"threads": threads}) as clf:
        for label in LABELS:
            clf.enroll(label, [images["png28"][0]])
        client = _BlockingClient(port)

        def over_http(payload):
            status = client.roundtrip(payload)
            if status != 200:
                raise RuntimeError(f"predict over HTTP answered {status}")

        try:
            for name, (data, mime) in images.items():
                payload = request("POST", "/v1/predict", data, mime)
                calls = (lambda: over_http(payload), lambda: clf.predict(data))
                samples: tuple[list, list] = ([], [])
                warmup_until = time.perf_counter() + 1.0
                stop_at = warmup_until + seconds
                rounds = 0
                while time.perf_counter() < stop_at:
                    for call, times in zip(calls, samples):
                        block_end = time.perf_counter() + block_s
                        n = 0
                        while time.perf_counter() < block_end:
                            t0 = time.perf_counter()
                            call()
                            if n >= settle and t0 >= warmup_until:
                                times.append(time.perf_counter() - t0)
                            n += 1
                    rounds += 1
                h, i = (1e3 * statistics.median(t) for t in samples)
                out[name] = {"http_p50_ms": h, "in_process_p50_ms": i, "overhead_ms": h - i, "rounds": rounds}
        finally:
            client.close()
    return out


# ---------------------------------------------------------------------------------------------------- phases
def row_of(workers: int, name: str, c: int, mode: str, got: dict, lost: int) -> dict:
    print(f"  workers {workers}  {name:<8} c={c:<3} {mode:<12} {got['rps']:8.1f} req/s  p50 {got['p50_ms'] or 0:7.2f} "
          f"ms  p99 {got['p99_ms'] or 0:7.2f} ms  errors {got['errors']}  lost {lost}", flush=True)
    return {"workers": workers, "image": name, "concurrency": c, "mode": mode, "requests": got["requests"],
            "rps": got["rps"], "p50_ms": got["p50_ms"], "p99_ms": got["p99_ms"], "enroll_p50_ms": got["enroll_p50_ms"],
            "enrolls": sum(got["acked"].values()), "errors": got["errors"], "lost_enrollments": lost,
            "error_samples": got["error_samples"], **({"blocks": got["blocks"]} if "blocks" in got else {})}


def phase(port: int, workers: int, name: str, data: bytes, mime: str, c: int, mode: str, args) -> dict:
    """One measured phase; enrollments acknowledged in it must all be in the class list afterwards."""
    before = classes(port)
    got = run_load(port, data, mime, c, args.duration, args.warmup, args.enroll_share if mode == "mixed" else 0.0,
                   seed=c)
    after = classes(port)
    lost = sum(max(0, before.get(label, 0) + n - after.get(label, 0)) for label, n in got["acked"].items())
    return row_of(workers, name, c, mode, got, lost)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=os.path.join("out", "bench", "serve.json"), help="where to write JSON")
    p.add_argument("--bundle", default=None, help="bench this bundle (default: a seeded conv4 1x28x28, exported)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured per phase (default 20)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default 2)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", nargs="+", default=["png28", "jpeg224"], choices=["png28", "jpeg224"])
    p.add_argument("--enroll-share", type=float, default=0.1, help="share of requests that enroll (default 0.1)")
    p.add_argument("--quick", action="store_true", help="3 s per phase, 1 s warm-up")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    images = make_images()
    rows, checks = [], []
    with tempfile.TemporaryDirectory(prefix="metaedge-bench-serve-") as tmp:
        bundle = args.bundle or make_bundle(tmp)
        # the same ONNX Runtime threads as a one-worker server uses (its default: cores / concurrent calls)
        threads = max(1, cores // 4)
        overhead = {}
        servers = {}
        try:
            for workers in args.workers:  # all up at once: the predictions alternate between them
                servers[workers] = ServerProcess(bundle, os.path.join(tmp, f"g{workers}.metaedge"), tmp, workers)
                seed_classes(servers[workers].port, *images["png28"])
            if 1 in servers and 1 in args.concurrency:
                overhead = overhead_rounds(servers[1].port, bundle, {n: images[n] for n in args.images}, threads,
                                           args.duration)
            ports = {workers: server.port for workers, server in servers.items()}
            for name in args.images:
                data, mime = images[name]
                for c in args.concurrency:
                    got = interleaved_load(ports, data, mime, c, args.duration, block_s=min(2.0, args.duration),
                                           settle_s=min(0.25, args.warmup))
                    for workers, result in got.items():
                        rows.append(row_of(workers, name, c, "predict only", result, lost=0))
                if args.enroll_share > 0:
                    for workers, port in ports.items():
                        for c in args.concurrency:
                            rows.append(phase(port, workers, name, data, mime, c, "mixed", args))
        finally:
            for server in servers.values():
                server.stop()

    def row(workers, name, c):
        return next((r for r in rows if (r["workers"], r["image"], r["concurrency"], r["mode"]) ==
                     (workers, name, c, "predict only")), None)

    for name in args.images:
        if name in overhead:
            o = overhead[name]
            checks.append({"check": f"HTTP overhead, {name}, c=1 (p50 {o['http_p50_ms']:.2f} - in-process "
                                    f"{o['in_process_p50_ms']:.2f} ms, alternating)", "value": o["overhead_ms"],
                           "target": "<= 1 ms", "ok": o["overhead_ms"] <= 1.0})
        for c in args.concurrency:
            a, b = row(1, name, c), row(2, name, c)
            if a and b and c > 1:
                ratio = b["rps"] / a["rps"]
                checks.append({"check": f"2 workers / 1 worker, {name}, c={c}, requests/s",
                               "value": ratio, "target": ">= 1.6x", "ok": ratio >= 1.6})
    checks.append({"check": "errors", "value": sum(r["errors"] for r in rows), "target": "0",
                   "ok": all(r["errors"] == 0 for r in rows)})
    checks.append({"check": "lost enrollments", "value": sum(r["lost_enrollments"] for r in rows), "target": "0",
                   "ok": all(r["lost_enrollments"] == 0 for r in rows)})
    common.print_table(rows, [("workers", "workers", "{}"), ("image", "image", "{}"), ("concurrency", "conc.", "{}"),
                              ("mode", "mode", "{}"), ("rps", "req/s", "{:.1f}"), ("p50_ms", "p50 ms", "{:.2f}"),
                              ("p99_ms", "p99 ms", "{:.2f}"), ("enroll_p50_ms", "enroll p50 ms", "{:.2f}"),
                              ("enrolls", "enrolls", "{}"), ("errors", "errors", "{}"),
                              ("lost_enrollments", "lost", "{}")], title="metaedge serve on 127.0.0.1")
    if overhead:
        print("\nconcurrency 1, alternating 0.25 s blocks of requests and of in-process predicts of the same bytes "
              "(p50): " + ", ".join(f"{k} HTTP {v['http_p50_ms']:.2f} ms / in-process {v['in_process_p50_ms']:.2f} "
                                    f"ms ({v['rounds']} rounds)" for k, v in overhead.items()))
    common.print_table(checks, [("check", "check", "{}"), ("value", "value", "{:.2f}"), ("target", "target", "{}"),
                                ("ok", "ok", "{}")], title="targets")
    summary = {}
    for name in args.images:
        for c in args.concurrency:
            a, b = row(1, name, c), row(2, name, c)
            if a and b and c > 1:
                summary[f"speedup_2_workers_{name}_c{c}"] = b["rps"] / a["rps"]
        if name in overhead:
            summary[f"vs_in_process_{name}_c1"] = overhead[name]["http_p50_ms"] / overhead[name]["in_process_p50_ms"]
    common.write_json(args.json, {"environment": common.environment(), "cores": cores,
                                  "seconds_per_phase": args.duration, "overhead_c1": overhead, "results": rows,
                                  "checks": checks, "summary": summary})
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
