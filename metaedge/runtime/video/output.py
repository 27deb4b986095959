"""What a frame loop shows and saves: the frame as BGR, with each region's label, score and unknown state drawn
on it, and a video file writer for such frames."""
from __future__ import annotations

import os

import numpy as np

from metaedge.runtime.video.frames import Frame, VideoSourceError

__all__ = ["to_bgr", "draw_predictions", "VideoWriter"]

_KNOWN = (60, 200, 60)      # BGR: green box for a recognised class
_UNKNOWN = (40, 40, 230)    # red for "none of the enrolled classes"


def _cv2():
    import sys
    if "cv2" not in sys.modules:  # OpenCV's and FFmpeg's own console chatter off: metaedge logs what matters
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    from metaedge._optional import require
    return require("cv2", "drawing and saving video frames")


def to_bgr(frame: Frame | np.ndarray, pixel_format: str | None = None) -> np.ndarray:
    """The frame's pixels as a new contiguous BGR ``[h, w, 3]`` image (for display and saving)."""
    cv2 = _cv2()
    pixels = frame.pixels if isinstance(frame, Frame) else frame
    fmt = frame.pixel_format if isinstance(frame, Frame) else (pixel_format or "auto")
    if fmt == "auto":
        fmt = "gray" if pixels.ndim == 2 or pixels.shape[2] == 1 else {3: "rgb", 4: "rgba"}[pixels.shape[2]]
    conversions = {"gray": cv2.COLOR_GRAY2BGR, "rgb": cv2.COLOR_RGB2BGR, "rgba": cv2.COLOR_RGBA2BGR,
                   "bgra": cv2.COLOR_BGRA2BGR, "nv12": cv2.COLOR_YUV2BGR_NV12, "yuyv": cv2.COLOR_YUV2BGR_YUYV}
    if fmt == "bgr":
        return np.ascontiguousarray(pixels).copy()
    src = pixels[:, :, 0] if fmt == "gray" and pixels.ndim == 3 else pixels
    return cv2.cvtColor(np.ascontiguousarray(src), conversions[fmt])


def draw_predictions(image_bgr: np.ndarray, predictions, rois=None, *, fps: float | None = None) -> np.ndarray:
    """Draw each prediction (label, score, unknown) on ``image_bgr`` in place - at its box when ``rois`` are
    given, else as a banner for the whole frame - plus the frame rate; returns the image."""
    cv2 = _cv2()
    h, w = image_bgr.shape[:2]
    scale = max(0.4, min(w, h) / 600)
    thick = max(1, int(round(scale * 2)))
    preds = predictions if isinstance(predictions, (list, tuple)) else [predictions]
    boxes = [None] * len(preds) if rois is None else [tuple(int(v) for v in b) for b in np.asarray(rois).reshape(-1, 4)]
    for pred, box in zip(preds, boxes):
        if pred is None:
            continue
        colour = _UNKNOWN if pred.unknown else _KNOWN
        text = f"{'unknown (' + pred.label + ')' if pred.unknown else pred.label}  {pred.score:.2f}"
        if box is not None:
            x, y, bw, bh = box
            cv2.rectangle(image_bgr, (x, y), (x + bw - 1, y + bh - 1), colour, thick)
            origin = (x + 2, max(int(18 * scale), y - 6))
        else:
            cv2.rectangle(image_bgr, (0, 0), (w - 1, int(30 * scale)), colour, -1)
            origin = (6, int(22 * scale))
        cv2.putText(image_bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale,
                    (255, 255, 255) if box is None else colour, thick, cv2.LINE_AA)
    if fps is not None:
        cv2.putText(image_bgr, f"{fps:.1f} fps", (6, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (240, 240, 240),
                    thick, cv2.LINE_AA)
    return image_bgr


class VideoWriter:
    """Frames (BGR) to a video file: ``.mp4`` (mp4v), ``.avi`` (MJPG) or ``.mkv`` (FFV1, lossless); the size is
    taken from the first frame. A context manager; ``close()`` finishes the file."""

    _CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}

    def __init__(self, path: str | os.PathLike, fps: float = 30.0):
        self.path = os.fspath(path)
        ext = os.path.splitext(self.path)[1].lower()
        if ext not in self._CODECS:
            raise ValueError(f"{self.path}: expected a .mp4, .avi or .mkv file name, got {ext or 'no extension'!r}")
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{self.path}: directory {directory!r} does not exist")
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self._codec = self._CODECS[ext]
        self._writer = None
        self.frames = 0

    def write(self, image_bgr: np.ndarray) -> None:
        cv2 = _cv2()
        if self._writer is None:
            h, w = image_bgr.shape[:2]
            self._writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*self._codec), self.fps, (w, h))
            if not self._writer.isOpened():
                raise VideoSourceError(f"{self.path}: cannot write {self._codec} video here")
            self._size = (w, h)
        if (image_bgr.shape[1], image_bgr.shape[0]) != self._size:
            image_bgr = cv2.resize(image_bgr, self._size)
        self._writer.write(np.ascontiguousarray(image_bgr))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
