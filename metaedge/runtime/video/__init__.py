"""Frame sources for device apps: video files, image folders and globs, V4L2 cameras, RTSP/HTTP streams, the
Jetson CSI camera and raw GStreamer pipelines - one URI each, one iterator of frames.

    from metaedge.video import open_source
    with open_source("rtsp://camera.local/stream") as source:      # or "video.mp4", "/dev/video0", "csi://0"
        for frame in source:                                          # Frame: pixels, pixel_format, timestamp
            clf.predict(frame.pixels, pixel_format=frame.pixel_format)

Live sources deliver the newest frame (a slow consumer never lags the camera; skipped frames are counted in
``source.stats.dropped``) and reconnect when the stream drops; files and folders deliver every frame in order
and end cleanly. ``EdgeClassifier.stream`` runs the whole loop. Reading video needs OpenCV
(``pip install 'metaedge[video]'``); image folders do not.
"""
from __future__ import annotations

import os

from metaedge.runtime.video.folder import ImageFolderSource
from metaedge.runtime.video.frames import Frame, FrameSource, SourceStats, VideoSourceError
from metaedge.runtime.video.output import VideoWriter, draw_predictions, to_bgr

__all__ = ["open_source", "Frame", "FrameSource", "SourceStats", "VideoSourceError", "VideoWriter",
           "draw_predictions", "to_bgr", "ImageFolderSource", "csi_pipeline", "gstreamer_available"]


def csi_pipeline(sensor: int, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """The GStreamer pipeline ``csi://N`` opens (see ``metaedge.runtime.video.opencv.csi_pipeline``)."""
    from metaedge.runtime.video.opencv import csi_pipeline as make
    return make(sensor, width, height, fps, flip)


def gstreamer_available() -> bool:
    from metaedge.runtime.video.opencv import gstreamer_available as check
    return check()


def open_source(uri, *, latest: bool | None = None, reconnect: float = 30.0, queue_size: int = 4,
                raw: bool = False, width: int | None = None, height: int | None = None, fps: float | None = None,
                pixel_format: str | None = None, loop: bool = False) -> FrameSource:
    """Open a frame source by URI:

    ================================  =====================================================================
    ``video.mp4`` (any file)          a video file, every frame in order (OpenCV/FFmpeg); ``loop`` restarts it
    ``shots/`` or ``shots/*.jpg``     an image folder or glob, in name order (``fps``: timestamps; default 1)
    ``/dev/video0`` or ``0``          a V4L2 camera; ``width``/``height``/``fps`` requested; ``raw=True``: the
                                      camera's YUYV unconverted (metaedge converts it natively)
    ``rtsp://...``, ``http://...``    a network stream (also rtmp, udp, tcp, srt); 10 s open/read timeouts
    ``csi://0``                       the Jetson CSI camera (nvarguscamerasrc, NV12 frames)
    ``gst:<pipeline> ! appsink``      any GStreamer pipeline ending in an appsink (``pixel_format`` says what
                                      it delivers; default BGR)
    ================================  =====================================================================

    ``latest``: deliver only the newest frame (default: True for cameras and streams, False for files and
    folders). ``reconnect``: seconds a lost live stream is retried before reading raises
    :class:`VideoSourceError`. Opening fails at once, with a :class:`VideoSourceError` saying why, when the URI
    names nothing readable.
    """
    options = dict(latest=latest, reconnect=reconnect, queue_size=queue_size)
    text = str(uri) if isinstance(uri, int) else os.fspath(uri)
    if os.path.isdir(text) or (any(ch in text for ch in "*?[") and not text.startswith(("gst:", "rtsp", "http"))):
        return ImageFolderSource(text, fps=fps, loop=loop, **options)
    from metaedge.runtime.video.opencv import OpenCVSource, classify_uri
    kind, target = classify_uri(uri)
    if kind == "file":
        if not os.path.exists(text):
            raise VideoSourceError(f"{text}: no such file (for a camera use /dev/videoN or its index, for a stream "
                                   f"an rtsp:// or http:// address)")
        if not os.path.isfile(text):
            raise VideoSourceError(f"{text}: not a regular file")
    return OpenCVSource(text, kind, target, raw=raw, width=width, height=height, fps=fps,
                        pixel_format=pixel_format, loop=loop, **options)
