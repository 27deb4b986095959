"""The server's parts on their own: the token store (hashes only, constant-time checks, hostile files), the rate
limiter shared by real processes, alert rules and the monitor on real metrics, request body parsing, the live
feed's whole-frame reads, the configuration."""
import json
import multiprocessing
import os
import threading
import time

import pytest

from metaedge.runtime.serve import server as server_module
from metaedge.runtime.serve.alerts import AlertMonitor, parse_rule
from metaedge.runtime.serve.config import ServeConfig, is_loopback, parse_rate
from metaedge.runtime.serve.errors import ApiError
from metaedge.runtime.serve.feed import LiveFeed
from metaedge.runtime.serve.ratelimit import RateLimiter
from metaedge.runtime.serve.tokens import TokenError, TokenStore, TokenStoreError
from metaedge.runtime.serve.uploads import parse_body, parse_rois


# ---------------------------------------------------------------------------------------------------- tokens
def test_token_store_round_trip(tmp_path):
    store = TokenStore(tmp_path / "sub" / "tokens.json")
    assert store.records() == [] and store.authenticate("anything") is None
    record, token = store.create("cam-1", "operator")
    assert store.authenticate(token).name == "cam-1" and store.authenticate(token).role == "operator"
    assert store.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None  # one character off
    other = TokenStore(store.path)  # another process's view: re-read from the file
    assert other.authenticate(token).role == "operator"
    store.revoke("cam-1")
    assert other.authenticate(token) is None  # seen at the next check
    record2, token2 = store.create("cam-1", "viewer")  # the name is free again
    assert record2.id != record.id and store.authenticate(token2).role == "viewer"
    with pytest.raises(TokenError, match="exists already"):
        store.create("cam-1", "admin")
    with pytest.raises(TokenError, match="role"):
        store.create("x", "superuser")
    with pytest.raises(TokenError, match="no active token"):
        store.revoke("ghost")
    doc = json.loads(open(store.path).read())
    assert all(set(t) == {"id", "name", "role", "sha256", "created", "revoked"} for t in doc["tokens"])
    assert token not in open(store.path).read() and oct(os.stat(store.path).st_mode & 0o777) == "0o600"


def test_token_comparison_does_not_short_cut_on_unknown_ids(tmp_path):
    """An unknown id and a wrong secret take the same path: one SHA-256 and one compare_digest."""
    import hmac
    store = TokenStore(tmp_path / "t.json")
    _, token = store.create("a", "viewer")
    calls = []
    real = hmac.compare_digest
    try:
        hmac.compare_digest = lambda a, b: calls.append((len(a), len(b))) or real(a, b)
        store.authenticate("me_000000000000_" + "x" * 43)
        store.authenticate(token[:-2] + "xx")
        store.authenticate("garbage")
    finally:
        hmac.compare_digest = real
    assert calls == [(64, 64)] * 3


def test_hostile_token_files(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(TokenStoreError, match="not a regular file"):
        TokenStore(fifo).records()
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(2 << 20)
    with pytest.raises(TokenStoreError, match="more than the"):
        TokenStore(big).records()
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(TokenStoreError, match="not JSON"):
        TokenStore(deep).records()
    store = TokenStore(tmp_path / "t.json")
    store.create("a", "viewer")
    doc = json.loads(open(store.path).read())
    for field, value, message in (("sha256", "abc", "SHA-256"), ("created", -5, "Unix time"),
                                  ("created", float("nan"), "NaN is not valid JSON"), ("id", "XYZ", "12 hex")):
        broken = json.loads(json.dumps(doc))
        broken["tokens"][0][field] = value
        (tmp_path / "b.json").write_text(json.dumps(broken))
        with pytest.raises(TokenStoreError, match=message):
            TokenStore(tmp_path / "b.json").records()
    twice = json.loads(json.dumps(doc))
    twice["tokens"].append(dict(twice["tokens"][0], id="0123456789ab"))
    (tmp_path / "c.json").write_text(json.dumps(twice))
    with pytest.raises(TokenStoreError, match="two active tokens"):
        TokenStore(tmp_path / "c.json").records()


# ---------------------------------------------------------------------------------------------------- rate limit
def _hammer(directory, n, out):
    limiter = RateLimiter(directory, rate=1 / 60, burst=10)
    out.put(sum(limiter.acquire("shared-key") == 0 for _ in range(n)))


def test_rate_limit_budget_is_shared_by_processes(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), 20, out)) for _ in range(3)]
    for p in procs:
        p.start()
    allowed = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert allowed == 10  # one burst for all three processes


