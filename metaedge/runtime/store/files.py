"""The gallery's files on disk: what a path holds, and making a new database file appear atomically.

A new gallery database (created, copied by ``save(other_path)``, converted by ``migrate``) is written in full
to a temporary file beside its target - created with the umask's permissions, SQLite's own files (``-wal``,
``-shm``) then take the same mode - fsynced, and only then linked to its name (``link`` never replaces an
existing file: two processes creating one gallery at once both end up using the same, complete database).
"""
from __future__ import annotations

import contextlib
import errno
import os
import sqlite3

from metaedge.runtime.fileio import UnreadableFileError, as_write_error, create_file, fsync_dir, open_regular, \
    temp_path_for
from metaedge.runtime.store.db import is_sqlite_file
from metaedge.runtime.store.errors import (STORE_ERRORS, GalleryCorruptError, GalleryError, GalleryWriteError,
                                           from_sqlite_error)

__all__ = ["kind_of", "new_database", "install", "remove_gallery", "STORE", "LEGACY"]

STORE, LEGACY = "store", "legacy"


def kind_of(path: str) -> str:
    """``"store"`` (an SQLite gallery) or ``"legacy"`` (anything else: the schema-1 reader judges it).
    FileNotFoundError if missing; GalleryError for a directory, FIFO, device or empty file."""
    try:
        fd, size = open_regular(path, "gallery")
    except UnreadableFileError as exc:
        raise GalleryError(str(exc)) from None
    try:
        head = os.read(fd, 16)
    finally:
        os.close(fd)
    if size == 0:
        raise GalleryCorruptError(f"{path}: the file is empty (0 bytes) - not a gallery")
    return STORE if is_sqlite_file(head) else LEGACY


def new_database(target: str, fill) -> str:
    """A temporary database beside ``target`` (mode 0o666 minus the umask) filled by ``fill(connection)`` in
    rollback-journal mode, closed and fsynced; returns its path (the caller installs or removes it)."""
    tmp = temp_path_for(target)
    try:
        os.close(create_file(tmp))
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA synchronous=FULL")
            fill(conn)
        finally:
            conn.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp
    except STORE_ERRORS as exc:
        _discard(tmp)
        raise from_sqlite_error(exc, target, "writing the new gallery") from None
    except OSError as exc:
        _discard(tmp)
        raise as_write_error(exc, target, GalleryWriteError) from None
    except BaseException:
        _discard(tmp)
        raise


def install(tmp: str, target: str, *, replace: bool = False) -> bool:
    """Give the complete file ``tmp`` the name ``target``; False (and ``tmp`` removed) when ``target`` exists
    and ``replace`` is off. The directory is fsynced."""
    try:
        if replace:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                if os.path.lexists(target):  # no hard links here (FAT, some FUSE): check, then rename
                    return False
                os.replace(tmp, target)
        fsync_dir(os.path.dirname(os.path.abspath(target)))
        return True
    except OSError as exc:
        raise as_write_error(exc, target, GalleryWriteError) from None
    finally:
        _discard(tmp)


def remove_gallery(path: str) -> None:
    """Delete a gallery and its companion files (``-wal``, ``-shm``, ``-changes``) - only when no process uses it
    (one that does keeps writing to the deleted file)."""
    for suffix in ("", "-wal", "-shm", "-changes"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)


def _discard(path: str) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.unlink(path + suffix)
