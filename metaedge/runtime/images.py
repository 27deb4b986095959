"""Turn whatever a caller holds into uint8 pixel batches, then into network input.

Accepted images: file paths (``str`` / ``os.PathLike``), encoded bytes, PIL images, numpy uint8 arrays
``[h, w]`` or ``[h, w, c]`` with c in {1, 3, 4} (one image) or ``[n, h, w, c]`` (a batch), and lists/tuples/
iterables mixing them. Files, bytes and PIL images are decoded upright (EXIF orientation applied). Arrays may be
camera frames of another pixel format (``pixel_format="bgr"``, ``"nv12"``, ...: see
``metaedge.kernels.preprocess``); decoded images are always RGB, gray or RGBA. Images of different sizes are
allowed: they are grouped by shape and pixel format, so each group is one ``[n, ...]`` batch for the frame
pipeline (``metaedge.runtime.pipeline``), and results are put back in the caller's order.

Every problem is an :class:`ImageError` (a ``ValueError``) or a ``TypeError`` that says which image
(index, file name) and what was expected; nothing is decoded lazily after the checks, so a caller can
validate all its inputs before changing any state.

Files are read as hostile input: only regular files (a FIFO or device is refused without blocking), at most
:data:`MAX_IMAGE_FILE_BYTES`, and an encoded image's pixel count - read from its header - must be within
:func:`max_pixels` before it is decoded (a 420 KB PNG can claim 144 megapixels).
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from metaedge.runtime.fileio import UnreadableFileError, read_file

__all__ = ["ImageError", "TooManyPixelsError", "ImageGroup", "load_images", "group_by_shape", "is_single_image",
           "to_groups", "upright", "max_pixels", "set_max_pixels", "check_pixels", "open_image", "read_image_file",
           "DEFAULT_MAX_PIXELS", "MAX_IMAGE_FILE_BYTES"]

# 4096 x 4096: 4K frames (3840x2160 = 8.3 MP, 4096x2160 = 8.8 MP) and 12 MP phone photos pass; a decompression
# bomb does not. Decoding holds up to 4 bytes per pixel (RGBA), so the default bounds a decode to 64 MiB.
DEFAULT_MAX_PIXELS = 4096 * 4096
MAX_IMAGE_FILE_BYTES = 256 * 1024 * 1024
_max_pixels: int | None = None


def max_pixels() -> int:
    """The largest image (width x height) decoded from a file or bytes: :func:`set_max_pixels`, else the
    ``METAEDGE_MAX_PIXELS`` environment variable, else :data:`DEFAULT_MAX_PIXELS`."""
    if _max_pixels is not None:
        return _max_pixels
    env = os.environ.get("METAEDGE_MAX_PIXELS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ImageError(f"METAEDGE_MAX_PIXELS: expected a positive integer, got {env!r}") from None
        if value >= 1:
            return value
        raise ImageError(f"METAEDGE_MAX_PIXELS: expected a positive integer, got {env!r}")
    return DEFAULT_MAX_PIXELS


def check_pixels(img, what: str, limit: int | None = None) -> None:
    """TooManyPixelsError unless the opened (not yet decoded) PIL image ``img`` has at most ``limit`` pixels
    (default: :func:`max_pixels`)."""
    width, height = img.size
    hint = ""
    if limit is None:
        limit = max_pixels()
        hint = " (raise it with METAEDGE_MAX_PIXELS or metaedge.runtime.images.set_max_pixels)"
    if width * height > limit:
        raise TooManyPixelsError(f"{what}: {width}x{height} = {width * height:,} pixels, more than the limit of "
                                 f"{limit:,}; refused before decoding{hint}")


def open_image(raw: bytes, what: str, limit: int | None = None):
    """A PIL image opened on encoded bytes - its header read, nothing decoded - whose pixel count is within
    ``limit`` (default :func:`max_pixels`; TooManyPixelsError otherwise). Use it as a context manager."""
    from metaedge._optional import require
    pil = require("PIL.Image", "reading image files")
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the check below decides, with its message
            warnings.simplefilter("ignore", pil.DecompressionBombWarning)
            img = pil.open(io.BytesIO(raw))
    except pil.DecompressionBombError as exc:  # beyond twice PIL's limit it refuses at open
        raise TooManyPixelsError(f"{what}: refused before decoding: {exc}") from None
    try:
        check_pixels(img, what, limit)
    except BaseException:
        img.close()
        raise
    return img


def read_image_file(path: str | os.PathLike, what: str) -> bytes:
    """The bytes of an image file, read as hostile input (regular file, bounded size); ImageError otherwise."""
    try:
        return read_file(path, MAX_IMAGE_FILE_BYTES, "image file")
    except FileNotFoundError:
        raise ImageError(f"{what}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{what}: is a directory, not an image file") from None
    except UnreadableFileError as exc:
        raise ImageError(f"{what}: {'is a directory, not an image file' if 'a directory' in str(exc) else exc}") \
            from None
    except OSError as exc:
        raise ImageError(f"{what}: cannot read ({exc.strerror or exc})") from None


def set_max_pixels(limit: int | None) -> None:
    """Set the decoded-pixel limit for this process (``None``: back to the environment/default)."""
    global _max_pixels
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"`limit`: expected a positive int or None, got {limit!r}")
    _max_pixels = limit

_CHANNELS = (1, 3, 4)
_UINT8 = np.dtype(np.uint8)
# PIL modes whose pixels are already uint8 in a layout preprocess understands.
_DIRECT_MODES = {"L": 1, "RGB": 3, "RGBA": 4}


class ImageError(ValueError):
    """An image could not be read or has an unusable shape/dtype; the message names the image."""


class TooManyPixelsError(ImageError):
    """An image larger (width x height) than the decoding limit, refused from its header before decoding."""


@dataclass(frozen=True)
class ImageGroup:
    """Images of one shape and pixel format: ``pixels[n, ...]`` uint8 and their positions in the caller's
    order."""
    indices: np.ndarray   # int64 [n]
    pixels: np.ndarray    # uint8 [n, h, w, c] (or the batch layout of pixel_format), C-contiguous
    pixel_format: str = "auto"


def _describe(item: Any, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return f"image {index} ({os.fspath(item)!r})"
    return f"image {index} ({type(item).__name__})"


def _is_pil(obj) -> bool:
    # Checked by class name so that PIL is imported only when a caller actually passes files or PIL images.
    return any(cls.__module__.startswith("PIL.") and cls.__name__ == "Image" for cls in type(obj).__mro__)


_EXIF_ORIENTATION = 0x0112


def upright(img):
    """``img`` turned as its EXIF orientation tag says (phone photos are stored sideways with a tag), exactly as
    training reads files (``PIL.ImageOps.exif_transpose``); images without the tag are returned as they are."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the pixels are still usable, unrotated
        return img
    if orientation in (None, 1):
        return img
    from PIL import ImageOps
    return ImageOps.exif_transpose(img)