def test_rate_limit_refills_at_the_rate(tmp_path):
    limiter = RateLimiter(str(tmp_path), rate=20, burst=2)
    assert [limiter.acquire("k") == 0 for _ in range(3)] == [True, True, False]
    wait = limiter.acquire("k")
    assert 0 < wait <= 0.05 + 1e-6
    time.sleep(wait + 0.01)
    assert limiter.acquire("k") == 0
    assert limiter.acquire("other") == 0  # per key


@pytest.mark.parametrize("text,expected", [("20/s", (20.0, 40)), ("600/m", (10.0, 20)), ("5/s:7", (5.0, 7)),
                                           ("1/m:5", (1 / 60, 5)), ("off", None), (None, None)])
def test_parse_rate(text, expected):
    got = parse_rate(text)
    assert got == expected or (got[1] == expected[1] and abs(got[0] - expected[0]) < 1e-12)


@pytest.mark.parametrize("text", ["fast", "20", "-1/s", "0/s:3", "20/h"])
def test_parse_rate_errors(text):
    with pytest.raises(ValueError, match="rate limit"):
        parse_rate(text)


# ---------------------------------------------------------------------------------------------------- alerts
def test_alert_rules_parse():
    r = parse_rule("unknown_rate > 0.5 over 60s min 20")
    assert (r.kind, r.threshold, r.window, r.min_count) == ("unknown_rate", 0.5, 60, 20)
    r = parse_rule("latency_p99 > 50ms over 2m")
    assert (r.kind, r.threshold, r.window, r.min_count) == ("latency_p99", 0.05, 120, 10)
    assert parse_rule("latency_p99 > 0.2s over 30s").threshold == 0.2
    r = parse_rule("no_frames for 10s")
    assert (r.kind, r.threshold) == ("no_frames", 10)
    for bad in ("unknown_rate > 1.5 over 60s", "unknown_rate > 0.5", "no_frames", "cpu > 3 over 1s",
                "no_frames for 0s", "unknown_rate > 0.5ms over 10s"):
        with pytest.raises(ValueError, match="alert"):
            parse_rule(bad)


def _P(unknown: bool):
    """A real prediction (the monitor reads whether it is unknown)."""
    from metaedge.runtime.results import Prediction
    return Prediction("a", 0.1 if unknown else 0.9, (("a", 0.1 if unknown else 0.9),), unknown, 0.5)


def _T(total_s: float):
    """Real timings of a predict call that took ``total_s`` seconds, all of it in the network."""
    from metaedge.runtime.results import Timings
    return Timings.from_seconds(0.0, 0.0, total_s, 0.0, total_s, 1)


def test_alert_monitor_on_real_metrics(tmp_path):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        pytest.skip("this test keeps its metrics in its own registry")
    from metaedge.runtime.serve.metrics import Metrics
    metrics = Metrics(backend="test", fingerprint="f" * 64, version="0", gallery="g")
    rules = [parse_rule("unknown_rate > 0.5 over 10s min 4"), parse_rule("latency_p99 > 50ms over 10s min 4"),
             parse_rule("no_frames for 5s")]
    monitor = AlertMonitor(rules, metrics, str(tmp_path), interval=1.0)
    t0 = time.time()
    monitor.check(t0)
    assert monitor.firing == {}
    for _ in range(3):  # 3 predictions, 3 calls < min 4: not judged yet
        metrics.observe_predictions("api", _T(0.002), [_P(True)])
    monitor.check(t0 + 1)
    assert monitor.firing == {}
    metrics.observe_predictions("api", _T(0.2), [_P(True), _P(False)])
    metrics.observe_predictions("api", _T(0.002), [_P(True), _P(False)])
    monitor.check(t0 + 2)
    assert set(monitor.firing) == {rules[0].text, rules[1].text}  # 5/7 unknown; a 0.2 s call in 5
    monitor.check(t0 + 6)
    assert rules[2].text in monitor.firing  # no frame since the start
    metrics.last_frame.set(t0 + 6)
    for _ in range(30):
        metrics.observe_predictions("api", _T(0.001), [_P(False)])
    monitor.check(t0 + 7)
    assert rules[0].text not in monitor.firing and rules[2].text not in monitor.firing  # 5/37 unknown; a frame
    assert rules[1].text in monitor.firing  # the slow call is still in the window
    metrics.last_frame.set(t0 + 13)
    monitor.check(t0 + 14)  # the window now starts after the slow call: 30 fast ones
    assert monitor.firing == {}
    monitor.check(t0 + 19)
    assert set(monitor.firing) == {rules[2].text}  # frames stopped again
    states = [(e["rule"], e["state"]) for e in monitor.events]
    assert states.count((rules[0].text, "firing")) == 1 and (rules[0].text, "resolved") in states
    saved = json.loads(open(tmp_path / "alerts.json").read())
    assert len(saved["events"]) == len(states) and saved["rules"][0]["rule"] == rules[0].text


