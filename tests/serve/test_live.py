"""The live source of a real server (--source, a video file encoded here): the newest frame as JPEG, the MJPEG
stream, Server-Sent Events, the region of interest, enrolling frames of the live view, the overlay; alert rules
(no frames, unknown rate) raising events in /v1/alerts, /metrics and a webhook on 127.0.0.1; a clean stop on
SIGTERM."""
import http.server as http_server
import json
import os
import signal
import socketserver
import threading
import time

import httpx
import numpy as np
import pytest

from tests.serve.harness import Server, png

cv2 = pytest.importorskip("cv2")
pytestmark = pytest.mark.timeout(300)
BOX = [60, 40, 96, 96]


@pytest.fixture(scope="module")
def video(tmp_path_factory, objects):
    from tests.runtime.scenes import scene, write_video
    root = tmp_path_factory.mktemp("live-video")
    frames = [scene(objects["shape0-r"][i % 3], BOX, height=200, width=280, seed=i) for i in range(20)]
    return write_video(root / "scene.mkv", frames, fps=20)


@pytest.fixture(scope="module")
def server(bundle, video, tmp_path_factory):
    work = tmp_path_factory.mktemp("live")
    with Server(bundle, work / "g.metaedge", "--source", video, "--rate-limit", "off", "--max-fps", "20",
                workdir=work) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


