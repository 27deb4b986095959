"""Alert rules: conditions on the server's metrics, checked every second by the supervising process. A rule
that starts or stops firing raises an event: a log line, ``metaedge_alert_firing{rule}`` /
``metaedge_alert_events_total`` in ``/metrics``, the list ``GET /v1/alerts`` shows (and the operator page),
and optionally a JSON ``POST`` to a webhook.

Rules (``--alert``, repeatable)::

    unknown_rate > 0.5 over 60s [min 20]    more than half of the predictions of the last minute were unknown
                                            (judged once the window holds at least 20 predictions; default 10)
    latency_p99 > 50ms over 60s [min 20]    the 99th percentile of predict time (histogram bucket bound)
    no_frames for 10s                       the live source delivered no frame for 10 seconds

The webhook gets ``{"rule", "name", "state": "firing"|"resolved", "value", "threshold", "at", "message",
"server"}``; it is posted from its own thread (5 s timeout, 3 tries), so a slow receiver never delays the checks.
"""
from __future__ import annotations

import collections
import datetime as _dt
import json
import logging
import os
import queue
import re
import threading
import time
import urllib.request
from dataclasses import dataclass

__all__ = ["AlertRule", "parse_rule", "AlertMonitor", "read_alerts", "ALERTS_FILE"]

log = logging.getLogger("metaedge.serve.alerts")
ALERTS_FILE = "alerts.json"
_MAX_EVENTS = 100

_RATE = re.compile(r"\s*(unknown_rate|latency_p99)\s*>\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s+over\s+(\d+(?:\.\d+)?)\s*(s|m)"
                   r"(?:\s+min\s+(\d+))?\s*")
_FRAMES = re.compile(r"\s*no_frames\s+for\s+(\d+(?:\.\d+)?)\s*(s|m)\s*")


@dataclass(frozen=True)
class AlertRule:
    text: str
    kind: str            # unknown_rate, latency_p99, no_frames
    threshold: float     # a fraction, seconds of latency, or seconds without frames
    window: float        # seconds (the threshold itself for no_frames)
    min_count: int = 10

    @property
    def name(self) -> str:
        return self.kind

    def to_dict(self) -> dict:
        return {"rule": self.text, "kind": self.kind, "threshold": self.threshold, "window_s": self.window,
                "min_count": self.min_count}


def parse_rule(text: str) -> AlertRule:
    """An alert rule from its text (see the module docstring); ValueError naming what is wrong."""
    m = _FRAMES.fullmatch(text)
    if m:
        seconds = float(m.group(1)) * (60 if m.group(2) == "m" else 1)
        if seconds <= 0:
            raise ValueError(f"alert {text!r}: the time must be > 0")
        return AlertRule(text.strip(), "no_frames", seconds, seconds, 0)
    m = _RATE.fullmatch(text)
    if not m:
        raise ValueError(f"alert {text!r}: expected 'unknown_rate > FRACTION over Ns [min N]', "
                         f"'latency_p99 > Nms over Ns [min N]' or 'no_frames for Ns'")
    kind, value, unit = m.group(1), float(m.group(2)), m.group(3)
    window = float(m.group(4)) * (60 if m.group(5) == "m" else 1)
    if kind == "unknown_rate":
        if unit is not None or not 0 <= value < 1:
            raise ValueError(f"alert {text!r}: unknown_rate is a fraction in [0, 1) without a unit")
    else:
        value = value / 1000.0 if unit in (None, "ms") else value
    if window <= 0:
        raise ValueError(f"alert {text!r}: the window must be > 0")
    return AlertRule(text.strip(), kind, value, window, int(m.group(6)) if m.group(6) else 10)


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds")


def read_alerts(run_dir: str) -> dict:
    """What the monitor last wrote: rules, what fires now, recent events (empty without rules)."""
    try:
        with open(os.path.join(run_dir, ALERTS_FILE), "rb") as f:
            return json.loads(f.read(4 << 20))
    except (FileNotFoundError, ValueError):
        return {"rules": [], "firing": [], "events": []}


def _quantile_bound(buckets_now: dict, buckets_then: dict, q: float) -> float | None:
    """The upper bound of the histogram bucket holding quantile ``q`` of the observations in between."""
    items = []
    for key, value in buckets_now.items():
        le = float("inf") if key == "+Inf" else float(key)
        items.append((le, value - buckets_then.get(key, 0.0)))
    items.sort()
    total = items[-1][1] if items else 0.0
    if total <= 0:
        return None
    for le, count in items:
        if count >= q * total:
            return le
    return items[-1][0]


