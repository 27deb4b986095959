"""Sources read through OpenCV's ``VideoCapture``: video files and network streams (its FFmpeg back-end),
V4L2 cameras, and GStreamer pipelines (the Jetson CSI camera; needs an OpenCV built with GStreamer, as
JetPack's is - the PyPI wheel is not).

Why OpenCV (``opencv-python-headless``): one well-kept library covers every source a device app meets - files,
RTSP/HTTP, V4L2 and GStreamer - and it is what Jetson images ship; PyAV reads files and streams well but has no
V4L2 controls and no GStreamer. Frames are handed over as OpenCV delivers them (BGR, or raw YUYV/NV12 where the
camera gives them): metaedge's pre-processing converts them natively, so no colour conversion runs here.
"""
from __future__ import annotations

import os
import re

import numpy as np

from metaedge.runtime.video.frames import FrameSource, VideoSourceError

__all__ = ["OpenCVSource", "csi_pipeline", "gstreamer_available"]

_TIMEOUT_MS = 10_000  # open and read timeouts for network streams (FFmpeg back-end): never hang on a dead host


def _cv2():
    import sys
    if "cv2" not in sys.modules:  # OpenCV's and FFmpeg's own console chatter off: metaedge logs what matters
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    from metaedge._optional import require
    return require("cv2", "reading video files, cameras and streams")


def gstreamer_available() -> bool:
    """Whether the installed OpenCV can run GStreamer pipelines (csi://, gst:)."""
    try:
        info = _cv2().getBuildInformation()
    except ImportError:
        return False
    m = re.search(r"GStreamer:\s*(\w+)", info)
    return bool(m and m.group(1).upper() == "YES")


def csi_pipeline(sensor: int, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """The Jetson CSI camera (Argus) as a GStreamer pipeline ending in an appsink that OpenCV reads: NV12 frames
    out of NVMM memory (no CPU colour conversion; metaedge converts NV12 natively), newest frame only."""
    return (f"nvarguscamerasrc sensor-id={int(sensor)} ! "
            f"video/x-raw(memory:NVMM), width=(int){int(width)}, height=(int){int(height)}, "
            f"format=(string)NV12, framerate=(fraction){int(fps)}/1 ! "
            f"nvvidconv flip-method={int(flip)} ! video/x-raw, format=(string)NV12 ! "
            f"appsink drop=true max-buffers=1 sync=false")


class OpenCVSource(FrameSource):
    """A ``cv2.VideoCapture`` as a :class:`~metaedge.runtime.video.frames.FrameSource`.

    ``kind``: ``"file"`` (not live: every frame, timestamps = position in the file), ``"camera"`` (V4L2 device
    index), ``"stream"`` (rtsp/http: live, reconnects), ``"gstreamer"`` (a pipeline string; live).
    ``raw``: cameras only - ask the driver for YUYV and hand it over unconverted (``pixel_format="yuyv"``).
    ``width``/``height``/``fps``: requested from cameras (the driver may pick the nearest mode).
    """

    def __init__(self, uri: str, kind: str, target, *, raw: bool = False, width: int | None = None,
                 height: int | None = None, fps: float | None = None, pixel_format: str | None = None,
                 loop: bool = False, **options):
        self.kind = kind
        self.live = kind != "file"
        self._target = target
        self._raw = raw and kind == "camera"
        self._request = (width, height, fps)
        self._loop = loop
        self._cap = None
        self._size: tuple[int, int] | None = None
        fmt = pixel_format or ("yuyv" if self._raw else "bgr")
        super().__init__(uri, pixel_format=fmt, **options)

    @property
    def fps(self) -> float | None:
        """Frames per second the source reports (None when it does not say)."""
        return self._fps

    @property
    def frame_count(self) -> int | None:
        """Frames in a file, as its container says (None for live sources)."""
        return self._count

    def _open(self) -> None:
        cv2 = _cv2()
        if self.kind == "gstreamer":
            if not gstreamer_available():
                raise VideoSourceError(
                    f"{self.uri}: this OpenCV ({cv2.__version__}) was built without GStreamer, which csi:// and "
                    f"gst: sources need. On a Jetson use JetPack's OpenCV (apt install python3-opencv; "
                    f"pip uninstall opencv-python-headless); elsewhere build OpenCV with -DWITH_GSTREAMER=ON")
            cap = cv2.VideoCapture(self._target, cv2.CAP_GSTREAMER)
        elif self.kind == "camera":
            cap = cv2.VideoCapture(int(self._target), cv2.CAP_V4L2)
            width, height, fps = self._request
            if self._raw:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"YUYV"))
                cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
            if width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
            if height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))
            if fps:
                cap.set(cv2.CAP_PROP_FPS, float(fps))
        else:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, _TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, _TIMEOUT_MS]
            cap = cv2.VideoCapture(self._target, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            where = {"file": "cannot decode this file (not a video, or a codec this OpenCV lacks)",
                     "camera": "no such camera, or it is busy (is another program using it?)",
                     "stream": "cannot connect (wrong address, host down, or not a stream OpenCV's FFmpeg reads)",
                     "gstreamer": "the pipeline does not start (check it with gst-launch-1.0)"}[self.kind]
            raise VideoSourceError(f"{self.uri}: {where}")
        self._cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._fps = float(fps) if fps and fps > 0 and np.isfinite(fps) else None
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT) if self.kind == "file" else 0
        self._count = int(count) if count and count > 0 else None
        if self._raw:
            self._size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def _grab(self):
        cap = self._cap
        ok, pixels = cap.read()
        if not ok or pixels is None:
            if self.kind == "file" and self._loop and self.stats.read > 0:
                cap.set(_cv2().CAP_PROP_POS_FRAMES, 0)
                ok, pixels = cap.read()
            if not ok or pixels is None:
                if self.live:
                    raise VideoSourceError("no frame from the source")
                return None
        timestamp = cap.get(_cv2().CAP_PROP_POS_MSEC) / 1000.0 if self.kind == "file" else None
        return self._layout(pixels), timestamp

    def _layout(self, pixels: np.ndarray) -> np.ndarray:
        """Raw buffers in the layout their pixel format has (V4L2 YUYV may come as one flat row)."""
        if self.pixel_format == "yuyv" and pixels.ndim != 3 and self._size:
            width, height = self._size
            return pixels.reshape(height, width, 2)
        if self.pixel_format == "gray" and pixels.ndim == 3 and pixels.shape[2] == 3:
            return np.ascontiguousarray(pixels[:, :, 0])  # a gray file decoded as three equal channels
        return pixels

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


def classify_uri(uri) -> tuple[str, object]:
    """(kind, target for VideoCapture) of a source URI that OpenCV reads."""
    if isinstance(uri, int) or (isinstance(uri, str) and uri.isdigit()):
        return "camera", int(uri)
    text = os.fspath(uri)
    m = re.fullmatch(r"/dev/video(\d+)", text)
    if m:
        return "camera", int(m.group(1))
    if re.match(r"(rtsps?|https?|rtmp|udp|tcp|srt)://", text, re.IGNORECASE):
        return "stream", text
    m = re.fullmatch(r"csi://(\d+)", text)
    if m:
        return "gstreamer", csi_pipeline(int(m.group(1)))
    if text.startswith("gst:"):
        pipeline = text[4:].strip()
        if "appsink" not in pipeline:
            raise VideoSourceError(f"{text}: a gst: pipeline must end in an appsink (e.g. '... ! videoconvert ! "
                                   f"video/x-raw,format=BGR ! appsink drop=true max-buffers=1')")
        return "gstreamer", pipeline
    return "file", text