def events(client, count: int, timeout: float = 30.0):
    """The first ``count`` frame events of the SSE stream."""
    out = []
    with client.stream("GET", "/v1/live/events", timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
                if len(out) == count:
                    break
    return out


def test_frames_arrive_as_jpeg_mjpeg_and_events(http):
    state = http.get("/v1/live").json()
    deadline = time.monotonic() + 30
    while state.get("seq", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        state = http.get("/v1/live").json()
    assert state["status"] == "running" and (state["width"], state["height"]) == (280, 200)
    assert state["predictions"] == [] and state["classes"] == 0

    r = http.get("/v1/live/frame.jpg", params={"after": state["seq"]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert int(r.headers["x-frame-seq"]) > state["seq"]
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == (200, 280, 3)

    with http.stream("GET", "/v1/live/mjpeg", params={"overlay": 0}, timeout=30) as r:
        assert r.headers["content-type"].startswith("multipart/x-mixed-replace")
        buf = b""
        for chunk in r.iter_bytes():
            buf += chunk
            if buf.count(b"--metaedgeframe") >= 4:
                break
    parts = [p for p in buf.split(b"--metaedgeframe") if p.strip()][:3]
    seqs = []
    for part in parts:
        head, _, body = part.partition(b"\r\n\r\n")
        seqs.append(int(head.split(b"X-Frame-Seq: ")[1].split(b"\r\n")[0]))
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert cv2.imdecode(np.frombuffer(body[:length], np.uint8), cv2.IMREAD_COLOR) is not None
    assert seqs == sorted(set(seqs))

    got = events(http, 3)
    assert [e["seq"] for e in got] == sorted({e["seq"] for e in got})
    assert got[-1]["fps"] > 0 and got[-1]["source"].endswith("scene.mkv")


def test_enroll_from_the_live_view_then_predictions_follow(http):
    r = http.post("/v1/classes/red/shots", params={"live": 3, "every": 0.1, "roi": ",".join(map(str, BOX))})
    assert r.status_code == 201, r.text
    assert r.json()["class"]["shots"] == 3 and r.json()["added"] == 3
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        latest = events(http, 1)[0]
        if latest["predictions"]:
            break
    assert latest["predictions"][0]["label"] == "red" and latest["classes"] == 1
    best = latest["predictions"][0]
    metric = http.get("/v1/info").json()["bundle"]["metric"]
    assert best["confidence"] == (pytest.approx((1 + best["score"]) / 2) if metric == "cosine" else None)
    assert 0 < latest["predict_ms"] < 10_000  # milliseconds


def test_the_region_of_interest(http):
    assert http.put("/v1/live/roi", json={"roi": BOX}).json() == {"roi": [BOX]}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        e = events(http, 1)[0]
        if e["roi"] == [BOX] and e["predictions"]:
            break
    assert e["roi"] == [BOX] and len(e["predictions"]) == 1
    r = http.put("/v1/live/roi", json={"roi": [250, 150, 96, 96]})
    assert r.status_code == 400 and "outside the 280x200 frame" in r.json()["message"]
    assert http.put("/v1/live/roi", json={"roi": [1, 2, 3]}).status_code == 400
    # the overlay draws the box (green: a known class) where it is
    seq = http.get("/v1/live").json()["seq"]
    r = http.get("/v1/live/frame.jpg", params={"after": seq, "overlay": 1})
    img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    x, y, w, h = BOX
    edge = img[y + h // 2, x - 1:x + 3].astype(int)
    assert (edge[:, 1] - edge[:, 2]).max() > 30  # (a thin line, softened by JPEG)
    assert http.put("/v1/live/roi", json={"roi": None}).json() == {"roi": None}


def test_live_metrics(http, server):
    text = http.get("/metrics").text
    frames = [float(line.split()[-1]) for line in text.splitlines() if line.startswith("metaedge_stream_frames_total")]
    assert frames and frames[0] > 10
    fps = [float(line.split()[-1]) for line in text.splitlines() if line.startswith("metaedge_stream_fps")]
    assert fps and fps[0] > 1
    assert 'source="live"' in text
    # Prometheus histograms are in seconds: the mean live predict time of a small network is well under one
    sums = {line.split("{")[0]: float(line.split()[-1]) for line in text.splitlines()
            if line.startswith(("metaedge_predict_seconds_sum{", "metaedge_predict_seconds_count{"))
            and 'source="live"' in line}
    assert sums["metaedge_predict_seconds_count"] > 0
    assert 0 < sums["metaedge_predict_seconds_sum"] / sums["metaedge_predict_seconds_count"] < 1.0
    assert server.deprecated_uses() == []


class Webhook:
    """A real HTTP receiver on 127.0.0.1 collecting the JSON bodies POSTed to it."""

    def __init__(self):
        self.received = []
        hook = self

        class Handler(http_server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

        class Srv(socketserver.ThreadingMixIn, http_server.HTTPServer):
            daemon_threads = True

        self.server = Srv(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [e for e in self.received if predicate(e)]
            if hits:
                return hits[0]
            time.sleep(0.1)
        raise AssertionError(f"no matching webhook call; got {self.received}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_alerts_fire_to_log_metrics_and_webhook(bundle, tmp_path, objects):
    hook = Webhook()
    try:
        rules = ["no_frames for 1s", "unknown_rate > 0.5 over 3s min 3"]
        with Server(bundle, tmp_path / "g.metaedge", "--source", tmp_path / "missing.mkv", "--threshold", "2",
                    "--alert", rules[0], "--alert", rules[1], "--alert-webhook", hook.url, "--rate-limit", "off",
                    workdir=tmp_path) as server, server.client() as c:
            event = hook.wait(lambda e: e["rule"] == rules[0] and e["state"] == "firing")
            assert event["value"] >= 1 and event["server"]
            live = c.get("/v1/live").json()
            assert live["status"] == "error" and "missing.mkv" in live["error"]
            # everything scores below threshold 2 (cosine / minus distance <= 1): unknown
            assert c.post("/v1/classes/red/shots", content=png(objects["shape0-r"][0]),
                          headers={"Content-Type": "image/png"}).status_code == 201
            for im in objects["shape0-r"][1:4]:
                assert c.post("/v1/predict", content=png(im), headers={"Content-Type": "image/png"}).json()[
                    "predictions"][0]["unknown"] is True
            hook.wait(lambda e: e["rule"] == rules[1] and e["state"] == "firing")
            alerts = c.get("/v1/alerts").json()
            assert {a["rule"] for a in alerts["firing"]} == set(rules)
            assert [r["rule"] for r in alerts["rules"]] == rules
            text = c.get("/metrics").text
            assert f'metaedge_alert_firing{{rule="{rules[1]}"}} 1.0' in text
            assert f'metaedge_alert_events_total{{rule="{rules[0]}",state="firing"}} 1.0' in text
            # a calibrated threshold replaces --threshold; known images are known again: the rule resolves
            files = [("known:red", (f"{i}.png", png(im), "image/png")) for i, im in enumerate(objects["shape0-r"])]
            files += [("other", (f"o{i}.png", png(im), "image/png")) for i, im in enumerate(objects["shape1-g"])]
            assert c.post("/v1/calibrate", params={"target_fpr": 0.2}, files=files).status_code == 200
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(e["state"] == "resolved" for e in hook.received):
                c.post("/v1/predict", content=png(objects["shape0-r"][0]), headers={"Content-Type": "image/png"})
                time.sleep(0.3)
            hook.wait(lambda e: e["rule"] == rules[1] and e["state"] == "resolved")
        assert "alert 'no_frames for 1s' firing" in server.stderr
    finally:
        hook.close()


def test_sigterm_stops_cleanly_and_removes_the_run_directory(bundle, video, tmp_path):
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    server = Server(bundle, tmp_path / "g.metaedge", "--source", video, workdir=tmp_path)
    with server.client() as c:
        assert c.get("/v1/live/frame.jpg", params={"after": 0}).status_code == 200
        stream = c.stream("GET", "/v1/live/mjpeg")  # a viewer still watching does not hold the stop up
        stream.__enter__()
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        try:
            stream.__exit__(None, None, None)
        except httpx.HTTPError:
            pass
    assert "Traceback" not in server.stderr
    if os.path.isdir("/dev/shm"):
        left = {d for d in set(os.listdir("/dev/shm")) - before if d.startswith("metaedge-serve-")}
        assert not left