# ---------------------------------------------------------------------------------------------------- uploads
def test_multipart_bodies_are_parsed_in_memory():
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG-1" + \
           (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"known:red bolt\"; filename=\"b.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + b"\xff\xd8JPEG" + f"\r\n--{boundary}--\r\n".encode()
    parts = parse_body(body, f"multipart/form-data; boundary={boundary}", max_files=4)
    assert [(p.field, p.filename, p.content_type, p.data, p.is_file) for p in parts] == [
        ("image", "a.png", "image/png", b"\x89PNG-1", True), ("note", None, "", b"hello", False),
        ("known:red bolt", "b.jpg", "image/jpeg", b"\xff\xd8JPEG", True)]
    with pytest.raises(ApiError) as e:
        parse_body(body, f"multipart/form-data; boundary={boundary}", max_files=1)
    assert e.value.status == 413
    with pytest.raises(ApiError) as e:
        parse_body(body[:-10], f"multipart/form-data; boundary={boundary}", max_files=4)
    assert e.value.code == "bad_multipart"
    assert parse_body(b"abc", "image/webp", 1)[0].data == b"abc"


def test_parse_rois():
    assert parse_rois([]) is None
    assert parse_rois(["1,2,3,4", "5,6,7,8;9,10,11,12"]) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    for bad in ("1,2,3", "a,b,c,d", "0,0,0,5", "-1,0,4,4"):
        with pytest.raises(ApiError):
            parse_rois([bad])


# ---------------------------------------------------------------------------------------------------- live feed
def test_live_feed_readers_see_whole_frames(tmp_path):
    writer, reader = LiveFeed(str(tmp_path)), LiveFeed(str(tmp_path))
    assert reader.latest() is None and reader.control() == {}
    stop = threading.Event()
    problems = []

    def read():
        while not stop.is_set():
            got = reader.latest()
            if got is not None:
                meta, jpeg = got
                if jpeg != bytes([meta["seq"] % 256]) * meta["size"]:
                    problems.append(meta["seq"])

    t = threading.Thread(target=read)
    t.start()
    for seq in range(1, 400):
        size = 1000 + (seq * 7919) % 50000
        writer.publish(bytes([seq % 256]) * size, {"seq": seq, "size": size})
    stop.set()
    t.join()
    assert problems == [] and reader.latest()[0]["seq"] == 399
    assert writer.set_control(roi=[[1, 2, 3, 4]], by="x")["seq"] == 1
    assert reader.control()["roi"] == [[1, 2, 3, 4]]
    assert writer.set_control(roi=None)["seq"] == 2 and reader.control() == {"roi": None, "by": "x", "seq": 2}


# ---------------------------------------------------------------------------------------------------- config
def test_configuration_checks_and_round_trip():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    config = ServeConfig("b", "g", workers=2, roi=[[1, 2, 3, 4]], alerts=["no_frames for 3s"]).validate()
    assert ServeConfig.from_json(config.to_json()) == config
    for kwargs, message in (({"workers": 0}, "--workers"), ({"port": 70000}, "--port"),
                            ({"certfile": "c.pem"}, "--keyfile"), ({"roi": [[0, 0, 0, 4]]}, "--roi"),
                            ({"alert_webhook": "ftp://x"}, "--alert-webhook"), ({"every": "often"}, "every"),
                            ({"alerts": ["nonsense"]}, "alert")):
        with pytest.raises(ValueError, match=message):
            ServeConfig("b", "g", **kwargs).validate()
    with pytest.raises(ValueError, match="unknown settings"):
        ServeConfig.from_json(json.dumps({"bundle": "b", "gallery": "g", "surprise": 1}))


