"""The live feed: the newest frame of the server's source (JPEG), its predictions and the frame loop's state,
handed from the process that runs the loop to every worker that serves it - and the operator's settings
(the region of interest) handed back.

Both directions are one small file each in the server's run directory (a tmpfs where there is one),
replaced atomically by rename: a reader sees a whole frame or the previous one, never a torn mix, on any
CPU, with no shared-memory ordering to get right; it notices a new frame by the file's inode. A frame file is
``b"MEF1" + u32 length of the JSON metadata + metadata + JPEG``.
"""
from __future__ import annotations

import json
import os
import struct
import threading

from metaedge.runtime.fileio import atomic_write_bytes

__all__ = ["LiveFeed", "MAX_FRAME_BYTES"]

MAX_FRAME_BYTES = 64 * 1024 * 1024
_MAGIC = b"MEF1"
_HEADER = struct.Struct("<4sI")
FRAME_FILE = "live-frame.bin"
CONTROL_FILE = "live-control.json"


class _Watched:
    """A file re-read only when it was replaced (its inode or mtime changed)."""

    def __init__(self, path: str, parse):
        self.path = path
        self._parse = parse
        self._key = None
        self._value = None
        self._lock = threading.Lock()

    def get(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            with self._lock:
                try:
                    with open(self.path, "rb") as f:
                        data = f.read(MAX_FRAME_BYTES + 1)
                except FileNotFoundError:
                    return self._value
                self._value, self._key = self._parse(data), key
        return self._value


def _parse_frame(data: bytes):
    if len(data) < _HEADER.size:
        return None
    magic, meta_len = _HEADER.unpack_from(data)
    if magic != _MAGIC or _HEADER.size + meta_len > len(data):
        return None
    meta = json.loads(data[_HEADER.size:_HEADER.size + meta_len])
    return meta, data[_HEADER.size + meta_len:]


def _parse_control(data: bytes):
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class LiveFeed:
    """``publish(jpeg, meta)`` by the frame loop; ``latest() -> (meta, jpeg) | None`` by anyone;
    ``set_control(**settings)`` by workers; ``control() -> dict`` by the frame loop."""

    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._frame = _Watched(os.path.join(directory, FRAME_FILE), _parse_frame)
        self._control = _Watched(os.path.join(directory, CONTROL_FILE), _parse_control)
        self._control_lock = threading.Lock()

    def publish(self, jpeg: bytes, meta: dict) -> None:
        head = json.dumps(meta, allow_nan=False).encode()
        if len(head) + len(jpeg) + _HEADER.size > MAX_FRAME_BYTES:
            raise ValueError(f"live frame of {len(jpeg)} bytes is larger than the feed takes ({MAX_FRAME_BYTES})")
        # transient (the run directory is removed at exit): atomic, but no fsync at every frame
        atomic_write_bytes(os.path.join(self.directory, FRAME_FILE), _HEADER.pack(_MAGIC, len(head)) + head + jpeg,
                           durable=False)

    def latest(self) -> tuple[dict, bytes] | None:
        return self._frame.get()

    def control(self) -> dict:
        return self._control.get() or {}

    def set_control(self, **settings) -> dict:
        """Merge ``settings`` into the control file (one writer at a time in this process; the last writer of
        several processes wins, which is what a setting means)."""
        with self._control_lock:
            current = dict(self.control())
            current.update(settings)
            current["seq"] = int(current.get("seq", 0)) + 1
            atomic_write_bytes(os.path.join(self.directory, CONTROL_FILE), json.dumps(current).encode(),
                               durable=False)
        return current
