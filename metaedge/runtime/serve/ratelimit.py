"""A per-token rate limit that holds across the worker processes of one server.

GCRA (the generic cell rate algorithm, a token bucket kept as one number): each key has a "theoretical
arrival time" ``tat``; a request at ``now`` is allowed when ``max(tat, now) - now <= (burst - 1) / rate``,
and then moves ``tat`` on by ``1 / rate``. The number lives in a small file per key in the server's run
directory, read and written under ``flock``, so every worker sees the same budget (a client spreading its
requests over connections that land on different workers gets no more). ``time.monotonic`` is one clock
for all processes of a machine.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import threading
import time

__all__ = ["RateLimiter"]

_SLOT = struct.Struct("<d")
_MAX_OPEN = 1024  # keys whose file stays open (the oldest is closed beyond that: many client addresses)


class RateLimiter:
    """``acquire(key)`` -> 0.0 (go ahead) or the seconds to wait before a request would be allowed."""

    def __init__(self, directory: str, rate: float, burst: int):
        self.rate = float(rate)
        self.burst = int(burst)
        self._interval = 1.0 / self.rate
        self._tolerance = (self.burst - 1) * self._interval
        self._directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fd(self, key: str) -> int:
        fd = self._fds.get(key)
        if fd is None:
            with self._lock:
                fd = self._fds.get(key)
                if fd is None:
                    name = hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:32]
                    fd = os.open(os.path.join(self._directory, name), os.O_RDWR | os.O_CREAT, 0o600)
                    self._fds[key] = fd
                    if len(self._fds) > _MAX_OPEN:
                        os.close(self._fds.pop(next(iter(self._fds))))
        return fd

    def acquire(self, key: str) -> float:
        fd = self._fd(key)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(fd, _SLOT.size, 0)
            now = time.monotonic()
            tat = max(_SLOT.unpack(raw)[0] if len(raw) == _SLOT.size else now, now)
            wait = tat - now - self._tolerance
            if wait > 0:
                return wait
            os.pwrite(fd, _SLOT.pack(tat + self._interval), 0)
            return 0.0
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