class AlertMonitor:
    """Checks ``rules`` every ``interval`` seconds against ``metrics.totals()``; see the module docstring."""

    def __init__(self, rules: list[AlertRule], metrics, run_dir: str, webhook: str | None = None,
                 interval: float = 1.0, server: str = ""):
        self.rules = rules
        self.metrics = metrics
        self.run_dir = run_dir
        self.webhook = webhook
        self.interval = interval
        self.server = server
        self.firing: dict[str, dict] = {}
        self.events: collections.deque = collections.deque(maxlen=_MAX_EVENTS)
        window = max((r.window for r in rules), default=60.0)
        self._samples: collections.deque = collections.deque(maxlen=int(window / interval) + 5)
        self._started = time.time()
        self._stop = threading.Event()
        self._outbox: queue.Queue = queue.Queue(maxsize=1000)
        self._threads: list[threading.Thread] = []
        for rule in rules:
            metrics.alert_firing.labels(rule.text).set(0)
        self._write()

    def start(self) -> "AlertMonitor":
        self._threads = [threading.Thread(target=self._run, name="metaedge-serve-alerts", daemon=True)]
        if self.webhook:
            self._threads.append(threading.Thread(target=self._deliver, name="metaedge-serve-webhook", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._outbox.put(None)
        for t in self._threads:
            t.join(10)

    # ------------------------------------------------------------------ checking
    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a broken check must not stop the others
                log.exception("alert check failed")

    def check(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        totals = self.metrics.totals()
        self._samples.append((now, totals))
        for rule in self.rules:
            value = self._value(rule, now, totals)
            if value is None:
                continue
            firing = value > rule.threshold
            if firing != (rule.text in self.firing):
                self._event(rule, firing, value, now)

    def _value(self, rule: AlertRule, now: float, totals: dict) -> float | None:
        if rule.kind == "no_frames":
            last = totals["last_frame"] or self._started
            return now - last
        # The counters as they were at the start of the window: the newest sample at least `window` old, or
        # zero at the monitor's start while the window reaches back further than that.
        old: dict = {"predictions": 0.0, "unknown": 0.0, "latency_count": 0.0, "latency_buckets": {}}
        for t, sample in self._samples:
            if t > now - rule.window + 1e-9:
                break
            old = sample
        if rule.kind == "unknown_rate":
            n = totals["predictions"] - old["predictions"]
            if n < max(1, rule.min_count):
                return None
            return (totals["unknown"] - old["unknown"]) / n
        n = totals["latency_count"] - old["latency_count"]
        if n < max(1, rule.min_count):
            return None
        return _quantile_bound(totals["latency_buckets"], old["latency_buckets"], 0.99)

    def _event(self, rule: AlertRule, firing: bool, value: float, now: float) -> None:
        state = "firing" if firing else "resolved"
        shown = {"unknown_rate": f"{value:.3f}", "latency_p99": f"{value * 1e3:.1f} ms",
                 "no_frames": f"{value:.1f} s"}[rule.kind]
        message = f"alert {rule.text!r} {state}: {rule.kind} = {shown}"
        event = {"rule": rule.text, "name": rule.name, "state": state, "value": value, "threshold": rule.threshold,
                 "at": _iso(now), "message": message, "server": self.server}
        if firing:
            self.firing[rule.text] = event
            log.warning(message)
        else:
            self.firing.pop(rule.text, None)
            log.info(message)
        self.metrics.alert_firing.labels(rule.text).set(1 if firing else 0)
        self.metrics.alert_events.labels(rule.text, state).inc()
        self.events.append(event)
        self._write()
        if self.webhook:
            try:
                self._outbox.put_nowait(event)
            except queue.Full:
                log.error("alert webhook: %d events waiting; dropping %s", self._outbox.qsize(), message)

    def _write(self) -> None:
        from metaedge.runtime.fileio import atomic_write_bytes
        doc = {"rules": [r.to_dict() for r in self.rules], "firing": list(self.firing.values()),
               "events": list(self.events), "webhook": bool(self.webhook)}
        atomic_write_bytes(os.path.join(self.run_dir, ALERTS_FILE), json.dumps(doc).encode(), durable=False)

    # ------------------------------------------------------------------ the webhook
    def _deliver(self) -> None:
        while True:
            event = self._outbox.get()
            if event is None:
                return
            body = json.dumps(event).encode()
            for attempt in range(3):
                try:
                    request = urllib.request.Request(self.webhook, data=body, method="POST",
                                                     headers={"Content-Type": "application/json",
                                                              "User-Agent": "metaedge-serve"})
                    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http(s) only
                        response.read(1024)
                    break
                except Exception as exc:  # noqa: BLE001 - refused, timeout, HTTP error: retry, then give up
                    if attempt == 2 or self._stop.wait(2.0 ** attempt):
                        log.error("alert webhook %s: %s (event %r not delivered)", self.webhook, exc,
                                  event["message"])
                        self.metrics.error("webhook")
                        break
