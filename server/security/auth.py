"""Authentication and scope authorization of every tensorgate RPC: API keys and JWTs.

API keys live in a TOML file (``--api-keys-file``), one table per key, holding only
the SHA-256 of the key, never the key itself::

    [keys.batch-job]
    sha256 = "9f86d081..."
    scopes = ["predict"]
    models = ["mnist"]          # optional: only these models

    [keys.ops]
    sha256 = "60303ae2..."
    scopes = ["predict", "admin"]

Callers send ``x-api-key: <key>`` (or ``authorization: Bearer <key>`` when JWTs
are off). The file is re-read when it changes, so keys rotate without a
restart. JWTs (``authorization: Bearer <jwt>``) are verified by
:mod:`tensorgate.server.security.jwt_auth`. Scopes: ``predict`` (inference, status,
metadata) and ``admin`` (load, unload, reload, labels). Health and reflection
are separate services and stay public.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tensorgate.server.errors import PermissionDeniedError, UnauthenticatedError
from tensorgate.server.security.principal import SCOPES, Principal
from tensorgate.server.security.rate_limit import RateLimiter
from tensorgate.server.security.watched_file import WatchedFile

if TYPE_CHECKING:
    from tensorgate.server.security.jwt_auth import JwtVerifier

log = logging.getLogger(__name__)


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
        models = frozenset(entry.get("models", ()))
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"key {name!r}: sha256 must be 64 lowercase hex digits")
        if not scopes or not scopes <= set(SCOPES):
            raise ValueError(f"key {name!r}: scopes must be a non-empty subset of {list(SCOPES)}")
        if not all(isinstance(model, str) and model for model in models):
            raise ValueError(f"key {name!r}: models must be a list of model names")
        keys[digest] = Principal(name, scopes, models)
    return keys


class Authenticator:
    """Checks the credentials of each call: API keys, JWTs, or either; then scope and rate.

    ``limiter`` holds each key to its rate. ``failures`` throttles guessing: every failed authentication costs
    the caller's address a token, and an address out of tokens is refused before its credentials are looked
    at. The address is the peer's, or, when the peer is one of ``trusted_proxies`` (the gateway), the last
    ``x-forwarded-for`` hop: the address the gateway saw.
    """

    def __init__(
        self,
        keys: ApiKeyStore | None,
        tokens: JwtVerifier | None,
        limiter: RateLimiter | None = None,
        failures: RateLimiter | None = None,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self._keys = keys
        self._tokens = tokens
        self._limiter = limiter
        self._failures = failures
        self._trusted_proxies = tuple(ipaddress.ip_network(network) for network in trusted_proxies)

    def authorize(
        self, metadata: Sequence[tuple[str, str | bytes]] | None, scope: str, peer: str, cost: int = 1
    ) -> Principal:
        """The caller, if its credentials are valid, hold ``scope`` and have ``cost`` tokens of rate left.

        ``peer`` is gRPC's ``context.peer()``. UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED
        otherwise. A cost of 0 checks the credentials only (a stream is charged per message).
        """
        if self._failures is None:
            principal = self._authenticate(metadata)
        else:
            address = client_address(peer, metadata, self._trusted_proxies)
            self._failures.check(address)
            try:
                principal = self._authenticate(metadata)
            except UnauthenticatedError:
                self._failures.charge(address)
                raise
        if scope not in principal.scopes:
            raise PermissionDeniedError(f"{principal.name!r} lacks the {scope!r} scope")
        if self._limiter is not None and cost:
            self._limiter.take(principal.name, cost)
        return principal

    def _authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        api_key, bearer = _presented_credentials(metadata)
        if bearer is not None and self._tokens is not None and bearer.count(".") == 2:
            return self._tokens.verify(bearer)
        key = api_key if api_key is not None else bearer
        if key is None:
            wanted = " or ".join(
                ([] if self._keys is None else ["'x-api-key: <key>'"])
                + ([] if self._tokens is None else ["'authorization: Bearer <jwt>'"])
            )
            raise UnauthenticatedError(f"missing credentials: send {wanted}")
        principal = self._keys.lookup(key) if self._keys is not None else None
        if principal is None:
            raise UnauthenticatedError("unknown or revoked API key" if self._keys else "not a valid JWT")
        return principal


def client_address(
    peer: str,
    metadata: Iterable[tuple[str, str | bytes]] | None,
    trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> str:
    """The caller's IP address: the peer's (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``), or, when the peer is
    a trusted proxy, the last ``x-forwarded-for`` hop (the one the proxy appended; earlier ones the client
    may have forged)."""
    kind, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0].strip("[]") if kind in ("ipv4", "ipv6") else peer
    try:
        trusted = any(ipaddress.ip_address(host) in network for network in trusted_proxies)
    except ValueError:
        return host
    if trusted:
        forwarded = [value for name, value in metadata or () if name == "x-forwarded-for" and isinstance(value, str)]
        if forwarded and (last := forwarded[-1].rpartition(",")[2].strip()):
            return last[:64]
    return host


class ApiKeyStore:
    """The hashed API keys of the key file, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self._file = WatchedFile(path, parse_key_file, "api keys")

    def lookup(self, key: str) -> Principal | None:
        """The principal of ``key``, or None for an unknown or revoked key."""
        return self._file.current().get(hash_key(key))


def write_key_file(path: Path, keys: dict[str, Principal]) -> None:
    """Write hashes and scopes atomically (a reader never sees half a file)."""
    lines = []
    for digest, principal in sorted(keys.items(), key=lambda item: item[1].name):
        scopes = ", ".join(f'"{scope}"' for scope in sorted(principal.scopes))
        lines += [f"[keys.{principal.name}]", f'sha256 = "{digest}"', f"scopes = [{scopes}]"]
        if principal.models:
            lines.append("models = [" + ", ".join(f'"{model}"' for model in sorted(principal.models)) + "]")
        lines.append("")
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text("\n".join(lines))
    partial.chmod(0o600)
    partial.replace(path)


def _presented_credentials(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str | None, str | None]:
    """The ``x-api-key`` value and the ``authorization: Bearer`` token, each None when absent."""
    api_key = bearer = None
    for name, value in metadata or ():
        if not isinstance(value, str):
            continue
        if name == "authorization" and value[:7].lower() == "bearer ":
            bearer = value[7:].strip()
        elif name == "x-api-key":
            api_key = value.strip()
    return api_key, bearer
