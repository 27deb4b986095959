"""Images in requests: the body (one image, a multipart form of several, or a raw camera frame), parsed in
memory, checked against the server's limits and decoded.

* ``Content-Type: image/png`` (any ``image/*``): the body is one encoded image.
* ``multipart/form-data``: every file part is an image (in order); plain fields are returned too.
* ``application/octet-stream`` with ``width``, ``height`` and ``pixel_format`` query parameters: one raw frame
  (``gray``/``rgb``/``bgr``/``rgba``/``bgra``/``nv12``/``yuyv``), as a camera delivers it - no encoding.

Nothing is written to disk (the multipart parser keeps parts in memory, bounded by the request size limit),
so an image sent to the server exists only while its request runs - unless the server keeps enrolled shots
(``--keep-shots``). Each image's pixel count is read from its header and refused (413) before decoding.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from metaedge.runtime.serve.errors import ApiError

__all__ = ["Part", "parse_body", "decode_images", "parse_rois", "RAW_FORMATS"]

# Bytes per pixel (nv12: 1.5) and the array shape of a raw frame of each pixel format.
RAW_FORMATS = {"gray": (1.0, lambda h, w: (h, w)), "rgb": (3.0, lambda h, w: (h, w, 3)),
               "bgr": (3.0, lambda h, w: (h, w, 3)), "rgba": (4.0, lambda h, w: (h, w, 4)),
               "bgra": (4.0, lambda h, w: (h, w, 4)), "nv12": (1.5, lambda h, w: (h * 3 // 2, w)),
               "yuyv": (2.0, lambda h, w: (h, w, 2))}
_MAX_FIELDS = 100


@dataclass(frozen=True)
class Part:
    """One part of a request body: a form field (``filename is None`` and not an image) or an image."""
    field: str
    filename: str | None
    content_type: str
    data: bytes

    @property
    def is_file(self) -> bool:
        return self.filename is not None or self.content_type.startswith("image/") \
            or self.content_type == "application/octet-stream"

    def describe(self, index: int) -> str:
        return f"image {index}" + (f" ({self.filename!r})" if self.filename else "")


def _multipart(body: bytes, boundary: bytes, max_files: int) -> list[Part]:
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

    parts: list[Part] = []
    current: dict = {}

    def on_part_begin():
        current.clear()
        current.update(headers={}, chunks=[], field=b"", value=b"")

    def on_header_field(data, start, end):
        current["field"] += data[start:end]

    def on_header_value(data, start, end):
        current["value"] += data[start:end]

    def on_header_end():
        current["headers"][current["field"].decode("latin-1").lower()] = current["value"]
        current["field"], current["value"] = b"", b""

    def on_part_data(data, start, end):
        current["chunks"].append(data[start:end])

    def on_part_end():
        _, disposition = parse_options_header(current["headers"].get("content-disposition", b""))
        ctype, _ = parse_options_header(current["headers"].get("content-type", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        part = Part(name, None if filename is None else filename.decode("utf-8", "replace"),
                    ctype.decode("latin-1").lower(), b"".join(current["chunks"]))
        parts.append(part)
        if sum(p.is_file for p in parts) > max_files:
            raise ApiError(413, "too_many_images", f"more than {max_files} images in one request (the server's "
                                                   f"--max-images)")
        if len(parts) > max_files + _MAX_FIELDS:
            raise ApiError(413, "too_many_fields", f"more than {_MAX_FIELDS} form fields in one request")

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_part_data": on_part_data,
                                        "on_part_end": on_part_end, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end})
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, "bad_multipart", f"malformed multipart/form-data body: {exc}") from None
    if parser.state not in (MultipartState.END, MultipartState.BOUNDARY_PADDING):
        raise ApiError(400, "bad_multipart", "malformed multipart/form-data body: it ends before its closing "
                                             "boundary (truncated?)")
    return parts


def parse_body(body: bytes, content_type: str | None, max_files: int) -> list[Part]:
    """The parts of a request body (see the module docstring). Raises ApiError 400/413/415."""
    from python_multipart.multipart import parse_options_header
    mime, params = parse_options_header(content_type or "")
    mime_s = mime.decode("latin-1").lower()
    if mime_s == "multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary parameter")
        return _multipart(body, boundary, max_files)
    if not body:
        raise ApiError(400, "no_image", "the request has no image: send one as the body (Content-Type image/png, "
                                        "image/jpeg, ...) or several as multipart/form-data files")
    if mime_s.startswith("image/") or mime_s == "application/octet-stream":
        return [Part("image", None, mime_s, body)]
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {mime_s or '(none)'}: expected an image (image/png, image/jpeg, ...), "
                   f"multipart/form-data, or application/octet-stream with width, height and pixel_format")


def _clean(message: str) -> str:
    """PIL names an in-memory upload by its object address; say "the upload" instead."""
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the upload", message)


def _open(data: bytes, what: str, max_pixels: int):
    """The upload opened and decoded by PIL, its size checked against the server's limit from the header first."""
    from metaedge.runtime.images import ImageError, TooManyPixelsError, open_image
    try:
        img = open_image(data, what, max_pixels)
    except TooManyPixelsError as exc:
        raise ApiError(413, "too_many_pixels", f"{exc} (the server's --max-pixels)") from None
    except ImageError as exc:
        raise ApiError(400, "bad_image", _clean(str(exc))) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for data that is not an image
        raise ApiError(400, "bad_image", f"{what}: cannot decode as an image "
                                         f"({type(exc).__name__}: {_clean(str(exc))})") from None
    try:
        img.load()  # decode now: a truncated or corrupt file fails here
    except Exception as exc:  # noqa: BLE001
        img.close()
        raise ApiError(400, "bad_image", f"{what}: cannot decode as an image "
                                         f"({type(exc).__name__}: {_clean(str(exc))})") from None
    return img