def test_a_running_app_hands_the_gil_over_within_half_a_millisecond(bundle, tmp_path):
    """The request's decode + predict runs on a worker thread; with Python's default 5 ms switch interval it waited
    for the event loop's GIL at every hand-over. The app sets the interval while it runs."""
    import asyncio
    import sys

    import httpx

    import metaedge as me
    from metaedge.runtime.serve.app import SWITCH_INTERVAL_S, create_app
    from metaedge.runtime.serve.config import ServeConfig
    from metaedge.runtime.serve.state import ServerState
    previous = sys.getswitchinterval()
    clf = me.EdgeClassifier(bundle, gallery=str(tmp_path / "g.metaedge"))
    state = ServerState(ServeConfig(bundle=bundle, gallery=str(tmp_path / "g.metaedge"), rate_limit=None), clf)
    try:
        app = create_app(state)

        async def while_running():
            async with app.router.lifespan_context(app):  # what uvicorn runs around serving
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                    assert (await client.get("/healthz")).status_code == 200
                return sys.getswitchinterval()
        assert asyncio.run(while_running()) == pytest.approx(SWITCH_INTERVAL_S) and SWITCH_INTERVAL_S <= 0.0005
    finally:
        sys.setswitchinterval(previous)
        state.close()
        clf.close()


def test_cheap_work_runs_on_the_event_loop_and_slow_work_on_threads(bundle, tmp_path):
    """``ServerState.run``: the first call of a kind of work goes to a thread (its cost is unknown); once it is
    known to be cheap it runs inline, on the event loop's thread; slow work stays on threads; errors reach the
    caller either way."""
    import anyio

    import metaedge as me
    from metaedge.runtime.serve.config import ServeConfig
    from metaedge.runtime.serve.state import INLINE_BELOW_S, ServerState
    clf = me.EdgeClassifier(bundle, gallery=str(tmp_path / "g.metaedge"))
    state = ServerState(ServeConfig(bundle=bundle, gallery=str(tmp_path / "g.metaedge"), rate_limit=None), clf)

    def cheap():
        return threading.current_thread()

    def fails():
        return 1 / 0

    def slow():
        time.sleep(2 * INLINE_BELOW_S)
        return threading.current_thread()

    async def calls():
        main = threading.current_thread()
        first, second, third = [await state.run(cheap) for _ in range(3)]
        slow_runs = [await state.run(slow) for _ in range(3)]
        for _ in range(2):   # on a thread, then inline: the error reaches the caller as it is either way
            with pytest.raises(ZeroDivisionError):
                await state.run(fails)
        return main, first, second, third, slow_runs

    try:
        main, first, second, third, slow_runs = anyio.run(calls)
    finally:
        state.close()
        clf.close()
    assert first is not main and second is main and third is main
    assert all(t is not main for t in slow_runs)


@pytest.mark.skipif(not server_module._BALANCED_LISTENERS, reason="SO_REUSEPORT balances connections on Linux only")
def test_worker_listeners_are_separate_sockets_the_kernel_balances():
    """With --workers N the supervisor's socket holds the port without listening; what a worker unpickles is a
    socket of its own on that port. 64 connections to two such listeners all land, on both."""
    import pickle
    import socket
    supervisor = server_module._bind("127.0.0.1", 0, workers=2)
    listeners = []
    try:
        address = supervisor.getsockname()
        with pytest.raises(ConnectionRefusedError):  # bound, not listening: it accepts nothing itself
            socket.create_connection(address, timeout=5).close()
        listeners = [pickle.loads(pickle.dumps(supervisor)) for _ in range(2)]
        for sock in listeners:
            assert type(sock) is socket.socket and sock.fileno() != supervisor.fileno()
            assert sock.getsockname() == address
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            sock.listen(128)
        clients = [socket.create_connection(address, timeout=5) for _ in range(64)]
        accepted = [0, 0]
        for i, sock in enumerate(listeners):
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                accepted[i] += 1
                conn.close()
        for c in clients:
            c.close()
        assert sum(accepted) == 64 and min(accepted) >= 12, accepted  # binomial(64, 1/2): below 12 is ~1e-7
    finally:
        for sock in listeners + [supervisor]:
            sock.close()


def test_one_worker_serves_from_the_supervisor_socket_itself():
    import socket
    sock = server_module._bind("127.0.0.1", 0, workers=1)
    try:
        assert type(sock) is socket.socket
    finally:
        sock.close()
