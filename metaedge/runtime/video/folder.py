"""A folder of images, or a glob pattern, as a frame source: every image in name order, decoded upright (EXIF
orientation applied) by the same decoder as enrolled files."""
from __future__ import annotations

import glob
import os

from metaedge.runtime.video.frames import FrameSource, VideoSourceError

__all__ = ["ImageFolderSource", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageFolderSource(FrameSource):
    """Images of a directory (not recursive) or matching a glob pattern, sorted by name. Frames are RGB (or
    gray / RGBA as the files are: ``pixel_format`` per frame is "auto"); ``timestamp`` is the file's index
    divided by ``fps`` (default 1: one image per second of "video")."""

    live = False

    def __init__(self, uri: str, *, fps: float | None = None, loop: bool = False, **options):
        pattern = os.fspath(uri)
        if os.path.isdir(pattern):
            files = [os.path.join(pattern, f) for f in os.listdir(pattern)
                     if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
        else:
            files = [f for f in glob.glob(pattern) if os.path.isfile(f)]
        self._files = sorted(files)
        if not self._files:
            raise VideoSourceError(f"{uri}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        self._fps = float(fps or 1.0)
        self._loop = loop
        self._next = 0
        super().__init__(pattern, pixel_format="auto", **options)

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def frame_count(self) -> int:
        return len(self._files)

    def _open(self) -> None:
        self._next = 0

    def _grab(self):
        from metaedge.runtime.images import load_images
        if self._next >= len(self._files):
            if not self._loop:
                return None
            self._next = 0
        path = self._files[self._next]
        self._next += 1
        (pixels,) = load_images([path])  # ImageError names the file
        if pixels.shape[2] == 1:
            pixels = pixels[:, :, 0]
        return pixels, (self.stats.read) / self._fps

    def _release(self) -> None:
        pass
