"""Prometheus metrics of a server (prometheus-client), one set for all its processes.

`metaedge serve` runs prometheus-client in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` in the server's run
directory, set before the library is imported): every process - the workers, and the supervisor with the frame
loop and the alert monitor - writes its samples to memory-mapped files there, and ``GET /metrics`` on any worker
sums them. An app built outside `metaedge serve` (no such directory) keeps its metrics in its own registry.

=========================================================  =============================================
``metaedge_http_requests_total{endpoint,method,status}``    requests answered, per route template
``metaedge_http_request_duration_seconds{endpoint,method}`` latency histogram per route template
``metaedge_predict_seconds{source,backend,bundle}``          whole predict calls (``source``: api / live)
``metaedge_predict_stage_seconds{stage,source,...}``         the split: preprocess / network / topk
``metaedge_predictions_total{source,backend,bundle}``       images (or regions) classified
``metaedge_unknown_predictions_total{source,...}``           ... of which below the open-set threshold
``metaedge_stream_frames_total``, ``metaedge_stream_fps``     the frame loop (``--source``)
``metaedge_stream_last_frame_timestamp_seconds``             Unix time of the newest frame
``metaedge_classes``                                         classes in the gallery
``metaedge_gallery_changes_total{op}``                      enroll / forget / rename / adapt / calibrate
``metaedge_errors_total{kind}``                             errors by code (bad_image, unauthorized, ...)
``metaedge_alert_firing{rule}``, ``metaedge_alert_events_total{rule,state}``  alert rules
``metaedge_server_info{version,backend,bundle_fingerprint,...}``  1, with the build as labels
=========================================================  =============================================
"""
from __future__ import annotations

import os

__all__ = ["Metrics", "multiprocess_dir", "LATENCY_BUCKETS"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
                   4.096, 8.192, 16.384)
