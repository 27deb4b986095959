"""What one `metaedge serve` runs with: every setting in one checked, JSON-serialisable object, so that worker
processes (``--workers N``, started fresh by the ASGI server) build exactly the app the command line asked for.

No server stack is imported here: the CLI checks its arguments before anything heavy is loaded.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass, field

__all__ = ["ServeConfig", "parse_rate", "is_loopback", "CONFIG_ENV", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD"]

CONFIG_ENV = "METAEDGE_SERVE_CONFIG"      # how the supervisor hands the configuration to its worker processes
DEFAULT_MAX_UPLOAD = 16 * 1024 * 1024     # bytes per request body
DEFAULT_MAX_PIXELS = 4096 * 4096          # per image, checked from its header before decoding
DEFAULT_MAX_IMAGES = 64                   # images per request


def is_loopback(host: str) -> bool:
    """True for names/addresses that only this machine can reach (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_rate(text: str | None) -> tuple[float, int] | None:
    """``"20/s"``, ``"600/m"``, ``"20/s:40"`` (burst 40), ``"off"`` -> (requests per second, burst) or None."""
    if text is None or str(text).strip().lower() in ("off", "none", "0", ""):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*(?::\s*(\d+))?\s*", str(text))
    if not m:
        raise ValueError(f"rate limit: expected RATE/s or RATE/m, optionally :BURST (e.g. '20/s', '600/m:50', "
                         f"'off'), got {text!r}")
    rate = float(m.group(1)) / (60.0 if m.group(2).startswith("m") else 1.0)
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"rate limit: expected a rate > 0, got {text!r}")
    burst = int(m.group(3)) if m.group(3) else max(10, int(math.ceil(2 * rate)))
    if burst < 1:
        raise ValueError(f"rate limit: expected a burst >= 1, got {text!r}")
    return rate, burst


@dataclass
class ServeConfig:
    """The settings of one server (see ``metaedge serve --help`` for what each means)."""
    bundle: str
    gallery: str
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    backend: str = "auto"
    threads: int | None = None            # ONNX Runtime intra-op threads per worker (None: cores / workers)
    inference_slots: int = 4              # concurrent predict/enroll calls per worker
    tokens: str | None = None             # token store file; None: no access control (loopback only)
    insecure: bool = False                # allow a non-loopback bind without a token store
    read_only: bool = False               # refuse every change to the gallery
    certfile: str | None = None
    keyfile: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_images: int = DEFAULT_MAX_IMAGES
    rate_limit: str | None = "50/s"       # per token (per client address without tokens)
    keep_shots: str | None = None         # directory for enrolled images; None: images are never stored
    threshold: float | None = None        # open-set threshold override
    resize_mode: str | None = None
    yuv_matrix: str = "bt601"
    # the frame loop (--source)
    source: str | None = None
    roi: list[list[int]] | None = None
    every: str | None = None
    smooth: int = 1
    live_k: int = 3
    max_fps: float = 30.0
    jpeg_quality: int = 85
    # monitoring
    alerts: list[str] = field(default_factory=list)
    alert_webhook: str | None = None
    alert_interval: float = 1.0
    access_log: bool = True
    # set by the server when it starts (shared state of its processes)
    run_dir: str | None = None

    def validate(self) -> "ServeConfig":
        """Raises ValueError naming the first bad setting; returns self."""
        def positive_int(name: str, value, low: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= {low}, got {value!r}")

        if not (0 <= int(self.port) <= 65535):
            raise ValueError(f"--port: expected 0..65535, got {self.port}")
        positive_int("workers", self.workers)
        positive_int("inference_slots", self.inference_slots)
        if self.threads is not None:
            positive_int("threads", self.threads)
        positive_int("max_images", self.max_images)
        positive_int("max_pixels", self.max_pixels)
        positive_int("max_upload_bytes", self.max_upload_bytes, 1024)
        positive_int("smooth", self.smooth)
        positive_int("live_k", self.live_k)
        if not (1 <= self.jpeg_quality <= 100):
            raise ValueError(f"--jpeg-quality: expected 1..100, got {self.jpeg_quality}")
        if not (math.isfinite(self.max_fps) and self.max_fps > 0):
            raise ValueError(f"--max-fps: expected a number > 0, got {self.max_fps}")
        if not (math.isfinite(self.alert_interval) and self.alert_interval > 0):
            raise ValueError(f"alert interval: expected seconds > 0, got {self.alert_interval}")
        parse_rate(self.rate_limit)
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("--certfile and --keyfile go together (the certificate and its private key)")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"--threshold: expected a finite number, got {self.threshold}")
        if self.alert_webhook is not None and not re.match(r"https?://", self.alert_webhook):
            raise ValueError(f"--alert-webhook: expected an http:// or https:// URL, got {self.alert_webhook!r}")
        if self.roi is not None:
            for box in self.roi:
                if len(box) != 4 or any(int(v) != v for v in box) or box[2] < 1 or box[3] < 1 or min(box[:2]) < 0:
                    raise ValueError(f"--roi: expected boxes x,y,w,h with x,y >= 0 and w,h >= 1, got {box}")
        from metaedge.runtime.serve.alerts import parse_rule
        for rule in self.alerts:
            parse_rule(rule)
        if self.every is not None:
            from metaedge.runtime.stream import parse_every
            parse_every(self.every)
        return self

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"server configuration: unknown settings {sorted(unknown)}")
        return cls(**data).validate()

    @classmethod
    def from_environment(cls) -> "ServeConfig":
        text = os.environ.get(CONFIG_ENV)
        if not text:
            raise RuntimeError(f"{CONFIG_ENV} is not set: worker processes are started by `metaedge serve`")
        return cls.from_json(text)
