"""Test helper: a stand-in identity provider that signs JWTs and publishes its public key as a JWKS file.

Besides well-formed tokens it forges the usual attacks: expired, signed by another key under the same
``kid``, meant for another audience, ``alg: none``, and HS256 "signed" with the public key (key confusion).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

AUDIENCE = "tensorgate"
ISSUER = "https://issuer.test"


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


class TokenIssuer:
    """An RSA 2048 signing key (``kid``) whose public JWKS is written to ``jwks_path`` (atomically)."""

    def __init__(self, jwks_path: Path, kid: str = "test-rsa") -> None:
        self.jwks_path = jwks_path
        self.kid = kid
        self.private_key = new_rsa_key()
        self.public_key = self.private_key.public_key()
        self.write_jwks()

    @property
    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK."""
        jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(self.public_key, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}

    @property
    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def write_jwks(self, extra_keys: Sequence[dict[str, Any]] = ()) -> None:
        """Publish this issuer's public key (plus ``extra_keys``), replacing the file atomically."""
        partial = self.jwks_path.with_name(f".{self.jwks_path.name}.tmp")
        partial.write_text(json.dumps({"keys": [self.jwk, *extra_keys]}, indent=2))
        partial.replace(self.jwks_path)

    def claims(
        self,
        scopes: str | list[str] | None = "predict",
        audience: str | list[str] = AUDIENCE,
        issuer: str = ISSUER,
        expires_in_s: float | None = 300,
        sub: str = "user-1",
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": issuer, "sub": sub, "aud": audience, "iat": now}
        if expires_in_s is not None:
            claims["exp"] = now + int(expires_in_s)
        if scopes is not None:
            claims["scope"] = scopes
        return claims

    def token(
        self,
        scopes: str | list[str] | None = "predict",
        audience: str | list[str] = AUDIENCE,
        issuer: str = ISSUER,
        expires_in_s: float | None = 300,
        sub: str = "user-1",
        alg: str = "RS256",
        key: Any = None,
        kid: str | None = "",
        extra_claims: dict[str, Any] | None = None,
    ) -> str:
        """A signed token. ``expires_in_s=None`` leaves ``exp`` out; ``kid`` "" is this issuer's, None none;
        ``key`` (a private key, or an HMAC secret) signs instead of this issuer's key."""
        payload = {**self.claims(scopes, audience, issuer, expires_in_s, sub), **(extra_claims or {})}
        kid = self.kid if kid == "" else kid
        headers = {"kid": kid} if kid is not None else None
        return jwt.encode(payload, key if key is not None else self.private_key, algorithm=alg, headers=headers)

    def expired(self) -> str:
        """Expired an hour ago (well beyond any leeway)."""
        return self.token(expires_in_s=-3600)

    def wrong_signature(self) -> str:
        """Signed by another RSA key under this issuer's kid."""
        return self.token(key=new_rsa_key())

    def wrong_audience(self) -> str:
        return self.token(audience="some-other-service")

    def wrong_issuer(self) -> str:
        return self.token(issuer="https://evil.test")

    def alg_none(self) -> str:
        """Unsigned: ``header.payload.`` with ``alg: none`` (built by hand; PyJWT will not make one with a kid)."""
        header = {"alg": "none", "typ": "JWT", "kid": self.kid}
        return f"{b64url_json(header)}.{b64url_json(self.claims())}."

    def key_confusion(self) -> str:
        """HS256 with the public key's PEM as the HMAC secret (a verifier that lets the header pick the
        algorithm would accept it, the PEM being public). Built by hand: PyJWT refuses a PEM as HMAC secret."""
        signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT', 'kid': self.kid})}.{b64url_json(self.claims())}"
        signature = hmac.new(self.public_pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(signature)}"