STAGES = ("preprocess", "network", "topk")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The server's metric objects; ``backend``/``bundle`` (fingerprint) label the prediction metrics."""

    def __init__(self, *, backend: str, fingerprint: str | None, version: str, gallery: str):
        from metaedge._optional import require
        prom = require("prometheus_client", "the server's /metrics")
        self._prom = prom
        self.multiprocess = multiprocess_dir() is not None
        # With multiprocess files the objects need no registry (the collector reads the files); without, they
        # live in this app's own registry (so several apps in one process do not collide).
        self._registry = None if self.multiprocess else prom.CollectorRegistry()
        reg = {"registry": self._registry}
        bundle = (fingerprint or "unknown")[:12]
        self.backend_labels = (backend, bundle)
        C, G, H = prom.Counter, prom.Gauge, prom.Histogram
        self.requests = C("metaedge_http_requests", "HTTP requests answered", ["endpoint", "method", "status"], **reg)
        self.request_seconds = H("metaedge_http_request_duration_seconds", "HTTP request latency (seconds)",
                                 ["endpoint", "method"], buckets=LATENCY_BUCKETS, **reg)
        self.predict_seconds = H("metaedge_predict_seconds", "whole predict calls (seconds)",
                                 ["source", "backend", "bundle"], buckets=LATENCY_BUCKETS, **reg)
        self.stage_seconds = H("metaedge_predict_stage_seconds", "predict time by stage (seconds)",
                               ["stage", "source", "backend", "bundle"], buckets=LATENCY_BUCKETS, **reg)
        self.predictions = C("metaedge_predictions", "images or regions classified", ["source", "backend", "bundle"],
                             **reg)
        self.unknown = C("metaedge_unknown_predictions", "predictions below the open-set threshold",
                         ["source", "backend", "bundle"], **reg)
        self.frames = C("metaedge_stream_frames", "frames read by the frame loop", **reg)
        self.fps = G("metaedge_stream_fps", "frames per second of the frame loop", multiprocess_mode="mostrecent",
                     **reg)
        self.last_frame = G("metaedge_stream_last_frame_timestamp_seconds", "Unix time of the newest frame",
                            multiprocess_mode="mostrecent", **reg)
        self.classes = G("metaedge_classes", "classes in the gallery", multiprocess_mode="mostrecent", **reg)
        self.changes = C("metaedge_gallery_changes", "changes of the gallery made by this server", ["op"], **reg)
        self.errors = C("metaedge_errors", "errors by kind", ["kind"], **reg)
        self.alert_firing = G("metaedge_alert_firing", "1 while an alert rule fires", ["rule"],
                              multiprocess_mode="mostrecent", **reg)
        self.alert_events = C("metaedge_alert_events", "alert state changes", ["rule", "state"], **reg)
        info = G("metaedge_server_info", "the server's build (value 1)",
                 ["version", "backend", "bundle_fingerprint", "gallery"], multiprocess_mode="max", **reg)
        info.labels(version=version, backend=backend, bundle_fingerprint=fingerprint or "unknown",
                    gallery=gallery).set(1)
        # Children bound once: the hot path does no label look-ups.
        self._stage = {(stage, source): self.stage_seconds.labels(stage, source, *self.backend_labels)
                       for stage in STAGES for source in ("api", "live")}
        self._whole = {source: self.predict_seconds.labels(source, *self.backend_labels) for source in ("api", "live")}
        self._count = {source: self.predictions.labels(source, *self.backend_labels) for source in ("api", "live")}
        self._unknown = {source: self.unknown.labels(source, *self.backend_labels) for source in ("api", "live")}

    def observe_predictions(self, source: str, timings, predictions) -> None:
        """One predict call: its timing split (``EdgeClassifier.last_timings``, milliseconds; Prometheus
        histograms are in seconds) and its predictions."""
        if timings is not None:
            self._whole[source].observe(timings.total_ms / 1e3)
            self._stage["preprocess", source].observe(timings.preprocessing_ms / 1e3)
            self._stage["network", source].observe(timings.backbone_ms / 1e3)
            self._stage["topk", source].observe(timings.kernels_ms / 1e3)
        self._count[source].inc(len(predictions))
        unknown = sum(1 for p in predictions if p.unknown)
        if unknown:
            self._unknown[source].inc(unknown)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def registry(self):
        """A registry to read from: every process's samples (multiprocess) or this app's."""
        if not self.multiprocess:
            return self._registry
        from prometheus_client import multiprocess
        registry = self._prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry

    def exposition(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry()), self._prom.CONTENT_TYPE_LATEST

    def totals(self) -> dict:
        """Sums over labels of what the operator page and the alert rules read: predictions, unknown, errors,
        requests, the predict latency histogram (cumulative buckets), frames, fps, classes, changes."""
        out: dict = {"predictions": 0.0, "unknown": 0.0, "errors": 0.0, "requests": 0.0, "frames": 0.0,
                     "changes": 0.0, "fps": 0.0, "last_frame": 0.0, "classes": 0.0, "latency_sum": 0.0,
                     "latency_count": 0.0, "latency_buckets": {}}
        names = {"metaedge_predictions_total": "predictions", "metaedge_unknown_predictions_total": "unknown",
                 "metaedge_errors_total": "errors", "metaedge_http_requests_total": "requests",
                 "metaedge_stream_frames_total": "frames", "metaedge_gallery_changes_total": "changes",
                 "metaedge_predict_seconds_sum": "latency_sum", "metaedge_predict_seconds_count": "latency_count"}
        gauges = {"metaedge_stream_fps": "fps", "metaedge_stream_last_frame_timestamp_seconds": "last_frame",
                  "metaedge_classes": "classes"}
        buckets: dict[float, float] = {}
        for family in self.registry().collect():
            for s in family.samples:
                if s.name in names:
                    out[names[s.name]] += s.value
                elif s.name in gauges:
                    out[gauges[s.name]] = max(out[gauges[s.name]], s.value)
                elif s.name == "metaedge_predict_seconds_bucket":
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
        out["latency_buckets"] = {("+Inf" if le == float("inf") else repr(le)): v for le, v in sorted(buckets.items())}
        return out