def _pil_to_array(img, what: str) -> np.ndarray:
    img = upright(img)
    mode = img.mode
    if mode in _DIRECT_MODES:
        arr = np.asarray(img, dtype=np.uint8)
    elif mode in ("I;16", "I;16B", "I;16L"):  # 16-bit gray (e.g. some PNGs): keep the top 8 bits
        arr = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
    elif mode in ("I", "F"):
        raise ImageError(f"{what}: PIL mode {mode!r} (32-bit integer/float pixels) has no defined 0..255 range; "
                         f"convert it to 'L' or 'RGB' first")
    else:  # 1, P, LA, PA, CMYK, YCbCr, LAB, HSV, ...: let PIL do the colour maths
        has_alpha = "A" in mode or (mode == "P" and "transparency" in img.info)
        target = "RGBA" if has_alpha else ("L" if mode in ("1",) else "RGB")
        arr = np.asarray(img.convert(target), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def _decode(data: bytes | os.PathLike | str, what: str) -> np.ndarray:
    raw = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else read_image_file(data, what)
    try:
        with open_image(raw, what) as img:
            img.load()  # decode now: a truncated file fails here, not later
            return _pil_to_array(img, what)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises these for unknown/truncated/corrupt files
        raise ImageError(f"{what}: cannot decode as an image ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # e.g. DecompressionBombError or a plugin bug: still name the file
        raise ImageError(f"{what}: cannot decode as an image ({type(exc).__name__}: {exc})") from None


def _not_uint8(arr: np.ndarray, what: str):
    detail = ""
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            detail = " (and it contains NaN or Inf values)"
        hint = ("; convert floats in [0, 1] with (x * 255).round().astype(np.uint8), in [0, 255] with "
                "x.round().astype(np.uint8)")
    elif arr.dtype.kind in "iub":
        hint = "; convert with np.clip(x, 0, 255).astype(np.uint8)"
    else:
        hint = ""
    raise TypeError(f"{what}: expected uint8 pixels (0..255), got dtype {arr.dtype}{detail}{hint}")


_DECODED_FORMATS = ("auto", "gray", "rgb", "rgba")  # layouts [h, w(, c)] / [n, h, w, c] like decoded images


def _frame_ndim(pixel_format: str) -> int:
    """Axes of one camera frame of ``pixel_format`` (bgr, bgra, nv12, yuyv; a batch has one more)."""
    return 2 if pixel_format == "nv12" else 3


def _check_array(arr: np.ndarray, what: str, pixel_format: str = "auto") -> np.ndarray:
    """A single image array -> [h, w, c] uint8 (or a frame of ``pixel_format``), or a batch -> [n, ...]."""
    if arr.dtype != np.uint8:
        _not_uint8(arr, what)
    if pixel_format not in _DECODED_FORMATS:
        # Camera layouts: the pre-processing kernel checks the shape against the format and names it.
        if arr.ndim not in (_frame_ndim(pixel_format), _frame_ndim(pixel_format) + 1):
            raise ImageError(f"{what}: {arr.ndim}-d array of shape {tuple(arr.shape)} is neither a {pixel_format} "
                             f"frame nor a batch of them (see metaedge.kernels.preprocess for the layouts)")
        if min(arr.shape[-3:-1] if pixel_format != "nv12" else arr.shape[-2:]) < 1:
            raise ImageError(f"{what}: empty frame (shape {tuple(arr.shape)})")
        return arr
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3:
        if arr.shape[2] not in _CHANNELS:
            raise ImageError(f"{what}: expected [h, w], [h, w, c] with c in {_CHANNELS} or [n, h, w, c]; got shape "
                             f"{tuple(arr.shape)} (a batch of gray images must be [n, h, w, 1]; camera frames: "
                             f"name their pixel_format)")
    elif arr.ndim == 4:
        if arr.shape[3] not in _CHANNELS:
            raise ImageError(f"{what}: a batch must be [n, h, w, c] with c in {_CHANNELS}; got shape "
                             f"{tuple(arr.shape)}")
    else:
        raise ImageError(f"{what}: expected [h, w], [h, w, c] or [n, h, w, c]; got {arr.ndim}-d shape "
                         f"{tuple(arr.shape)}")
    spatial = arr.shape[-3:-1]
    if min(spatial) < 1:
        raise ImageError(f"{what}: empty image (height x width = {spatial[0]} x {spatial[1]})")
    return arr


def is_single_image(images) -> bool:
    """True when ``images`` is one image (path, bytes, PIL image, 2-d/3-d array), not a collection."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or _is_pil(images):
        return True
    if isinstance(images, np.ndarray):
        return images.ndim in (2, 3)
    return False


def decode_single(images) -> np.ndarray | None:
    """One encoded image (a path, bytes or a PIL image) as its ``[h, w, c]`` uint8 array, decoded and checked as
    :func:`load_images` does; None for anything else (arrays, collections)."""
    if not isinstance(images, np.ndarray) and is_single_image(images):
        return _load(images)[0][0]
    return None


def _iter_items(images) -> Iterable:
    if is_single_image(images) or isinstance(images, np.ndarray):
        return [images]
    if isinstance(images, dict):
        raise TypeError("images: expected an image, a batch array or a sequence of images, got a dict")
    try:
        return list(images)
    except TypeError:
        raise TypeError(f"images: expected a file path, PIL image, uint8 array or a sequence of them, "
                        f"got {type(images).__name__}") from None


def _load(images, pixel_format: str = "auto") -> list[tuple[np.ndarray, str]]:
    """Every image as ``(array, pixel format)`` in order: decoded files/PIL images as ``[h, w, c]`` (auto),
    arrays as they are (views where possible) in ``pixel_format``."""
    out: list[tuple[np.ndarray, str]] = []
    for index, item in enumerate(_iter_items(images)):
        what = _describe(item, index)
        if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)):
            out.append((_decode(item, what), "auto"))
        elif _is_pil(item):
            try:
                out.append((_pil_to_array(item, what), "auto"))
            except ImageError:
                raise
            except Exception as exc:
                raise ImageError(f"{what}: cannot read PIL image ({type(exc).__name__}: {exc})") from None
        elif isinstance(item, np.ndarray) or hasattr(item, "__array_interface__") or hasattr(item, "__array__"):
            arr = _check_array(np.asarray(item), what, pixel_format)
            batch = arr.ndim == (4 if pixel_format in _DECODED_FORMATS else _frame_ndim(pixel_format) + 1)
            if batch and arr.shape[0] == 0:
                raise ImageError(f"{what}: empty batch (0 images)")
            out.extend((a, pixel_format) for a in (arr if batch else [arr]))
        elif isinstance(item, (list, tuple)):
            raise TypeError(f"{what}: nested sequences are not images; pass numpy arrays, PIL images or paths")
        else:
            raise TypeError(f"{what}: expected a file path, PIL image or uint8 array, got {type(item).__name__}")
    if not out:
        raise ImageError("images: got an empty collection; pass at least one image")
    return out


def load_images(images) -> list[np.ndarray]:
    """Every image as a ``[h, w, c]`` uint8 array (views where possible), in order.

    Raises ``ImageError``/``TypeError`` naming the first bad image; an empty collection is an error.
    """
    return [a for a, _ in _load(images)]


def group_by_shape(images: list[np.ndarray], max_batch: int | None = None,
                   formats: list[str] | None = None) -> list[ImageGroup]:
    """Stack same-shape (and same-format) images into contiguous batches (at most ``max_batch`` each),
    keeping their indices."""
    by_key: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        by_key.setdefault((img.shape, formats[i] if formats else "auto"), []).append(i)
    groups = []
    for (_, fmt), idx in by_key.items():
        step = max_batch or len(idx)
        for start in range(0, len(idx), step):
            part = idx[start:start + step]
            pixels = np.ascontiguousarray(np.stack([images[i] for i in part]))
            groups.append(ImageGroup(np.asarray(part, np.int64), pixels, fmt))
    return groups


def to_groups(images, max_batch: int | None = None, pixel_format: str = "auto") -> tuple[int, list[ImageGroup]]:
    """``(number of images, groups)`` for any accepted input: the general route's decoding and grouping."""
    loaded = _load(images, pixel_format)
    return len(loaded), group_by_shape([a for a, _ in loaded], max_batch, [f for _, f in loaded])
