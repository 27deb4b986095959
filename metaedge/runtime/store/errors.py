"""What can go wrong with a gallery, as exception types callers (and the CLI's exit codes) can tell apart."""
from __future__ import annotations

import errno as _errno
import sqlite3

from metaedge.runtime.fileio import WriteError

__all__ = ["GalleryError", "GalleryCorruptError", "GalleryMismatchError", "GalleryVersionError",
           "GalleryReadOnlyError", "GalleryWriteError", "UnknownLabelError", "LabelConflictError",
           "from_sqlite_error", "STORE_ERRORS"]


class GalleryError(ValueError):
    """A gallery cannot be used; the message says what is wrong and, where it can, what to do."""


class GalleryCorruptError(GalleryError):
    """The file is not a gallery, is truncated, or holds values that fail their checksum or range checks."""


class GalleryMismatchError(GalleryError):
    """The gallery was made for another bundle (fingerprint, embedding dimension or metric differ)."""


class GalleryVersionError(GalleryError):
    """The file was written by a newer metaedge with a schema this version does not know."""


class GalleryReadOnlyError(GalleryError):
    """A change was asked of a gallery opened read-only (a file of the old format: convert it with
    ``metaedge classes migrate``; or a read-only file)."""


class GalleryWriteError(WriteError):
    """A change could not be written (disk full, read-only file system, permission, I/O error, another process
    holding the gallery for too long). An ``OSError`` with ``errno``; the gallery holds what it held before."""


class UnknownLabelError(KeyError):
    """A label that is not enrolled. A KeyError (mapping semantics) with a readable message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown label"


class LabelConflictError(ValueError):
    """Importing a class pack would change classes that exist here with other contents (see the conflict
    policies of :meth:`Gallery.import_pack`); ``labels`` lists them. Nothing was imported."""

    def __init__(self, message: str, labels: list[str]):
        super().__init__(message)
        self.labels = labels


# SQLite result codes (primary, low byte) -> errno of the write failure they stand for.
_WRITE_CODES = {13: _errno.ENOSPC,   # SQLITE_FULL
                8: _errno.EROFS,     # SQLITE_READONLY
                10: _errno.EIO,      # SQLITE_IOERR
                14: _errno.EACCES,   # SQLITE_CANTOPEN
                3: _errno.EACCES,    # SQLITE_PERM
                5: _errno.EBUSY,     # SQLITE_BUSY
                6: _errno.EBUSY}     # SQLITE_LOCKED
_CORRUPT_CODES = {11, 26}            # SQLITE_CORRUPT, SQLITE_NOTADB
# Python < 3.11 has no sqlite_errorcode: the messages of the same codes.
_WRITE_MESSAGES = {"database or disk is full": 13, "readonly database": 8, "disk i/o error": 10,
                   "unable to open database": 14, "database is locked": 5, "access permission denied": 3}
_CORRUPT_MESSAGES = ("file is not a database", "malformed", "file is encrypted")


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF
    text = str(exc).lower()
    for words, c in _WRITE_MESSAGES.items():
        if words in text:
            return c
    if any(words in text for words in _CORRUPT_MESSAGES):
        return 26
    return None


# What reading or writing the database can raise: sqlite3's errors, and text that is not UTF-8 in a damaged file
# (Python's sqlite3 raises UnicodeDecodeError for some of those).
STORE_ERRORS = (sqlite3.Error, UnicodeDecodeError)


def _disk_full(path: str) -> bool:
    import os
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def from_sqlite_error(exc: Exception, path: str, doing: str) -> Exception:
    """An sqlite3 exception as the gallery error it means: a GalleryWriteError for full disks, read-only files,
    I/O errors and locks held too long; a GalleryCorruptError for damaged databases; else a GalleryError."""
    if isinstance(exc, UnicodeDecodeError):
        return GalleryCorruptError(f"{path}: damaged text in the database ({exc}); restore a backup, or import a "
                                   f"class pack into a new gallery")
    code = _code(exc)
    if code in (10, 13, 14) and _disk_full(path):  # I/O errors and failed opens on a full disk say so
        code = 13
    if code in _CORRUPT_CODES:
        return GalleryCorruptError(f"{path}: not a metaedge gallery, or a damaged one ({exc}); restore a backup, "
                                   f"or import a class pack into a new gallery")
    if code in _WRITE_CODES:
        err = _WRITE_CODES[code]
        hint = {_errno.ENOSPC: "the disk is full", _errno.EROFS: "the gallery or its directory is read-only",
                _errno.EACCES: "no permission to open or create the gallery (and its -wal/-shm files)",
                _errno.EBUSY: "another process held the gallery's write lock for longer than the busy timeout",
                _errno.EIO: "an I/O error"}[err]
        return GalleryWriteError(err, f"{path}: {doing} failed: {hint} ({exc}); the gallery is unchanged", path)
    return GalleryError(f"{path}: {doing} failed: {exc}")
