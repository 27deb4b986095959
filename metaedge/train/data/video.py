"""Frames of a video file for training (workstation side), decoded with OpenCV (``opencv-python-headless``).

A small train-side reader: it yields RGB uint8 frames, every ``step``-th one, up to ``max_frames``. The device
side has its own frame sources (``metaedge.runtime``); this reader is kept separate and replaceable so that
training never depends on the device's capture stack.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from metaedge._optional import require
from metaedge.train.data.base import DataError


def read_video_frames(path: str, step: int = 1, max_frames: int | None = None, start: int = 0) -> Iterator[np.ndarray]:
    """RGB ``uint8 [H, W, 3]`` frames ``start, start + step, ...`` of the video at ``path`` (at most
    ``max_frames``). Errors name the file: a missing or non-regular file, a container OpenCV cannot open."""
    if step < 1 or start < 0 or (max_frames is not None and max_frames < 1):
        raise DataError(f"video frames: expected step >= 1, start >= 0, max_frames >= 1; got {step}, {start}, "
                        f"{max_frames}")
    if not os.path.isfile(path):
        raise DataError(f"video {path!r} does not exist or is not a regular file")
    cv2 = require("cv2", "reading video files for training")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise DataError(f"cannot open video {path!r} (unknown container/codec, or not a video)")
        index = produced = 0
        while max_frames is None or produced < max_frames:
            if index < start or (index - start) % step:
                ok = cap.grab()            # skipped frames are not converted
            else:
                ok, frame = cap.read()
                if ok:
                    if frame.ndim == 2:
                        frame = np.repeat(frame[:, :, None], 3, axis=2)
                    yield np.ascontiguousarray(frame[:, :, 2::-1])   # BGR(A) -> RGB
                    produced += 1
            if not ok:
                break
            index += 1
        if produced == 0:
            raise DataError(f"video {path!r}: no frame could be decoded (from frame {start}, every {step})")
    finally:
        cap.release()
