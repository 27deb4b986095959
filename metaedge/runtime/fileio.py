"""How metaedge touches files: every read refuses hostile files, every write is atomic and durable.

Reading (:func:`open_regular`, :func:`read_file`, :func:`read_json`, :func:`sha256_file`): a file is opened
with ``O_NONBLOCK`` and checked with ``fstat`` *before* anything is read, so a FIFO, a device or a socket given
as an image, manifest, gallery or sidecar is refused at once instead of blocking the process; its size is
compared with a bound before it is read (a sparse file claiming gigabytes is refused, not read whole); JSON
nesting is bounded before the parser sees the text (no RecursionError tracebacks). Problems are an
:class:`UnreadableFileError` (a ``ValueError``) naming the file; callers turn it into their own error type
(``ImageError``, ``BundleError``, ``GalleryCorruptError``, ...).

Writing (:func:`atomic_write`, :func:`atomic_write_json`): the bytes go to a temporary file in the target's
directory - created with mode 0o666 filtered by the umask, like any file a program creates, or with the mode
of the file it replaces - which is fsynced, renamed over the target (atomic on POSIX) and the directory
fsynced: after a power loss the target holds the old or the new content, never a torn mix. Any failure is a
:class:`WriteError` (an ``OSError`` with the errno: ENOSPC, EROFS, EACCES, ...) and leaves the target as it
was; temporary files that dead processes left behind are removed by the next write to that directory.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import hashlib
import json
import os
import re
import secrets
import stat
from typing import Any, Iterable

__all__ = ["UnreadableFileError", "WriteError", "open_regular", "read_file", "read_json", "parse_json",
           "check_json_depth", "sha256_file", "sha256_bytes", "fsync_dir", "atomic_write", "atomic_write_bytes",
           "atomic_write_json", "file_kind", "MAX_JSON_BYTES", "MAX_JSON_DEPTH"]

_CHUNK = 1 << 20
MAX_JSON_BYTES = 16 * 1024 * 1024   # manifests, sidecars, model.json: a few KiB in practice
MAX_JSON_DEPTH = 64                 # our JSON files nest 4-5 levels


class UnreadableFileError(ValueError):
    """A file metaedge refuses to read: not a regular file, larger than the bound for its kind, or JSON nested
    deeper than any metaedge file. The message names the file and what is wrong."""


class WriteError(OSError):
    """Writing a file failed (disk full, read-only file system, permission, I/O error); ``errno`` and
    ``filename`` say which. The previous content of the target is intact."""

    def __str__(self) -> str:  # the message names the file already
        return self.strerror if isinstance(self.strerror, str) else super().__str__()


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> tuple[int, int]:
    """Open ``path`` for reading without blocking and check it: ``(fd, size)`` of a regular file of at most
    ``max_bytes`` bytes, or :class:`UnreadableFileError`. ``FileNotFoundError``/``PermissionError`` pass through.
    The caller closes ``fd``."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFileError(f"{what} {os.fspath(path)!r} is {file_kind(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise UnreadableFileError(f"{what} {os.fspath(path)!r} is {st.st_size:,} bytes, more than the "
                                      f"{max_bytes:,} this kind of file may have")
        return fd, st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_file(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The whole content of a regular file of at most ``max_bytes`` bytes (checked before reading, and again
    while reading, in case the file grows)."""
    fd, size = open_regular(path, what, max_bytes)
    try:
        parts, got = [], 0
        while True:
            block = os.read(fd, min(_CHUNK, max_bytes + 1 - got) or 1)
            if not block:
                break
            parts.append(block)
            got += len(block)
            if got > max_bytes:
                raise UnreadableFileError(f"{what} {os.fspath(path)!r} grew past {max_bytes:,} bytes while it "
                                          f"was read")
        return b"".join(parts)
    finally:
        os.close(fd)


# A JSON string (escapes included, unrolled so that long strings do not backtrack) or a bracket.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def check_json_depth(text: str, max_depth: int = MAX_JSON_DEPTH, what: str = "JSON") -> None:
    """UnreadableFileError if ``text`` nests arrays/objects deeper than ``max_depth`` (checked without
    recursion, before ``json.loads`` could exhaust the stack)."""
    depth = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > max_depth:
                raise UnreadableFileError(f"{what}: JSON nested more than {max_depth} levels deep")
        else:
            depth -= 1


def parse_json(data: bytes | str, what: str = "JSON", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` of UTF-8 text with the nesting depth bounded; ValueError (UnreadableFileError for the
    depth, json.JSONDecodeError/UnicodeDecodeError otherwise) on bad input. NaN/Infinity are refused."""
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray, memoryview)) else data
    check_json_depth(text, max_depth, what)

    def no_constants(name):
        raise ValueError(f"{what}: {name} is not valid JSON")
    return json.loads(text, parse_constant=no_constants)


def read_json(path: str | os.PathLike, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON file, read with :func:`read_file` and parsed with :func:`parse_json`."""
    return parse_json(read_file(path, max_bytes, what), f"{what} {os.fspath(path)!r}", max_depth)


def sha256_file(path: str | os.PathLike, max_bytes: int | None = None, what: str = "file") -> str:
    fd, _ = open_regular(path, what, max_bytes)
    digest = hashlib.sha256()
    try:
        while True:
            block = os.read(fd, _CHUNK)
            if not block:
                break
            digest.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # some platforms/filesystems cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_temps(directory: str, base: str) -> None:
    """Temporary files left by processes that died mid-write (SIGKILL, power loss) - not by live writers."""
    prefix = f".{base}."
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        parts = name[len(prefix):-len(".tmp")].split(".")
        if len(parts) == 2 and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def temp_path_for(path: str) -> str:
    """A fresh temporary name beside ``path`` that :func:`atomic_write` recognises as its own (and removes once
    its process is dead)."""
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def create_file(path: str, mode: int = 0o666) -> int:
    """A new file opened for writing, with ``mode`` filtered by the umask (never an existing file, never through
    a symlink)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                   | getattr(os, "O_NOFOLLOW", 0), mode)


def _write_all(fd: int, chunks: Iterable) -> None:
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while view:
            n = os.write(fd, view)
            view = view[n:]


def as_write_error(exc: OSError, path: str, error_type: type = WriteError) -> OSError:
    """``exc`` as ``error_type`` (a WriteError subclass) with its errno and a message naming ``path``."""
    if isinstance(exc, error_type):
        return exc
    code = exc.errno if exc.errno is not None else _errno.EIO
    return error_type(code, f"cannot write {path}: {exc.strerror or exc}", path)


def atomic_write(path: str | os.PathLike, data: bytes | memoryview | Iterable, *, make_dirs: bool = False,
                 error_type: type = WriteError, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (bytes, or an iterable of bytes-like chunks) atomically and durably.

    A symlink's target is replaced, not the link. A new file gets mode 0o666 minus the umask; a replaced
    file keeps its mode. Every failure is ``error_type`` (a :class:`WriteError`) and leaves ``path`` as it was.
    ``durable=False``: atomic but not fsynced (transient files: readers never see a torn one, a power loss may
    lose it).
    """
    path = os.path.realpath(os.fspath(path))
    directory, base = os.path.split(path)
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    tmp = None
    try:
        if make_dirs:
            os.makedirs(directory, exist_ok=True)
        tmp = temp_path_for(path)
        fd = create_file(tmp)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(fd, os.stat(path).st_mode & 0o7777)
            _write_all(fd, chunks)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        if durable:
            fsync_dir(directory)
    except OSError as exc:
        raise as_write_error(exc, path, error_type) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _remove_stale_temps(directory, base)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """:func:`atomic_write` of bytes, creating missing parent directories. ``durable=False`` skips the fsyncs:
    for files that must never be torn but need not survive a power loss (the live frame a server hands to its
    workers, many times a second)."""
    atomic_write(path, data, make_dirs=True, durable=durable)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    # allow_nan=False: NaN/Infinity are not JSON, and another reader would refuse the file later.
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n").encode("utf-8"))
