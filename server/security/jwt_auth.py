"""JWT bearer-token authentication against a JWKS file.

Besides API keys, callers may send ``authorization: Bearer <jwt>`` with a token
issued by an identity provider (OIDC / OAuth 2). The provider's public keys are
kept in a JWKS file (``{"keys": [...]}``); the same file is given to Envoy's
``jwt_authn`` filter, which checks the token at the edge. The server checks it
again here so that callers reaching the gRPC port directly, without Envoy, are
held to the same rule.

Hardening, because the token header is attacker-controlled:

* only an explicit allow-list of asymmetric algorithms is accepted; ``none`` and
  the HMAC algorithms are refused at construction (a JWKS holds public keys, and
  HS256 "signed" with a public key is the classic key-confusion attack);
* the key is picked by ``kid`` and the token's ``alg`` must be the key's algorithm:
  its ``alg`` member, or, when it has none, the one its type implies (RS256 for
  RSA, ES256/384/512 by curve for EC, EdDSA for OKP);
* ``exp``, ``iss``, ``aud`` and ``sub`` are required; error messages name the
  problem but never echo the token or any of its content.

The JWKS file is re-read when it changes (keys rotate without a restart); a broken
file keeps the previous keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt

from tensorgate.server.errors import UnauthenticatedError
from tensorgate.server.security.principal import SCOPES, Principal
from tensorgate.server.security.watched_file import WatchedFile

log = logging.getLogger(__name__)

__all__ = ["MAX_TOKEN_BYTES", "JwtVerifier"]

MAX_TOKEN_BYTES = 16 * 1024  # longer "tokens" are refused before any parsing
_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# JWS algorithm → the JWK key type (kty) that can verify it.
_KEY_TYPE_OF_ALGORITHM = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "RSA"),
    **dict.fromkeys(("ES256", "ES256K", "ES384", "ES512"), "EC"),
    "EdDSA": "OKP",
}
# JWK members that only private or symmetric keys have: such a key must never sit in a file shared with Envoy.
_SECRET_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")

# PyJWT exception → reason given to the caller (most specific first; every one is an InvalidTokenError or PyJWTError).
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidSignatureError, "bad token signature"),
    (jwt.InvalidAudienceError, "wrong token audience"),
    (jwt.InvalidIssuerError, "wrong token issuer"),
    (jwt.InvalidAlgorithmError, "token algorithm not allowed"),
    (jwt.InvalidIssuedAtError, "invalid 'iat' claim in token"),
    (jwt.exceptions.InvalidSubjectError, "invalid 'sub' claim in token"),
    (jwt.InvalidKeyError, "token key unusable for its algorithm"),
    (jwt.DecodeError, "malformed token"),
)


class JwtVerifier:
    """Verifies bearer JWTs against the public keys of a JWKS file and maps them to a :class:`Principal`."""

    def __init__(
        self,
        jwks_file: Path,
        issuer: str,
        audiences: Sequence[str],
        algorithms: Sequence[str],
        leeway_s: float = 30.0,
        scopes_claim: str = "scope",
    ) -> None:
        algorithms = tuple(algorithms)
        if not algorithms:
            raise ValueError("JWT algorithm allow-list is empty")
        if any(alg.lower() == "none" for alg in algorithms):
            raise ValueError("JWT algorithm 'none' must never be allowed")
        if hmac := sorted(_HMAC_ALGORITHMS.intersection(algorithms)):
            raise ValueError(f"HMAC algorithms {hmac} cannot be verified with a JWKS of public keys")
        if unknown := sorted(set(algorithms) - _KEY_TYPE_OF_ALGORITHM.keys()):
            raise ValueError(f"unsupported JWT algorithms {unknown}; use some of {sorted(_KEY_TYPE_OF_ALGORITHM)}")
        if not issuer:
            raise ValueError("JWT issuer must be given")
        audiences = tuple(audiences)
        if not audiences or not all(audiences):
            raise ValueError("at least one non-empty JWT audience must be given")
        if leeway_s < 0:
            raise ValueError("JWT leeway must not be negative")
        if not scopes_claim:
            raise ValueError("JWT scopes claim name must not be empty")
        self._issuer = issuer
        self._audiences = list(audiences)
        self._algorithms = list(algorithms)
        self._leeway_s = leeway_s
        self._scopes_claim = scopes_claim
        self._keys = WatchedFile(jwks_file, lambda text: _load_jwks(text, self._algorithms), "jwks")

    def verify(self, token: str) -> Principal:
        """The principal the token names if it is valid; UnauthenticatedError with a short reason otherwise."""
        if not isinstance(token, str) or not token:
            raise UnauthenticatedError("malformed token: empty")
        if len(token) > MAX_TOKEN_BYTES:
            raise UnauthenticatedError(f"malformed token: longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise UnauthenticatedError("malformed token: unreadable header") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise UnauthenticatedError(f"token algorithm not allowed (allowed: {', '.join(self._algorithms)})")
        key = self._key_for(header.get("kid"), alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audiences,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"], "enforce_minimum_key_length": True},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise UnauthenticatedError(f"token lacks the required {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError(_reason(exc)) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise UnauthenticatedError("invalid 'sub' claim in token")
        return Principal("jwt:" + sub, self._scopes(claims))

    def _key_for(self, kid: object, alg: str) -> Any:
        """The verification key for a token's ``kid`` and ``alg`` (the cryptography public key object)."""
        family = _KEY_TYPE_OF_ALGORITHM[alg]
        keys = self._keys.current()
        if kid is None:
            candidates = [jwk for jwk in keys if jwk.key_type == family]
            if len(candidates) != 1:
                raise UnauthenticatedError("token has no key id and the JWKS holds no single key for its algorithm")
        else:
            candidates = [jwk for jwk in keys if jwk.key_id == kid]
            if not candidates:
                raise UnauthenticatedError("unknown token key id")
            candidates = [jwk for jwk in candidates if jwk.key_type == family]
            if len(candidates) != 1:
                raise UnauthenticatedError("token key id does not name exactly one key for its algorithm")
        jwk = candidates[0]
        # The JWK's own "alg" (or, absent that, the one its type implies: RS256 for RSA, by curve for EC) binds it.
        if jwk.algorithm_name != alg:
            raise UnauthenticatedError("token algorithm does not match its key's algorithm")
        return jwk.key

    def _scopes(self, claims: dict[str, Any]) -> frozenset[str]:
        value = claims.get(self._scopes_claim)
        if value is None:
            return frozenset()
        if isinstance(value, str):
            granted = value.split()
        elif isinstance(value, list):
            granted = [scope for scope in value if isinstance(scope, str)]
        else:
            raise UnauthenticatedError(f"token claim {self._scopes_claim!r} must be a string or a list of strings")
        return frozenset(granted).intersection(SCOPES)


def _load_jwks(text: str, algorithms: Sequence[str]) -> tuple[jwt.PyJWK, ...]:
    """The signing keys of a JWKS document usable with ``algorithms``. Raises ValueError saying what is wrong."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"JWKS is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('JWKS must be a JSON object {"keys": [...]}')
    for index, entry in enumerate(document["keys"]):
        if isinstance(entry, dict) and any(member in entry for member in _SECRET_JWK_MEMBERS):
            raise ValueError(f"JWKS key #{index} holds private or symmetric key material; publish public keys only")
    try:
        key_set = jwt.PyJWKSet.from_dict(document)
    except jwt.PyJWTError as exc:
        raise ValueError(f"JWKS has no usable key: {exc}") from None
    families = {_KEY_TYPE_OF_ALGORITHM[alg] for alg in algorithms}
    keys = tuple(jwk for jwk in key_set.keys if jwk.public_key_use in (None, "sig") and jwk.key_type in families)
    if not keys:
        raise ValueError(f"JWKS holds no signing key usable with the algorithms {list(algorithms)}")
    return keys


def _reason(exc: jwt.PyJWTError) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid token"
