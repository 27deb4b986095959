"""Bearer tokens for `metaedge serve`: named, with a role, kept in a file that stores only their hashes.

A token reads ``me_<id>_<secret>`` (12 hex digits of id, 32 random bytes of secret); the file keeps the id,
the SHA-256 of the whole token, the name, the role and the creation / revocation times. The token itself is
shown once, when it is made, and never stored. A fast hash is enough here: a token is 256 random bits, not a
password someone chose, so there is nothing to guess (the same reasoning as GitHub's and PyPI's API tokens).

Roles nest: ``viewer`` (predict, look at classes, live view, history, metrics) < ``operator`` (enroll, forget,
rename, adapt, calibrate, set the live region) < ``admin`` (tokens).

The server re-reads the file when it changes (one ``stat`` per request), so ``metaedge token revoke`` takes
effect at the next request of every worker. Changes are made under an exclusive lock (``FILE.lock``) and
written atomically; the file is read as untrusted input (a regular file, at most 1 MiB, every field checked).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass

from metaedge.runtime.fileio import UnreadableFileError, atomic_write_bytes, open_regular, parse_json

__all__ = ["ROLES", "TokenStore", "TokenRecord", "Principal", "TokenError", "TokenStoreError", "default_token_path",
           "role_allows"]

FORMAT = "metaedge.tokens"
SCHEMA_VERSION = 1
ROLES = ("viewer", "operator", "admin")
MAX_FILE_BYTES = 1 << 20
MAX_NAME_LENGTH = 64
_TOKEN_RE = re.compile(r"me_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# Compared against when a presented token's id is unknown, so that an unknown id costs the same as a wrong secret.
_NO_DIGEST = hashlib.sha256(b"metaedge: no such token").hexdigest()


class TokenError(ValueError):
    """A token that cannot be made or revoked as asked (a name in use, no such token; the message says why)."""


class TokenStoreError(TokenError):
    """The token store cannot be read: damaged, not a regular file, too big, or from a newer metaedge."""


def default_token_path() -> str:
    """``$METAEDGE_TOKENS``, else ``$XDG_CONFIG_HOME/metaedge/tokens.json`` (``~/.config/...``)."""
    if os.environ.get("METAEDGE_TOKENS"):
        return os.environ["METAEDGE_TOKENS"]
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "metaedge", "tokens.json")


def role_allows(have: str, need: str) -> bool:
    return ROLES.index(have) >= ROLES.index(need)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def _iso(ts: float | None) -> str | None:
    return None if ts is None else _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class TokenRecord:
    """One token as the store keeps it (its hash, never the token)."""
    id: str
    name: str
    role: str
    digest: str
    created: float
    revoked: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_dict(self) -> dict:
        """What may be shown: everything but the hash."""
        return {"name": self.name, "role": self.role, "id": self.id, "created": _iso(self.created),
                "revoked": _iso(self.revoked), "active": self.active}


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a token's name and role, or ``anonymous@ADDRESS`` where access control is off."""
    name: str
    role: str
    token_id: str | None = None

    def allows(self, role: str) -> bool:
        return role_allows(self.role, role)


def check_name(name) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise TokenError(f"token name: expected 1-{MAX_NAME_LENGTH} letters, digits, '.', '_', '@' or '-' "
                         f"(starting with a letter or digit), got {name!r}")
    return name


def check_role(role) -> str:
    if role not in ROLES:
        raise TokenError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    return role


def _parse(data: bytes, where: str) -> list[TokenRecord]:
    def bad(msg: str):
        raise TokenStoreError(f"{where}: {msg}; the token store is damaged (fix or remove it, then create tokens "
                         f"again with `metaedge token create`)")

    try:
        doc = parse_json(data, "token store")
    except ValueError as exc:  # (not UTF-8, not JSON, NaN, nested too deep)
        bad(f"not JSON ({exc})")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        bad(f"not a metaedge token store (expected \"format\": \"{FORMAT}\")")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        bad("\"version\" is missing or not an integer")
    if version > SCHEMA_VERSION:
        raise TokenStoreError(f"{where}: token store version {version} was written by a newer metaedge (this one reads "
                         f"up to {SCHEMA_VERSION}); upgrade metaedge")
    items = doc.get("tokens")
    if not isinstance(items, list):
        bad("\"tokens\" is not a list")
    records: list[TokenRecord] = []
    seen_ids, active_names = set(), set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            bad(f"token {i} is not an object")
        try:
            name = check_name(item.get("name"))
            role = check_role(item.get("role"))
        except TokenError as exc:
            bad(f"token {i}: {exc}")
        tid, digest = item.get("id"), item.get("sha256")
        if not isinstance(tid, str) or not re.fullmatch(r"[0-9a-f]{12}", tid) or tid in seen_ids:
            bad(f"token {i} ({name}): \"id\" is not 12 hex digits, or is repeated")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            bad(f"token {i} ({name}): \"sha256\" is not a SHA-256 hex digest")
        created, revoked = item.get("created"), item.get("revoked")
        for key, value in (("created", created), ("revoked", revoked)):
            if value is None and key == "revoked":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < 1e11):
                bad(f"token {i} ({name}): \"{key}\" is not a Unix time")
        if revoked is None:
            if name in active_names:
                bad(f"two active tokens are named {name!r}")
            active_names.add(name)
        seen_ids.add(tid)
        records.append(TokenRecord(tid, name, role, digest, float(created),
                                   None if revoked is None else float(revoked)))
    return records


