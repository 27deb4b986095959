"""--workers N: several processes behind one socket. Each opens its own classifier on the gallery store; /metrics
sums every process; the live feed of the supervisor's frame loop reaches every worker; no enrollment made
through any worker is lost, and each worker sees the others' at its next request."""
import concurrent.futures
import json
import time

import pytest

from metaedge.runtime.serve import server as server_module
from tests.serve.harness import Server, make_token, png

pytestmark = pytest.mark.timeout(300)


def _worker_pids(server, tries: int = 30) -> set:
    pids = set()
    for _ in range(tries):
        with server.client() as c:  # a new connection each time
            pids.add(c.get("/readyz").json()["pid"])
        if len(pids) >= 2:
            break
    return pids


def test_read_only_workers_share_socket_metrics_and_live_feed(bundle, tmp_path, objects):
    from tests.runtime.scenes import scene, write_video
    frames = [scene(objects["shape0-r"][i % 3], (60, 40, 96, 96), height=200, width=280, seed=i) for i in range(10)]
    video = write_video(tmp_path / "v.mkv", frames, fps=20)
    gallery = tmp_path / "g.metaedge"
    with Server(bundle, gallery, workdir=tmp_path / "setup") as one, one.client() as c:
        for label in ("shape0-r", "shape0-b"):
            c.post(f"/v1/classes/{label}/shots", files=[("image", (f"{i}.png", png(im), "image/png"))
                                                        for i, im in enumerate(objects[label][:3])])
    with Server(bundle, gallery, "--workers", "2", "--read-only", "--source", video, "--rate-limit", "off",
                "--no-access-log", workdir=tmp_path / "two") as server:
        assert len(_worker_pids(server)) == 2
        n = 12
        for i in range(n):
            with server.client() as c:
                r = c.post("/v1/predict", content=png(objects["shape0-b"][3 + i % 3]),
                           headers={"Content-Type": "image/png"})
                assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "shape0-b"
        with server.client() as c:
            text = c.get("/metrics").text
            ok = 'metaedge_http_requests_total{endpoint="/v1/predict",method="POST",status="200"}'
            line = next(x for x in text.splitlines() if x.startswith(ok))
            assert float(line.split()[-1]) == n  # both workers' requests, summed
            info_lines = [x for x in text.splitlines() if x.startswith("metaedge_server_info{")]
            assert len(info_lines) == 1
        seen = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(seen) < 2:  # the live feed answers from every worker
            with server.client() as c:
                live = c.get("/v1/live").json()
                if live.get("predictions"):
                    assert live["predictions"][0]["label"] == "shape0-r"
                    seen.add(c.get("/readyz").json()["pid"])
        assert len(seen) == 2


def test_writing_workers_lose_no_enrollment_and_see_each_other(bundle, tmp_path, objects):
    tokens = tmp_path / "tokens.json"
    names = [f"op{i}" for i in range(4)]
    keys = {name: make_token(tokens, name, "operator") for name in names}
    with Server(bundle, tmp_path / "g.metaedge", "--workers", "2", "--rate-limit", "off", "--no-access-log",
                tokens=tokens, workdir=tmp_path) as server:
        assert len(_worker_pids(server)) == 2
        images = objects["shape0-r"] + objects["shape1-g"]

        def enroll(name, i):
            with server.client(keys[name]) as c:  # fresh connections: any worker
                r = c.post(f"/v1/classes/{name}-{i % 3}/shots", content=png(images[i % len(images)]),
                           headers={"Content-Type": "image/png"})
                assert r.status_code in (200, 201), r.text
                # the next request, on another connection, sees it whichever worker answers
                with server.client(keys[name]) as other:
                    listed = {x["label"]: x["shots"] for x in other.get("/v1/classes").json()["classes"]}
                assert f"{name}-{i % 3}" in listed

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda a: enroll(*a), [(name, i) for name in names for i in range(9)]))
        with server.client(keys["op0"]) as c:
            shots = {x["label"]: x["shots"] for x in c.get("/v1/classes").json()["classes"]}
            assert shots == {f"{name}-{j}": 3 for name in names for j in range(3)}
            history = c.get("/v1/history", params={"limit": 1000}).json()
            enrolls = [e for e in history["entries"] if e["op"] == "enroll"]
            assert len(enrolls) == 36 and {e["actor"] for e in enrolls} == set(names)
        # connections opened all at once are spread over both workers (each has a socket of its own on the
        # port; with one shared socket the first worker awake took most of them: 4/28 was common)
        import socket
        port = int(server.url.rsplit(":", 1)[1])
        clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(64)]
        try:
            for s in clients:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            per_worker: dict = {}
            for s in clients:
                answer = b""
                while not answer.endswith(b"}"):
                    chunk = s.recv(4096)
                    assert chunk, answer
                    answer += chunk
                pid = json.loads(answer.split(b"\r\n\r\n", 1)[1])["pid"]
                per_worker[pid] = per_worker.get(pid, 0) + 1
        finally:
            for s in clients:
                s.close()
        if server_module._BALANCED_LISTENERS:
            assert len(per_worker) == 2 and min(per_worker.values()) >= 12, per_worker
            assert _listening_sockets(port) == 2  # one per worker (a shared socket is one)


def _listening_sockets(port: int) -> int:
    """The TCP sockets in LISTEN state on 127.0.0.1:port (from /proc/net/tcp: local address, state 0A)."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for r in rows if r[1] == f"0100007F:{port:04X}" and r[3] == "0A")
