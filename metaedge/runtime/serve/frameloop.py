"""The server's frame loop (``--source``): frames from a camera, stream or video file, classified through
``EdgeClassifier.stream`` (regions, every n-th frame, smoothing), each published to the live feed as a JPEG with
its predictions, and counted in the metrics.

It runs as one thread of the supervising process, whatever the number of workers (one camera, one reader). A
video file or folder plays at its own frame rate and starts again at its end; a live source delivers its newest
frame. Until a class is enrolled, frames are published without predictions. A source that cannot be opened or is
lost for good is retried every few seconds (the state is in the feed, the log and the ``no_frames`` alert).
The region of interest can be changed while it runs (``PUT /v1/live/roi``): the loop restarts its stream on the
same open source.
"""
from __future__ import annotations

import logging
import threading
import time

__all__ = ["FrameLoop"]

log = logging.getLogger("metaedge.serve.live")
_RETRY_SECONDS = 3.0


class FrameLoop:
    def __init__(self, clf, config, feed, metrics):
        self.clf = clf
        self.config = config
        self.feed = feed
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._control_seq = None
        self.roi = [list(b) for b in config.roi] if config.roi else None
        self.status = "starting"
        self.error: str | None = None
        self._rate = _Rate()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FrameLoop":
        self._thread = threading.Thread(target=self._run, name="metaedge-serve-frames", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        from metaedge.runtime.video import open_source
        while not self._stop.is_set():
            try:
                source = open_source(self.config.source, loop=True, queue_size=1)  # (files: no backlog)
            except Exception as exc:  # noqa: BLE001 - VideoSourceError, OSError, a driver's own: report, retry
                self._failed(f"cannot open {self.config.source}: {exc}")
                continue
            log.info("live source %s opened (%s)", self.config.source, source.describe())
            try:
                self._play(source)
            except Exception as exc:  # noqa: BLE001 - a lost stream, a decoder error: report, reopen
                self._failed(f"{self.config.source}: {type(exc).__name__}: {exc}")
            finally:
                source.close()

    def _failed(self, message: str) -> None:
        if message != self.error:
            log.error("live source: %s (retrying every %.0f s)", message, _RETRY_SECONDS)
        self.status, self.error = "error", message
        self._publish_state()
        self._stop.wait(_RETRY_SECONDS)

    def _play(self, source) -> None:
        """Frames until the source ends or the loop stops; restarts the classifying stream when the region
        changes or the first class arrives."""
        from metaedge.runtime.classifier import EmptyGalleryError
        pacer = _Pacer(None if source.live else (getattr(source, "fps", None) or 30.0), self.config.max_fps)
        self.status, self.error = "running", None
        while not self._stop.is_set():
            self._apply_control()
            if len(self.clf) == 0:
                frame = source.read()
                if frame is None:
                    return
                self._emit(frame, (), False, 0.0)
                pacer.wait(self._stop)
                continue
            roi, restart = self.roi, False
            stream = self.clf.stream(source, roi=roi, every=self.config.every, smooth=self.config.smooth,
                                     k=self.config.live_k)
            try:
                for result in stream:
                    timings = self.clf.last_timings if result.classified else None
                    self._emit(result.frame, result.predictions, result.classified, result.latency, timings)
                    pacer.wait(self._stop)
                    if self._stop.is_set() or self._apply_control():
                        restart = True
                        break
                else:
                    return  # the source ended
            except EmptyGalleryError:
                restart = True  # the last class was forgotten: frames only again
            except ValueError as exc:  # a region that does not fit the frames: back to the whole frame
                log.error("live region %s: %s; classifying the whole frame", roi, exc)
                self.roi, self.error, restart = None, f"region {roi}: {exc}", True
            finally:
                stream.close()
            if not restart:
                return

    def _apply_control(self) -> bool:
        """Take a new region from the control file; True when it changed."""
        control = self.feed.control()
        seq = control.get("seq")
        if seq is None or seq == self._control_seq:
            return False
        self._control_seq = seq
        roi = control.get("roi")
        if roi == self.roi:
            return False
        self.roi, self.error = roi, None
        log.info("live region set to %s by %s", roi or "the whole frame", control.get("by", "?"))
        return True

    # ------------------------------------------------------------------ publishing
    def _emit(self, frame, predictions, classified: bool, latency: float, timings=None) -> None:
        import cv2

        from metaedge.runtime.video import to_bgr
        bgr = to_bgr(frame.pixels, frame.pixel_format)
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(self.config.jpeg_quality)])
        if not ok:
            raise RuntimeError("JPEG encoding of a live frame failed")
        self._seq += 1
        now = time.time()
        fps = self._rate.tick()
        meta = {"seq": self._seq, "index": frame.index, "timestamp": frame.timestamp, "time": now,
                "width": int(bgr.shape[1]), "height": int(bgr.shape[0]), "classified": classified,
                "fps": round(fps, 3), "latency_ms": round(latency * 1e3, 3),
                "predict_ms": round(timings.total_ms, 3) if timings is not None else None, "roi": self.roi,
                "predictions": [p.to_dict() for p in predictions], "status": self.status, "error": self.error,
                "source": self.config.source, "classes": len(self.clf)}
        self.feed.publish(jpeg.tobytes(), meta)
        m = self.metrics
        m.frames.inc()
        m.fps.set(fps)
        m.last_frame.set(now)
        if classified:
            m.observe_predictions("live", timings, predictions)

    def _publish_state(self) -> None:
        """A frame-less update (the source is down): the page shows why."""
        latest = self.feed.latest()
        meta, jpeg = latest if latest is not None else ({}, b"")
        self._seq += 1
        meta = {**meta, "seq": self._seq, "status": self.status, "error": self.error, "time": time.time(),
                "source": self.config.source, "predictions": [], "classified": False, "fps": 0.0}
        self.feed.publish(jpeg, meta)


class _Rate:
    """Frames per second published, smoothed (an exponential moving average of the intervals)."""

    def __init__(self):
        self.last = None
        self.interval = None

    def tick(self) -> float:
        now = time.monotonic()
        if self.last is not None:
            dt = now - self.last
            self.interval = dt if self.interval is None else 0.9 * self.interval + 0.1 * dt
        self.last = now
        return 1.0 / self.interval if self.interval else 0.0


class _Pacer:
    """Frames of a file at the file's rate; any source at most ``max_fps``."""

    def __init__(self, fps: float | None, max_fps: float):
        rate = min(fps, max_fps) if fps else max_fps
        self.interval = 1.0 / rate
        self.next = time.monotonic()

    def wait(self, stop: threading.Event) -> None:
        self.next += self.interval
        delay = self.next - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            self.next = time.monotonic()  # behind (a slow network): do not try to catch up