def _raw_frame(part: Part, what: str, width: int | None, height: int | None, pixel_format: str | None,
               max_pixels: int) -> tuple[np.ndarray, str]:
    if width is None or height is None or pixel_format is None:
        raise ApiError(400, "raw_frame_size", f"{what}: application/octet-stream is a raw frame; give its width, "
                                              f"height and pixel_format as query parameters")
    if pixel_format not in RAW_FORMATS:
        raise ApiError(400, "bad_pixel_format", f"pixel_format: expected one of {', '.join(RAW_FORMATS)}, got "
                                                f"{pixel_format!r}")
    if width < 1 or height < 1:
        raise ApiError(400, "raw_frame_size", f"{what}: width and height must be >= 1")
    if width * height > max_pixels:
        raise ApiError(413, "too_many_pixels", f"{what}: {width}x{height} = {width * height} pixels, more than the "
                                               f"server's limit of {max_pixels}")
    if pixel_format in ("nv12", "yuyv") and (width % 2 or (pixel_format == "nv12" and height % 2)):
        raise ApiError(400, "raw_frame_size", f"{what}: {pixel_format} frames need an even width"
                                              + (" and height" if pixel_format == "nv12" else ""))
    per_pixel, shape = RAW_FORMATS[pixel_format]
    expected = int(width * height * per_pixel)
    if len(part.data) != expected:
        raise ApiError(400, "raw_frame_size", f"{what}: {len(part.data)} bytes, a {width}x{height} {pixel_format} "
                                              f"frame has {expected}")
    return np.frombuffer(part.data, np.uint8).reshape(shape(height, width)), pixel_format


def decode_images(parts: list[Part], max_pixels: int, *, width: int | None = None, height: int | None = None,
                  pixel_format: str | None = None) -> tuple[list[np.ndarray], str]:
    """The image parts decoded -> (arrays, their pixel format: ``auto`` for encoded images). Raises ApiError
    400 (not an image, raw frame of the wrong size), 413 (too many pixels)."""
    from metaedge.runtime.images import ImageError, load_images
    files = [p for p in parts if p.is_file]
    if not files:
        raise ApiError(400, "no_image", "the request has no image (multipart/form-data: send the images as file "
                                        "parts)")
    raw = [p for p in files if p.content_type == "application/octet-stream"]
    if raw:
        if len(files) != 1:
            raise ApiError(400, "raw_frame_size", "a raw frame (application/octet-stream) is sent alone, as the "
                                                  "whole request body")
        frame, fmt = _raw_frame(raw[0], raw[0].describe(0), width, height, pixel_format, max_pixels)
        return [frame], fmt
    if pixel_format not in (None, "auto", "rgb"):
        raise ApiError(400, "bad_pixel_format", f"pixel_format={pixel_format!r} applies to raw frames "
                                                f"(application/octet-stream); encoded images are decoded to RGB")
    arrays = []
    for index, part in enumerate(files):
        what = part.describe(index)
        with _open(part.data, what, max_pixels) as img:
            try:  # (EXIF orientation and pixel modes as every image metaedge reads)
                (arr,) = load_images([img])
            except (ImageError, TypeError) as exc:
                raise ApiError(400, "bad_image", f"{what}: {_clean(str(exc).split(': ', 1)[-1])}") from None
        arrays.append(arr)
    return arrays, "auto"


def parse_rois(values: list[str]) -> list[list[int]] | None:
    """``roi`` query values ``"x,y,w,h"`` (repeated, or several separated by ``;``) -> boxes, or None."""
    boxes = []
    for value in values:
        for text in value.split(";"):
            if not text.strip():
                continue
            try:
                box = [int(v) for v in text.replace(" ", "").split(",")]
            except ValueError:
                box = []
            if len(box) != 4 or box[0] < 0 or box[1] < 0 or box[2] < 1 or box[3] < 1:
                raise ApiError(400, "bad_roi", f"roi: expected x,y,w,h (integers, pixels; w,h >= 1), got {text!r}")
            boxes.append(box)
    return boxes or None
