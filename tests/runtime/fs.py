"""Real file-system failures for tests: a size-limited (or read-only) tmpfs mounted in a private mount namespace
(``unshare -rm``: needs no root where user namespaces are allowed, and vanishes with the process)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def within(seconds: int, fn):
    """fn() - which must not block on a special file (a FIFO opened for reading blocks forever without
    O_NONBLOCK): a TimeoutError after ``seconds``."""
    import signal

    def alarm(*_):
        raise TimeoutError("blocked on a special file")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def require_tmpfs() -> None:
    """Skip the calling test where a tmpfs cannot be mounted in a user namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a size-limited tmpfs")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")


def in_small_tmpfs(script: str, size_kib: int = 384, env: dict | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the bash ``script`` with ``$D`` a fresh tmpfs of ``size_kib`` KiB, ``$PY`` this Python and the
    repository first on PYTHONPATH; skips the test where that cannot be done."""
    require_tmpfs()
    body = f"set -u\nD=$(mktemp -d)\nmount -t tmpfs -o size={size_kib}k tmpfs \"$D\"\ncd {ROOT}\n" + script
    full_env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), PY=sys.executable,
                    **(env or {}))
    return subprocess.run(["unshare", "-rm", "bash", "-c", body], capture_output=True, text=True, env=full_env,
                          timeout=timeout)
