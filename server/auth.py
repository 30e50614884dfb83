"""API-key authentication and scope authorization of every tensorgate RPC.

Keys live in a TOML file (``--api-keys-file``), one table per key, holding only
the SHA-256 of the key, never the key itself::

    [keys.batch-job]
    sha256 = "9f86d081..."
    scopes = ["predict"]

    [keys.ops]
    sha256 = "60303ae2..."
    scopes = ["predict", "admin"]

Callers send ``authorization: Bearer <key>`` (or ``x-api-key: <key>``). The
file is re-read when it changes, so keys rotate without a restart. Scopes:
``predict`` (inference, status, metadata) and ``admin`` (load, unload, reload,
labels). Health and reflection are separate services and stay public.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tensorgate.server.errors import PermissionDeniedError, UnauthenticatedError
from tensorgate.server.rate_limit import RateLimiter

log = logging.getLogger(__name__)

SCOPES = ("predict", "admin")
RELOAD_CHECK_S = 1.0  # how often the key file's modification time is looked at


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name (for logs) and what it may do."""

    name: str
    scopes: frozenset[str]


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key (shown once to its owner; only its hash is stored)."""
    return "tg_" + secrets.token_urlsafe(32)


def parse_key_file(text: str) -> dict[str, Principal]:
    """Key hash → principal. Raises ValueError naming the bad entry."""
    keys: dict[str, Principal] = {}
    for name, entry in tomllib.loads(text).get("keys", {}).items():
        digest, scopes = entry.get("sha256", ""), frozenset(entry.get("scopes", ()))
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"key {name!r}: sha256 must be 64 lowercase hex digits")
        if not scopes or not scopes <= set(SCOPES):
            raise ValueError(f"key {name!r}: scopes must be a non-empty subset of {list(SCOPES)}")
        keys[digest] = Principal(name, scopes)
    return keys


class ApiKeyAuthenticator:
    """Checks the credentials of each call against the key file."""

    def __init__(self, path: Path, limiter: RateLimiter | None = None) -> None:
        self._path = path
        self._limiter = limiter
        self._keys = parse_key_file(path.read_text())
        self._mtime = path.stat().st_mtime_ns
        self._checked = time.monotonic()
        log.info("api keys loaded", extra={"fields": {"file": str(path), "keys": len(self._keys)}})

    def authorize(self, metadata: Iterable[tuple[str, str | bytes]] | None, scope: str) -> Principal:
        """The caller, if its key is known, holds ``scope`` and is within its rate.

        UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED otherwise.
        """
        self._reload_if_changed()
        key = _presented_key(metadata)
        if key is None:
            raise UnauthenticatedError("missing credentials: send 'authorization: Bearer <api key>'")
        principal = self._keys.get(hash_key(key))
        if principal is None:
            raise UnauthenticatedError("unknown or revoked API key")
        if scope not in principal.scopes:
            raise PermissionDeniedError(f"key {principal.name!r} lacks the {scope!r} scope")
        if self._limiter is not None:
            self._limiter.take(principal.name)
        return principal

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            mtime = self._path.stat().st_mtime_ns
            if mtime != self._mtime:
                self._keys, self._mtime = parse_key_file(self._path.read_text()), mtime
                log.info("api keys reloaded", extra={"fields": {"file": str(self._path), "keys": len(self._keys)}})
        except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
            # A half-written or broken file must not lock everyone out: keep the keys we had.
            log.error("api key file unreadable; keeping the previous keys", extra={"fields": {"error": str(exc)}})


def write_key_file(path: Path, keys: dict[str, Principal]) -> None:
    """Write hashes and scopes atomically (a reader never sees half a file)."""
    lines = []
    for digest, principal in sorted(keys.items(), key=lambda item: item[1].name):
        scopes = ", ".join(f'"{scope}"' for scope in sorted(principal.scopes))
        lines += [f"[keys.{principal.name}]", f'sha256 = "{digest}"', f"scopes = [{scopes}]", ""]
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text("\n".join(lines))
    partial.chmod(0o600)
    partial.replace(path)


def _presented_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for name, value in metadata or ():
        if not isinstance(value, str):
            continue
        if name == "authorization" and value.lower().startswith("bearer "):
            return value[7:].strip()
        if name == "x-api-key":
            return value.strip()
    return None
