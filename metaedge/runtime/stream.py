"""The frame loop of a device app: frames from a source, classified (whole, or in regions), optionally every
n-th frame or every t seconds, optionally smoothed over the last frames, with the loop's frame rate."""
from __future__ import annotations

import collections
import dataclasses
import math
import re
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

__all__ = ["StreamResult", "run_stream", "parse_every"]


@dataclass(frozen=True)
class StreamResult:
    """One frame of a stream. ``predictions``: one ``Prediction`` per region (one for the whole frame without
    ``roi``), smoothed when the stream smooths; on frames that were not classified (``every``) they are the
    last frame's (``classified`` says which). ``prediction``: the first of them. ``fps``: frames per second
    the loop delivers; ``latency``: seconds from reading the frame to its predictions (0 when not
    classified)."""
    frame: "object"
    predictions: tuple
    classified: bool
    fps: float
    latency: float

    @property
    def prediction(self):
        return self.predictions[0] if self.predictions else None

    def to_dict(self) -> dict:
        return {"index": self.frame.index, "timestamp": self.frame.timestamp, "classified": self.classified,
                "fps": self.fps, "latency_ms": self.latency * 1e3,
                "predictions": [p.to_dict() for p in self.predictions]}


def parse_every(every) -> tuple[str, float] | None:
    """``None`` (every frame), an int n (every n-th frame), a float (seconds between classified frames), or a
    string ``"3"``, ``"3f"``, ``"0.5s"``, ``"200ms"`` -> ``("frames", n)`` / ``("seconds", t)`` / None."""
    if every is None:
        return None
    if isinstance(every, bool):
        raise TypeError(f"`every`: expected frames (int), seconds (float) or a string like '0.5s', got {every!r}")
    if isinstance(every, (int, np.integer)):
        if every < 1:
            raise ValueError(f"`every`: expected at least 1 frame, got {every}")
        return "frames", float(every)
    if isinstance(every, float):
        if not math.isfinite(every) or every < 0:
            raise ValueError(f"`every`: expected seconds >= 0, got {every}")
        return "seconds", every
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(f|frames?|s|sec|ms)?\s*", str(every))
    if not m:
        raise ValueError(f"`every`: expected a frame count ('3', '3f') or a duration ('0.5s', '200ms'), got {every!r}")
    value, unit = float(m.group(1)), (m.group(2) or "f")
    if unit.startswith("f"):
        if value < 1 or value != int(value):
            raise ValueError(f"`every`: expected a whole number of frames >= 1, got {every!r}")
        return "frames", value
    return "seconds", value / 1000.0 if unit == "ms" else value


class _Smoother:
    """Mean score per label over the last ``n`` classified frames, for one region. A label missing from a
    frame's top-k counts with that frame's lowest listed score (its true score is at most that)."""

    def __init__(self, n: int):
        self.window: collections.deque = collections.deque(maxlen=n)

    def add(self, pred, threshold):
        from metaedge.runtime.openset import confidence
        from metaedge.runtime.results import Prediction
        self.window.append(dict(pred.topk))
        labels = set().union(*self.window)
        scores = {lab: sum(f.get(lab, min(f.values())) for f in self.window) / len(self.window) for lab in labels}
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:len(pred.topk)]
        best, score = ranked[0]
        return Prediction(best, score, tuple(ranked), threshold is not None and score < threshold,
                          None if pred.confidence is None else confidence(score, "cosine"))


def run_stream(clf, source, *, roi=None, every=None, smooth: int = 1, k: int = 1, pixel_format: str | None = None,
               max_frames: int | None = None) -> Iterator[StreamResult]:
    """See ``EdgeClassifier.stream``. Arguments are checked and a URI is opened here, so a bad argument or an
    unreachable source raises at the call, not at the first frame."""
    from metaedge import kernels
    from metaedge.runtime.video import FrameSource, open_source
    if isinstance(smooth, bool) or not isinstance(smooth, (int, np.integer)) or smooth < 1:
        raise ValueError(f"`smooth`: expected an int >= 1 (frames to average over), got {smooth!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k`: expected an int >= 1, got {k!r}")
    schedule = parse_every(every)
    boxes = kernels.as_rois(roi)
    owned = not isinstance(source, FrameSource)
    src = open_source(source) if owned else source
    return _loop(clf, src, owned, boxes, schedule, int(smooth), int(k), pixel_format, max_frames)


def _loop(clf, src, owned, boxes, schedule, smooth, k, pixel_format, max_frames):
    smoothers: list[_Smoother] = []
    last: tuple = ()
    last_time, frames_seen = -math.inf, 0
    rate, prev = 0.0, None
    try:
        for frame in src:
            now = time.monotonic()
            if prev is not None:
                dt = now - prev
                rate = (1.0 / dt if rate == 0.0 else 0.9 * rate + 0.1 / dt) if dt > 0 else rate
            prev = now
            due = (schedule is None or (schedule[0] == "frames" and frames_seen % int(schedule[1]) == 0)
                   or (schedule[0] == "seconds" and now - last_time >= schedule[1]))
            frames_seen += 1
            latency = 0.0
            if due:
                fmt = pixel_format or frame.pixel_format
                preds = clf.predict(frame.pixels, k=max(k, 5) if smooth > 1 else k, roi=boxes, pixel_format=fmt)
                preds = list(preds) if isinstance(preds, list) else [preds]
                if smooth > 1:
                    if len(smoothers) != len(preds):
                        smoothers = [_Smoother(smooth) for _ in preds]
                    threshold = clf.unknown_threshold
                    preds = [s.add(p, threshold) for s, p in zip(smoothers, preds)]
                last = tuple(_trim(p, k) for p in preds)
                last_time = now
                latency = time.monotonic() - frame.captured
            yield StreamResult(frame, last, due, rate, latency)
            if max_frames is not None and frames_seen >= max_frames:
                return
    finally:
        if owned:
            src.close()


def _trim(pred, k: int):
    if len(pred.topk) <= k:
        return pred
    return dataclasses.replace(pred, topk=pred.topk[:k])

