"""Checked safetensors files: the container of class packs and of the old (schema 1) gallery files.

A file is ``[8-byte header length][JSON header][tensor data]`` (the safetensors layout) whose metadata carries
``format``, ``schema_version`` and ``payload_sha256`` - a digest over the metadata and every tensor's name,
dtype, shape and bytes. :func:`read_container` checks in this order, reading nothing it has not bounded: a
regular file; the header length and header (JSON depth bounded); every tensor's dtype, shape and offsets
against each other and against the file size; the caller's consistency check on the header alone
(``check_header``: e.g. "as many prototype rows as class names"); a file whose bytes are mostly holes (a
sparse file claiming gigabytes) is refused; only then the data is read and the checksum compared.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Callable

import numpy as np

from metaedge.runtime.fileio import UnreadableFileError, open_regular, parse_json
from metaedge.runtime.store.errors import GalleryCorruptError

__all__ = ["read_container", "write_container", "payload_digest", "check_schema", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 64 * 1024 * 1024
_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8}
_DTYPE_NAMES = {np.dtype(v).name: k for k, v in _DTYPES.items()}
_SPARSE_MIN_BYTES = 16 * 1024 * 1024  # below this, holes cost nothing worth refusing a file for


def payload_digest(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "payload_sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"\0{name}|{a.dtype.name}|{list(a.shape)}\0".encode())
        h.update(a.data)
    return h.hexdigest()


def check_schema(meta: dict, where: str, newest: int, what: str) -> int:
    """The file's ``schema_version``: GalleryVersionError (upgrade metaedge) if newer than ``newest``,
    GalleryCorruptError if missing or not a positive int."""
    from metaedge.runtime.store.errors import GalleryVersionError
    try:
        version = int(meta.get("schema_version", ""))
    except ValueError:
        version = 0
    if version < 1:
        raise GalleryCorruptError(f"{where}: damaged metadata (schema_version {meta.get('schema_version')!r})")
    if version > newest:
        raise GalleryVersionError(f"{where}: {what} of schema {version} from metaedge "
                                  f"{meta.get('metaedge_version', '?')}; this metaedge reads schema <= {newest}: "
                                  f"upgrade metaedge")
    return version


def write_container(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> bytes:
    """The file's bytes (``payload_sha256`` added to ``meta``)."""
    from metaedge._optional import require
    st = require("safetensors.numpy", "writing class packs")
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = dict(meta)
    meta["payload_sha256"] = payload_digest(tensors, meta)
    return st.save(tensors, metadata=meta)


def _read_exact(fd: int, n: int, where: str) -> bytes:
    parts, got = [], 0
    while got < n:
        block = os.read(fd, min(n - got, 1 << 24))
        if not block:
            raise GalleryCorruptError(f"{where}: truncated (the file ended after {got} of {n} bytes)")
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def read_container(path: str, fmt: str, what: str, *, max_bytes: int,
                   check_header: Callable[[dict, dict], None] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """``(tensors, metadata)`` of a checked file of format ``fmt``; GalleryCorruptError naming ``path`` otherwise.
    ``check_header(tensor_entries, metadata)`` runs before any tensor byte is read."""
    try:
        fd, size = open_regular(path, what, max_bytes)
    except UnreadableFileError as exc:
        raise GalleryCorruptError(str(exc)) from None
    try:
        return _read(fd, size, path, fmt, check_header)
    finally:
        os.close(fd)


def _read(fd: int, size: int, where: str, fmt: str, check_header) -> tuple[dict, dict]:
    if size == 0:
        raise GalleryCorruptError(f"{where}: the file is empty (0 bytes)")
    if size < 8:
        raise GalleryCorruptError(f"{where}: truncated ({size} bytes; the file starts with an 8-byte header length)")
    (n,) = struct.unpack("<Q", _read_exact(fd, 8, where))
    if n > MAX_HEADER_BYTES or n < 2:
        raise GalleryCorruptError(f"{where}: not a {fmt} file (not a safetensors file: header length {n})")
    if 8 + n > size:
        first = _read_exact(fd, 1, where)
        if first == b"{":
            raise GalleryCorruptError(f"{where}: truncated: the header needs {8 + n} bytes, the file has {size}")
        raise GalleryCorruptError(f"{where}: not a {fmt} file (not a safetensors file)")
    raw = _read_exact(fd, n, where)
    try:
        header = parse_json(raw, f"{where}: header")
    except (UnicodeDecodeError, ValueError) as exc:
        raise GalleryCorruptError(f"{where}: not a {fmt} file, or a damaged one (header is not valid JSON: "
                                  f"{exc})") from None
    if not isinstance(header, dict):
        raise GalleryCorruptError(f"{where}: not a {fmt} file (header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise GalleryCorruptError(f"{where}: not a {fmt} file (a safetensors file without the format={fmt!r} "
                                  f"marker; is it a model checkpoint?)")
    if not all(isinstance(v, str) for v in meta.values()):
        raise GalleryCorruptError(f"{where}: damaged metadata (values must be strings)")
    spans = []
    for name, entry in header.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise GalleryCorruptError(f"{where}: damaged header (tensor {name!r}: bad entry)") from None
        if any(s < 0 for s in shape) or not 0 <= begin <= end:
            raise GalleryCorruptError(f"{where}: damaged header (tensor {name!r}: shape {shape}, offsets "
                                      f"{begin}..{end})")
        if int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize != end - begin:
            raise GalleryCorruptError(f"{where}: damaged header (tensor {name!r}: shape {shape} does not fill "
                                      f"{end - begin} bytes)")
        spans.append((begin, end))
    spans.sort()
    expected = 0
    for begin, end in spans:
        if begin != expected:
            raise GalleryCorruptError(f"{where}: damaged header (tensor data overlaps or has gaps)")
        expected = end
    available = size - 8 - n
    if available < expected:
        raise GalleryCorruptError(f"{where}: truncated: {available} bytes of tensor data, {expected} expected "
                                  f"(an interrupted copy?)")
    if available > expected:
        raise GalleryCorruptError(f"{where}: {available - expected} unexpected bytes after the tensor data")
    if check_header is not None:
        check_header({k: dict(v, shape=[int(s) for s in v["shape"]]) for k, v in header.items()}, meta)
    st = os.fstat(fd)
    allocated = getattr(st, "st_blocks", None)
    if allocated is not None and size > _SPARSE_MIN_BYTES and allocated * 512 < size // 2:
        raise GalleryCorruptError(f"{where}: a sparse file ({allocated * 512:,} bytes on disk for {size:,}): "
                                  f"not a {fmt} file metaedge wrote; refusing to read it")
    data = _read_exact(fd, expected, where)
    tensors = {}
    for name, entry in header.items():
        begin, end = (int(o) for o in entry["data_offsets"])
        shape = [int(s) for s in entry["shape"]]
        tensors[name] = np.frombuffer(data, _DTYPES[entry["dtype"]], (end - begin) // np.dtype(
            _DTYPES[entry["dtype"]]).itemsize, begin).reshape(shape)
    stored = meta.get("payload_sha256", "")
    actual = payload_digest(tensors, meta)
    if stored != actual:
        raise GalleryCorruptError(f"{where}: checksum mismatch (stored {stored[:12] or 'none'}..., computed "
                                  f"{actual[:12]}...): the file is corrupted; restore a backup")
    return tensors, meta