def _serialise(records: list[TokenRecord]) -> bytes:
    items = [{"id": r.id, "name": r.name, "role": r.role, "sha256": r.digest, "created": r.created,
              "revoked": r.revoked} for r in records]
    return (json.dumps({"format": FORMAT, "version": SCHEMA_VERSION, "tokens": items}, indent=2) + "\n").encode()


class TokenStore:
    """The token file at ``path`` (it may not exist yet: then there are no tokens)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))
        self._lock = threading.Lock()
        self._cache_key: tuple | None = None
        self._records: list[TokenRecord] = []
        self._by_id: dict[str, TokenRecord] = {}

    # ------------------------------------------------------------------ reading
    def exists(self) -> bool:
        """Whether the file exists (a server turns access control on once it does)."""
        return os.path.exists(self.path)

    def _read(self) -> tuple[tuple | None, list[TokenRecord]]:
        """(the file's identity, its records), read as untrusted input: a regular file of bounded size."""
        try:
            fd, _ = open_regular(self.path, "token store", MAX_FILE_BYTES)
        except FileNotFoundError:
            return None, []
        except UnreadableFileError as exc:
            raise TokenStoreError(f"{exc}; the token store is damaged (fix or remove it)") from None
        except OSError as exc:
            raise TokenStoreError(f"{self.path}: cannot open the token store ({exc})") from None
        try:
            st = os.fstat(fd)
            data = os.read(fd, MAX_FILE_BYTES + 1)
        finally:
            os.close(fd)
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size), _parse(data, self.path)

    def _current(self) -> dict[str, TokenRecord]:
        """Records by id, re-read when the file changed (one stat when it did not)."""
        try:
            st = os.stat(self.path)
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key != self._cache_key:
            with self._lock:
                read_key, records = self._read()
                self._records, self._by_id = records, {r.id: r for r in records}
                self._cache_key = read_key
        return self._by_id

    def records(self) -> list[TokenRecord]:
        """Every token of the store, revoked ones too (re-read when the file changed)."""
        self._current()
        return list(self._records)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid, active token; None otherwise. The secret part is compared in constant
        time, and an unknown id costs the same comparison as a wrong secret."""
        m = _TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
        record = self._current().get(m.group(1)) if m else None
        expected = record.digest if record is not None else _NO_DIGEST
        ok = hmac.compare_digest(_digest(token if m else ""), expected)
        if not ok or record is None or not record.active:
            return None
        return Principal(record.name, record.role, record.id)

    # ------------------------------------------------------------------ changing
    @contextlib.contextmanager
    def _locked(self):
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        import fcntl
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, records: list[TokenRecord]) -> None:
        try:
            atomic_write_bytes(self.path, _serialise(records))
            os.chmod(self.path, 0o600)  # only its owner reads it (whatever mode the write helper gave it)
        except OSError as exc:
            raise OSError(exc.errno, f"{self.path}: cannot write the token store ({exc.strerror})") from None

    def create(self, name: str, role: str) -> tuple[TokenRecord, str]:
        """A new token -> (its record, the token). The token is not stored: show it to the user once."""
        check_name(name)
        check_role(role)
        with self._locked():
            _, records = self._read()
            if any(r.name == name and r.active for r in records):
                raise TokenError(f"a token named {name!r} exists already (revoke it first, or pick another name)")
            ids = {r.id for r in records}
            tid = secrets.token_hex(6)
            while tid in ids:
                tid = secrets.token_hex(6)
            token = f"me_{tid}_{secrets.token_urlsafe(32)}"
            record = TokenRecord(tid, name, role, _digest(token), time.time())
            self._write(records + [record])
        return record, token

    def revoke(self, name: str) -> TokenRecord:
        """Revoke the active token called ``name`` (or with that id); it stays listed as revoked."""
        with self._locked():
            _, records = self._read()
            hits = [i for i, r in enumerate(records) if r.active and name in (r.name, r.id)]
            if not hits:
                raise TokenError(f"no active token named {name!r}")
            i = hits[0]
            old = records[i]
            records[i] = TokenRecord(old.id, old.name, old.role, old.digest, old.created, time.time())
            self._write(records)
        return records[i]
