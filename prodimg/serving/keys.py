"""API keys for the HTTP service: stored hashed, checked per request, reloaded when the file changes.

The keys file is JSON::

    {"version": 1, "keys": [{"id": "ci-bot", "hash": "sha256:<hex>", "scopes": ["generate"],
                             "created": "2026-01-01T00:00:00+00:00"}]}

A key is ``pik_`` + 43 random URL-safe characters (256 bits), shown once when it is created; only its
SHA-256 is written. A salted slow hash (scrypt/pbkdf2) protects low-entropy *passwords*; for 256-bit
random secrets a plain SHA-256 is as strong and lets the server find a key with one dict lookup.
The file is written atomically (mode 0600) under an exclusive lock, so ``prodimg keys add|revoke``
can run while the service is up: the service notices the new file (mtime, size, inode) on the next
request.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..utils import atomic_write_text

logger = logging.getLogger(__name__)

KEY_PREFIX = "pik_"
SCOPE_GENERATE = "generate"
SCOPE_MONITOR = "monitor"
SCOPES = {
    SCOPE_GENERATE: "POST /v1/images/generations",
    SCOPE_MONITOR: "GET /metrics and GET /readyz",
}
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
FILE_VERSION = 1


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    scopes: frozenset[str]
    created: str


def _validate_scopes(scopes: list[str] | tuple[str, ...]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}; known scopes: {sorted(SCOPES)}")
    return sorted(set(scopes))


def _read_entries(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    if (
        not isinstance(data, dict)
        or data.get("version") != FILE_VERSION
        or not isinstance(data.get("keys"), list)
    ):
        raise ValueError(f"{path} is not a prodimg keys file (expected {{'version': 1, 'keys': [...]}})")
    for entry in data["keys"]:
        if not isinstance(entry, dict) or not {"id", "hash", "scopes", "created"} <= set(entry):
            raise ValueError(f"{path}: every key needs id, hash, scopes and created; got {entry!r}")
        if not str(entry["hash"]).startswith("sha256:"):
            raise ValueError(
                f"{path}: key {entry['id']!r} has an unsupported hash {str(entry['hash'])[:12]!r}"
            )
    return data["keys"]


def _write_entries(path: Path, entries: list[dict]) -> None:
    atomic_write_text(path, json.dumps({"version": FILE_VERSION, "keys": entries}, indent=2) + "\n", mode=0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the keys file between CLI invocations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def add_key(
    path: str | os.PathLike,
    key_id: str | None = None,
    scopes: list[str] | tuple[str, ...] = (SCOPE_GENERATE,),
) -> tuple[str, str]:
    """Create a key, store its hash in ``path``; return ``(key_id, key)``. The key is not stored."""
    path = Path(path)
    scopes = _validate_scopes(list(scopes))
    key_id = key_id or f"key-{secrets.token_hex(4)}"
    if not KEY_ID.fullmatch(key_id):
        raise ValueError(f"key id {key_id!r} must match {KEY_ID.pattern}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with _locked(path):
        entries = _read_entries(path)
        if any(e["id"] == key_id for e in entries):
            raise ValueError(
                f"a key with id {key_id!r} already exists in {path}; revoke it first or pick another id"
            )
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        entries.append({"id": key_id, "hash": hash_key(key), "scopes": scopes, "created": created})
        _write_entries(path, entries)
    return key_id, key


def revoke_key(path: str | os.PathLike, key_id: str) -> None:
    """Remove the key ``key_id`` from ``path`` (a running service stops accepting it on its next request)."""
    path = Path(path)
    with _locked(path):
        entries = _read_entries(path)
        kept = [e for e in entries if e["id"] != key_id]
        if len(kept) == len(entries):
            raise ValueError(f"no key with id {key_id!r} in {path}")
        _write_entries(path, kept)


def list_keys(path: str | os.PathLike) -> list[ApiKey]:
    return [ApiKey(e["id"], frozenset(e["scopes"]), e["created"]) for e in _read_entries(Path(path))]


class KeyStore:
    """The service's view of the keys file, re-read whenever the file changes.

    A file that cannot be parsed fails closed: no key is accepted until it is fixed (logged once).
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._by_hash: dict[str, ApiKey] = {}
        self._stamp: tuple | None = None
        self._lock = threading.Lock()
        self.error: str | None = None
        self.refresh()

    def _current_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self) -> None:
        if self.path is None:
            return
        stamp = self._current_stamp()
        if stamp == self._stamp and self._stamp is not None:
            return
        with self._lock:
            if stamp == self._stamp and self._stamp is not None:
                return
            try:
                entries = _read_entries(self.path)
                by_hash = {e["hash"]: ApiKey(e["id"], frozenset(e["scopes"]), e["created"]) for e in entries}
                self.error = None
            except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
                by_hash = {}
                self.error = str(err)
                logger.error("API keys file unusable, refusing every key until it is fixed: %s", err)
            self._by_hash, self._stamp = by_hash, stamp

    def lookup(self, key: str) -> ApiKey | None:
        self.refresh()
        return self._by_hash.get(hash_key(key))

    def __len__(self) -> int:
        self.refresh()
        return len(self._by_hash)
