"""Frames and the threaded reader every source shares: latest-frame or in-order delivery, timestamps,
reconnection of live streams, a clean end and a clean close."""
from __future__ import annotations

import abc
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Frame", "FrameSource", "VideoSourceError", "SourceStats"]

log = logging.getLogger("metaedge.video")


class VideoSourceError(RuntimeError):
    """A source cannot be opened, or a live stream was lost for good; the message says which and why."""


@dataclass(frozen=True)
class Frame:
    """One frame: ``pixels`` (uint8, laid out as ``pixel_format`` says: see ``metaedge.kernels.preprocess``),
    ``index`` (its number in the source, dropped frames counted), ``timestamp`` (seconds: the position in a
    file, the Unix time of capture for live sources), ``captured`` (``time.monotonic()`` when it was read: how
    old it is), and the ``source`` URI."""
    pixels: np.ndarray
    pixel_format: str
    index: int
    timestamp: float
    captured: float
    source: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        rows, cols = self.pixels.shape[:2]
        return (cols, rows * 2 // 3) if self.pixel_format == "nv12" else (cols, rows)

    @property
    def age(self) -> float:
        """Seconds since it was read from the source."""
        return time.monotonic() - self.captured


@dataclass
class SourceStats:
    """What a source did so far: frames read from the device/file, delivered to the caller, dropped because a
    newer one arrived first (latest-frame sources), and reconnections of a lost stream."""
    read: int = 0
    delivered: int = 0
    dropped: int = 0
    reconnects: int = 0
    errors: list = field(default_factory=list)


_END = object()


class FrameSource(abc.ABC):
    """A stream of :class:`Frame` read by a background thread.

    ``latest=True`` (live cameras and streams): the caller always gets the newest frame; frames it had no time
    for are dropped (``stats.dropped``), so a slow classifier never lags the camera. ``latest=False`` (files,
    folders): every frame, in order; the reader waits while ``queue_size`` frames are unread.
    Live sources that fail are reopened (``reconnect``: seconds to keep trying, a log line per attempt); when
    that fails for good, reading raises :class:`VideoSourceError`. A file that ends is a clean end:
    ``read()`` returns ``None`` and iteration stops. ``close()`` stops the thread and releases the device;
    sources are context managers.

    Subclasses implement ``_open()``, ``_grab() -> (pixels, timestamp) | None`` (None: the end) and
    ``_release()``; they run on the reader thread only.
    """

    live = False

    def __init__(self, uri: str, *, pixel_format: str, latest: bool | None = None, queue_size: int = 4,
                 reconnect: float = 30.0):
        self.uri = uri
        self.pixel_format = pixel_format
        self.latest = self.live if latest is None else bool(latest)
        self.reconnect = float(reconnect)
        self.stats = SourceStats()
        self._cond = threading.Condition()
        self._queue: list = []
        self._queue_size = 1 if self.latest else max(1, int(queue_size))
        self._closed = False
        self._ended = False
        self._error: BaseException | None = None
        self._index = 0
        self._open()  # in the caller's thread: a source that cannot be opened raises here
        self._thread = threading.Thread(target=self._run, name=f"metaedge-video:{uri}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ implemented by each kind of source
    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _grab(self):
        """-> (pixels, timestamp or None) for the next frame, or None at the end; raises on failure."""

    @abc.abstractmethod
    def _release(self) -> None: ...

    def describe(self) -> str:
        return f"{type(self).__name__}({self.uri!r}, {self.pixel_format})"

    # ------------------------------------------------------------------ the reader thread
    def _put(self, item) -> None:
        with self._cond:
            if self.latest:
                if self._queue and self._queue[0] is not _END:
                    self.stats.dropped += 1
                self._queue[:] = [item]
            else:
                while len(self._queue) >= self._queue_size and not self._closed:
                    self._cond.wait(0.1)
                self._queue.append(item)
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            while not self._closed:
                try:
                    got = self._grab()
                except Exception as exc:  # noqa: BLE001 - any failure of the device or decoder
                    if self._closed:
                        break
                    if not self.live or not self._reopen(exc):
                        if self._error is None:  # (a failed reconnect has recorded why already)
                            self._error = exc if isinstance(exc, VideoSourceError) else VideoSourceError(
                                f"{self.uri}: {type(exc).__name__}: {exc}")
                        break
                    continue
                if got is None:
                    if self.live and not self._closed and self._reopen(VideoSourceError("the stream ended")):
                        continue
                    break
                pixels, timestamp = got
                now = time.monotonic()
                frame = Frame(pixels, self.pixel_format, self._index, time.time() if timestamp is None else timestamp,
                              now, self.uri)
                self._index += 1
                self.stats.read += 1
                self._put(frame)
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            try:
                self._release()
            except Exception:  # noqa: BLE001 - releasing a broken device must not mask why it broke
                pass

    def _reopen(self, why: BaseException) -> bool:
        """Reopen a lost live stream, retrying with back-off for up to ``reconnect`` seconds."""
        deadline = time.monotonic() + self.reconnect
        delay, attempt = 0.25, 0
        self.stats.errors.append(f"{type(why).__name__}: {why}")
        while not self._closed and time.monotonic() < deadline:
            attempt += 1
            log.warning("%s: stream lost (%s); reconnecting, attempt %d", self.uri, why, attempt)
            try:
                self._release()
            except Exception:  # noqa: BLE001
                pass
            try:
                self._open()
                self.stats.reconnects += 1
                log.warning("%s: reconnected after %d attempt(s)", self.uri, attempt)
                return True
            except Exception as exc:  # noqa: BLE001
                why = exc
            with self._cond:
                self._cond.wait(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)
        if not self._closed:
            log.error("%s: giving up after %.0f s of reconnect attempts (%s)", self.uri, self.reconnect, why)
            self._error = VideoSourceError(f"{self.uri}: stream lost and not back after {self.reconnect:.0f} s "
                                           f"({why})")
        return False

    # ------------------------------------------------------------------ the caller's side
    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame (the newest one for latest-frame sources); ``None`` at the end of a file or folder
        (or after ``close()``). ``timeout``: seconds to wait (``None``: until a frame or the end); a timeout
        raises ``TimeoutError``. A live stream lost for good raises :class:`VideoSourceError`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._queue:
                if self._ended or self._closed:
                    if self._error is not None and not self._closed:
                        raise self._error
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{self.uri}: no frame within {timeout} s")
                self._cond.wait(remaining if remaining is not None else 0.5)
            frame = self._queue.pop(0)
            self._cond.notify_all()
        self.stats.delivered += 1
        return frame

    def __iter__(self):
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        """Stop reading and release the device or file. Idempotent."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{self.describe()} read={self.stats.read} dropped={self.stats.dropped}>"
