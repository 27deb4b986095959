"""Every /v1 endpoint of a real `metaedge serve` process on 127.0.0.1, through a real HTTP client (httpx): enroll
(raw body, multipart, regions, raw frames), predict, classes, rename, forget, adapt, calibrate, history, info,
stats, alerts, metrics, the page, the OpenAPI document - and the JSON errors of bad requests."""
import os

import numpy as np
import pytest

from tests.serve.harness import Server, jpeg, png

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    work = tmp_path_factory.mktemp("api")
    with Server(bundle, work / "classes.metaedge", "--rate-limit", "off", workdir=work) as s:
        s.gallery = work / "classes.metaedge"
        yield s


@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


def test_health_readiness_and_the_openapi_document(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert ready["ready"] is True and "ort-cpu" in ready["backend"]
    paths = http.get("/openapi.json").json()["paths"]
    for path in ("/v1/predict", "/v1/classes", "/v1/classes/{label}/shots", "/v1/classes/{label}", "/v1/adapt",
                 "/v1/calibrate", "/v1/history", "/v1/info", "/v1/stats", "/v1/alerts", "/v1/tokens",
                 "/v1/live", "/v1/live/mjpeg", "/v1/live/events", "/v1/live/roi", "/metrics", "/healthz", "/readyz"):
        assert path in paths, path
    assert "image/*" in paths["/v1/predict"]["post"]["requestBody"]["content"]
    assert http.get("/docs").status_code == 404  # Swagger UI would load from a CDN: the page must work offline


def test_predict_on_an_empty_gallery_is_a_json_409(http):
    r = http.post("/v1/predict", content=png(np.zeros((8, 8, 3), np.uint8)), headers={"Content-Type": "image/png"})
    assert r.status_code == 409 and r.json()["error"] == "empty_gallery"


def test_enroll_predict_and_manage_classes(http, server, objects):
    red, blue = objects["shape0-r"], objects["shape0-b"]
    # a new class from one raw PNG body (201), more shots as multipart (200), a third class from regions of a frame
    r = http.post("/v1/classes/red/shots", content=png(red[0]), headers={"Content-Type": "image/png"})
    assert r.status_code == 201, r.text
    assert r.json()["class"]["shots"] == 1 and r.json()["new"] is True
    r = http.post("/v1/classes/red/shots", files=[("image", (f"{i}.png", png(im), "image/png")) for i, im in
                                                  enumerate(red[1:3])])
    assert r.status_code == 200 and r.json()["class"]["shots"] == 3 and r.json()["added"] == 2
    r = http.post("/v1/classes/blue/shots", files=[("image", ("b.jpg", jpeg(im, 95), "image/jpeg")) for im in blue[:3]])
    assert r.status_code == 201
    frame = np.full((120, 200, 3), 235, np.uint8)
    frame[10:74, 10:74], frame[40:104, 120:184] = red[3], blue[3]
    r = http.post("/v1/classes/Grüne Ecke/shots", params={"roi": ["10,10,64,64"]}, content=png(frame),
                  headers={"Content-Type": "image/png"})
    assert r.status_code == 201 and r.json()["class"]["label"] == "Grüne Ecke"

    listed = http.get("/v1/classes").json()
    assert listed["count"] == 3 and [c["label"] for c in listed["classes"]] == ["red", "blue", "Grüne Ecke"]
    assert listed["classes"][0]["shots"] == 3 and listed["classes"][0]["updated_at"]

    # predict: held-out views, one image and several, with k; regions of one frame; a raw BGR frame
    r = http.post("/v1/predict", params={"k": 2}, content=png(red[5]), headers={"Content-Type": "image/png"})
    body = r.json()
    assert r.status_code == 200 and body["predictions"][0]["label"] in ("red", "Grüne Ecke")
    assert len(body["predictions"][0]["topk"]) == 2 and body["classes"] == 3
    assert set(body["timings"]) == {"decode_ms", "preprocess_ms", "network_ms", "topk_ms", "total_ms"}
    timings = body["timings"]
    assert 0 < timings["network_ms"] < timings["total_ms"] < 10_000  # milliseconds, not seconds
    best = body["predictions"][0]
    if http.get("/v1/info").json()["bundle"]["metric"] == "cosine":
        assert best["confidence"] == pytest.approx((1 + best["score"]) / 2)
    else:  # dot / euclidean scores have no bounded scale
        assert "confidence" in best and best["confidence"] is None
    r = http.post("/v1/predict", files=[("image", ("a.png", png(blue[5]), "image/png")),
                                        ("image", ("b.jpg", jpeg(blue[4]), "image/jpeg"))])
    assert [p["label"] for p in r.json()["predictions"]] == ["blue", "blue"]
    assert [p["image"] for p in r.json()["predictions"]] == [0, 1]
    r = http.post("/v1/predict", params={"roi": ["120,40,64,64", "10,10,64,64"]}, content=png(frame),
                  headers={"Content-Type": "image/png"})
    preds = r.json()["predictions"]
    assert [p["roi"] for p in preds] == [[120, 40, 64, 64], [10, 10, 64, 64]]
    assert preds[0]["label"] == "blue" and preds[1]["label"] in ("red", "Grüne Ecke")
    bgr = np.ascontiguousarray(frame[..., ::-1])
    r = http.post("/v1/predict", params={"width": 200, "height": 120, "pixel_format": "bgr", "roi": "120,40,64,64"},
                  content=bgr.tobytes(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "blue"

    # rename (and its conflicts), forget
    r = http.patch("/v1/classes/Grüne Ecke", json={"label": "green corner"})
    assert r.status_code == 200 and r.json() == {"old": "Grüne Ecke", "new": "green corner"}
    assert http.patch("/v1/classes/red", json={"label": "blue"}).json()["error"] == "class_exists"
    assert http.patch("/v1/classes/nope", json={"label": "x"}).status_code == 404
    assert http.patch("/v1/classes/red", json={"name": "x"}).status_code == 400
    r = http.delete("/v1/classes/green corner")
    assert r.status_code == 200 and r.json()["classes"] == 2
    r = http.delete("/v1/classes/green corner")
    assert r.status_code == 404 and r.json()["error"] == "unknown_class"

    # adapt and reset, calibrate the unknown threshold
    r = http.post("/v1/adapt", json={"steps": 20, "lr": 0.05})
    assert r.status_code == 200 and r.json()["adapted"] is True and r.json()["report"]["steps"] == 20
    assert http.get("/v1/classes").json()["adapted"] is True
    assert http.post("/v1/adapt", json={"reset": True}).json() == {"reset": True, "adapted": False}
    assert http.post("/v1/adapt", json={"steps": 5, "bogus": 1}).status_code == 400
    files = [("known:red", (f"r{i}.png", png(im), "image/png")) for i, im in enumerate(red[3:6])]
    files += [("known:blue", (f"b{i}.png", png(im), "image/png")) for i, im in enumerate(blue[3:6])]
    files += [("other", (f"o{i}.png", png(im), "image/png")) for i, im in enumerate(objects["shape1-g"][:4])]
    r = http.post("/v1/calibrate", params={"target_fpr": 0.25}, files=files)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["negatives"] == "others" and report["n_known"] == 6 and report["n_negative"] == 4
    pred = http.post("/v1/predict", content=png(red[4]), headers={"Content-Type": "image/png"}).json()
    assert pred["threshold"] == pytest.approx(report["threshold"])
    open_set = http.get("/v1/classes").json()["open_set"]
    assert open_set["head"] == "prototypes" and open_set["source"] == "calibrated"
    assert open_set["threshold"] == pytest.approx(report["threshold"]) and open_set["target_fpr"] == 0.25
    assert "threshold" in open_set["explain"]
    assert http.get("/v1/info").json()["gallery"]["open_set"]["threshold"] == pytest.approx(report["threshold"])
    assert http.post("/v1/calibrate", files=[("other", ("o.png", png(red[0]), "image/png"))]).status_code == 400

    # the history: every change, in order, with who made it
    # (a gallery with its own trail may also hold entries of its own, e.g. its creation: only changes are compared)
    entries = [e for e in http.get("/v1/history").json()["entries"]
               if e["op"] in ("enroll", "forget", "rename", "adapt", "reset_adaptation", "threshold")]
    ops = [(e["op"], e["label"]) for e in entries]
    assert ops == [("enroll", "red"), ("enroll", "red"), ("enroll", "blue"), ("enroll", "Grüne Ecke"),
                   ("rename", "green corner"), ("forget", "green corner"), ("adapt", None),
                   ("reset_adaptation", None), ("threshold", None)]
    assert entries[4]["detail"]["from"] == "Grüne Ecke" and entries[0]["shots"] == 1 and entries[1]["shots"] == 2
    assert {e["actor"] for e in entries} == {"anonymous@127.0.0.1"}
    assert [e["op"] for e in http.get("/v1/history", params={"label": "red", "limit": 1}).json()["entries"]] == \
        ["enroll"]


def test_images_are_not_stored_without_keep_shots(http, server, objects):
    data = png(objects["shape1-g"][0])
    assert http.post("/v1/classes/kept-nowhere/shots", content=data,
                     headers={"Content-Type": "image/png"}).status_code == 201
    roots = [server.workdir] + [os.path.join("/dev/shm", d) for d in os.listdir("/dev/shm")
                                if d.startswith("metaedge-serve-")] if os.path.isdir("/dev/shm") else [server.workdir]
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                with open(os.path.join(folder, name), "rb") as f:
                    assert data not in f.read(), os.path.join(folder, name)
    assert http.delete("/v1/classes/kept-nowhere").status_code == 200


def test_info_stats_alerts_metrics(http):
    info = http.get("/v1/info").json()
    assert info["you"] == {"name": "anonymous@127.0.0.1", "role": "admin"}
    assert info["bundle"]["input_shape"] == [3, 32, 32] and len(info["bundle"]["fingerprint"]) == 64
    assert info["gallery"]["classes"] >= 2 and info["server"]["access_control"] is False
    stats = http.get("/v1/stats").json()
    assert stats["predictions"] >= 7 and stats["classes"] >= 2 and stats["latency_count"] >= 4
    assert stats["latency_buckets"]["+Inf"] == stats["latency_count"]
    assert http.get("/v1/alerts").json()["rules"] == []
    text = http.get("/metrics").text
    samples = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    ok_predicts = samples['metaedge_http_requests_total{endpoint="/v1/predict",method="POST",status="200"}']
    assert ok_predicts >= 4
    assert samples['metaedge_gallery_changes_total{op="enroll"}'] >= 4
    assert any(k.startswith("metaedge_predict_stage_seconds_count") and 'stage="network"' in k and v > 0
               for k, v in samples.items())
    assert any(k.startswith("metaedge_server_info{") and "bundle_fingerprint=" in k for k in samples)
    assert samples['metaedge_errors_total{kind="empty_gallery"}'] >= 1
    assert "metaedge_classes" in samples


@pytest.mark.parametrize("body,ctype,params,status,code", [
    (b"not an image at all", "image/png", {}, 400, "bad_image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png", {}, 400, "bad_image"),
    (b"", "image/png", {}, 400, "no_image"),
    (b"{}", "application/json", {}, 415, "unsupported_media_type"),
    (b"x" * 10, "application/octet-stream", {}, 400, "raw_frame_size"),
    (b"x" * 10, "application/octet-stream", {"width": 4, "height": 4, "pixel_format": "rgb"}, 400, "raw_frame_size"),
    (b"x" * 48, "application/octet-stream", {"width": 4, "height": 4, "pixel_format": "cmyk"}, 400,
     "bad_pixel_format"),
    ("PNG", "image/png", {"roi": "1,2,3"}, 400, "bad_roi"),
    ("PNG", "image/png", {"roi": "0,0,500,500"}, 400, "bad_request"),
    ("PNG", "image/png", {"k": 0}, 422, "bad_request"),
    ("PNG", "image/png", {"k": 101}, 422, "bad_request"),
    ("PNG", "image/png", {"k": "two"}, 422, "bad_request"),
    (b"x" * 48, "application/octet-stream", {"width": 0, "height": 4, "pixel_format": "rgb"}, 422, "bad_request"),
    ("PNG", "image/png", {"pixel_format": "nv12"}, 400, "bad_pixel_format"),
    (b"--x\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc", "multipart/form-data; boundary=x", {},
     400, "bad_multipart"),
])
def test_bad_requests_get_json_errors(http, objects, body, ctype, params, status, code):
    if body == "PNG":
        body = png(objects["shape0-r"][0])
    if code == "bad_request" and "roi" in params and not http.get("/v1/classes").json()["classes"]:
        # (run alone: a region outside the frame is found while predicting, after an empty gallery's 409)
        assert http.post("/v1/classes/shape0-r/shots", content=body,
                         headers={"Content-Type": ctype}).status_code in (200, 201)
    r = http.post("/v1/predict", content=body, headers={"Content-Type": ctype}, params=params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == code and r.json()["message"]
    assert status != 422 or "query." in r.json()["message"]   # names the parameter


def test_unknown_paths_methods_and_labels(http):
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert http.put("/v1/predict").status_code == 405
    r = http.post("/v1/classes/%20bad%20/shots", content=png(np.zeros((8, 8, 3), np.uint8)),
                  headers={"Content-Type": "image/png"})
    assert r.status_code == 400 and "whitespace" in r.json()["message"]


def test_the_operator_page_and_its_files_are_served(http):
    r = http.get("/")
    assert r.status_code == 200 and "<title>metaedge" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "http://" not in r.text.replace("http://127.0.0.1", "") and "https://" not in r.text  # no CDN
    for name in ("app.js", "charts.js", "app.css"):
        r = http.get(f"/static/{name}")
        assert r.status_code == 200 and len(r.content) > 500
        assert "https://" not in r.text


def test_live_endpoints_without_a_source(http):
    r = http.get("/v1/live")
    assert r.status_code == 404 and r.json()["error"] == "no_live_source"
    assert http.post("/v1/classes/x/shots", params={"live": 2}).json()["error"] == "no_live_source"


def test_gallery_file_holds_what_the_server_enrolled(server, http):
    from metaedge.runtime.gallery import Gallery
    g = Gallery.load(server.gallery)
    assert set(g.labels) == {c["label"] for c in http.get("/v1/classes").json()["classes"]}


def test_sigint_stops_the_server_cleanly(bundle, tmp_path):
    s = Server(bundle, tmp_path / "g.metaedge", workdir=tmp_path)
    with s.client() as c:
        assert c.get("/healthz").status_code == 200
    assert s.stop() == 0
    assert "Traceback" not in s.stderr


def test_pages_of_other_sites_cannot_use_a_server_without_tokens(http, server, objects):
    data = png(objects["shape0-r"][0])
    r = http.post("/v1/classes/csrf/shots", content=data,
                  headers={"Content-Type": "image/png", "Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"] == "cross_origin"
    own = server.url  # the page of the server itself may
    r = http.post("/v1/predict", content=data, headers={"Content-Type": "image/png", "Origin": own})
    assert r.status_code == 200
    r = http.get("/v1/classes", headers={"Host": "rebound.example:8080"})  # DNS rebinding: a foreign name
    assert r.status_code == 403 and r.json()["error"] == "bad_host"
    assert http.get("/v1/classes", headers={"Host": "localhost"}).status_code == 200
    assert "csrf" not in [c["label"] for c in http.get("/v1/classes").json()["classes"]]


def test_the_server_uses_no_deprecated_metaedge_api(server, http, objects):
    """(After the tests above: predictions, metrics and every change went through this server.)"""
    assert http.get("/metrics").status_code == 200
    assert server.deprecated_uses() == []
