"""JwtVerifier: valid tokens, the usual forgeries and mistakes, JWKS rotation without restart, unsafe configurations."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import jwt
import pytest

from tensorgate.server.errors import UnauthenticatedError
from tensorgate.server.security import watched_file
from tensorgate.server.security.jwt_auth import JwtVerifier
from tensorgate.server.security.principal import Principal

from jwt_tokens import AUDIENCE, ISSUER, TokenIssuer, new_rsa_key


def make_verifier(jwks_file: Path, algorithms: tuple[str, ...] = ("RS256",), **kwargs: object) -> JwtVerifier:
    return JwtVerifier(jwks_file, issuer=ISSUER, audiences=[AUDIENCE], algorithms=algorithms, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> TokenIssuer:
    return TokenIssuer(tmp_path_factory.mktemp("jwks") / "jwks.json")


@pytest.fixture(scope="module")
def verifier(issuer: TokenIssuer) -> JwtVerifier:
    return make_verifier(issuer.jwks_path)


def flip_signature_byte(token: str) -> str:
    """The token with one character in the middle of its signature changed (still valid base64url)."""
    spot = len(token) - 20
    return token[:spot] + ("A" if token[spot] != "A" else "B") + token[spot + 1 :]


def refused(verifier: JwtVerifier, token: str) -> str:
    """The reason the token is refused; it must not contain the token or any part of it."""
    with pytest.raises(UnauthenticatedError) as caught:
        verifier.verify(token)
    message = str(caught.value)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert token not in message
    assert not any(len(part) >= 8 and part in message for part in token.split("."))
    return message


def test_valid_token_gives_principal_with_known_scopes(issuer: TokenIssuer, verifier: JwtVerifier) -> None:
    assert verifier.verify(issuer.token()) == Principal("jwt:user-1", frozenset({"predict"}))
    both = verifier.verify(issuer.token(scopes="openid predict  admin profile", sub="ops-bot"))
    assert both == Principal("jwt:ops-bot", frozenset({"predict", "admin"}))
    assert verifier.verify(issuer.token(scopes=["admin", "email", "predict"])).scopes == {"admin", "predict"}
    assert verifier.verify(issuer.token(scopes=None)).scopes == frozenset()  # authenticated, but may do nothing


def test_audience_list_and_custom_scopes_claim(issuer: TokenIssuer) -> None:
    verifier = make_verifier(issuer.jwks_path, scopes_claim="scp")
    token = issuer.token(scopes=None, audience=["other", AUDIENCE], extra_claims={"scp": ["predict"]})
    assert verifier.verify(token).scopes == {"predict"}


def test_token_without_kid_uses_the_only_key(issuer: TokenIssuer, verifier: JwtVerifier) -> None:
    assert verifier.verify(issuer.token(kid=None)).name == "jwt:user-1"


def test_leeway_accepts_a_token_just_expired(issuer: TokenIssuer, verifier: JwtVerifier) -> None:
    assert verifier.verify(issuer.token(expires_in_s=-10)).name == "jwt:user-1"  # default leeway 30 s
    strict = make_verifier(issuer.jwks_path, leeway_s=0)
    assert "expired" in refused(strict, issuer.token(expires_in_s=-10))


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (TokenIssuer.expired, "expired"),
        (TokenIssuer.wrong_signature, "signature"),
        (TokenIssuer.wrong_audience, "audience"),
        (TokenIssuer.wrong_issuer, "issuer"),
        (TokenIssuer.alg_none, "algorithm not allowed"),
        (TokenIssuer.key_confusion, "algorithm not allowed"),
        (lambda issuer: issuer.token(kid="no-such-key"), "unknown token key id"),
        (lambda issuer: issuer.token(expires_in_s=None), "'exp'"),
        (lambda issuer: flip_signature_byte(issuer.token()), "signature"),
        (lambda issuer: issuer.token(extra_claims={"nbf": 2**40}), "not yet valid"),
        (lambda issuer: issuer.token(extra_claims={"scope": 42}), "'scope'"),
        (lambda issuer: issuer.token(sub=""), "'sub'"),
        (lambda issuer: "garbage-that-is-no-jwt-at-all", "malformed"),
        (lambda issuer: "eyJhbGciOiJSUzI1NiJ9.e30", "malformed"),
        (lambda issuer: "a" * 20_000, "malformed"),
    ],
    ids=[
        "expired",
        "wrong-signature",
        "wrong-audience",
        "wrong-issuer",
        "alg-none",
        "hs256-key-confusion",
        "unknown-kid",
        "missing-exp",
        "corrupt-signature",
        "not-before-future",
        "scope-not-string",
        "empty-sub",
        "garbage",
        "two-segments",
        "too-long",
    ],
)
def test_bad_tokens_are_refused_without_echoing_them(
    issuer: TokenIssuer, verifier: JwtVerifier, forge: Callable[[TokenIssuer], str], reason: str
) -> None:
    assert reason in refused(verifier, forge(issuer))


def test_missing_sub_is_refused(issuer: TokenIssuer, verifier: JwtVerifier) -> None:
    claims = issuer.claims()
    del claims["sub"]
    token = jwt.encode(claims, issuer.private_key, algorithm="RS256", headers={"kid": issuer.kid})
    assert "'sub'" in refused(verifier, token)


def test_hs256_is_refused_even_when_pyjwt_is_handed_the_pem(issuer: TokenIssuer, verifier: JwtVerifier) -> None:
    """The forged token really is valid HS256 over the public PEM: only the allow-list stops it."""
    token = issuer.key_confusion()
    signing_input, signature = token.rsplit(".", 1)
    expected = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256)
    assert expected.verify(signing_input.encode(), issuer.public_pem, jwt.utils.base64url_decode(signature))
    assert "algorithm not allowed" in refused(verifier, token)


def test_token_alg_must_match_the_keys_alg(issuer: TokenIssuer) -> None:
    """PS256 is allowed, but the JWK says RS256: a PS256 token under that kid is refused before any signature check."""
    verifier = make_verifier(issuer.jwks_path, algorithms=("RS256", "PS256"))
    assert verifier.verify(issuer.token()).name == "jwt:user-1"
    assert "does not match" in refused(verifier, issuer.token(alg="PS256"))


def test_kidless_token_with_several_keys_is_refused(tmp_path: Path) -> None:
    issuer = TokenIssuer(tmp_path / "jwks.json")
    other = TokenIssuer(tmp_path / "other.json", kid="other")
    issuer.write_jwks(extra_keys=[other.jwk])
    verifier = make_verifier(issuer.jwks_path)
    assert verifier.verify(other.token()).name == "jwt:user-1"  # picked by kid
    assert "no key id" in refused(verifier, issuer.token(kid=None))


def test_jwks_rotation_without_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = TokenIssuer(tmp_path / "jwks.json")
    verifier = make_verifier(old.jwks_path)
    old_token = old.token()
    assert verifier.verify(old_token).name == "jwt:user-1"

    monkeypatch.setattr(watched_file, "RELOAD_CHECK_S", 3600.0)
    new = TokenIssuer(old.jwks_path, kid="rotated")  # the provider publishes a new key and drops the old one
    new_token = new.token(sub="user-2")
    assert "unknown token key id" in refused(verifier, new_token)  # not looked at yet

    monkeypatch.setattr(watched_file, "RELOAD_CHECK_S", 0.0)
    assert verifier.verify(new_token).name == "jwt:user-2"
    assert "unknown token key id" in refused(verifier, old_token)


def test_broken_jwks_keeps_the_previous_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    issuer = TokenIssuer(tmp_path / "jwks.json")
    verifier = make_verifier(issuer.jwks_path)
    monkeypatch.setattr(watched_file, "RELOAD_CHECK_S", 0.0)
    for broken in ('{"keys": [', '{"keys": []}', json.dumps({"keys": [{"kty": "RSA", "kid": "x"}]})):
        caplog.clear()
        issuer.jwks_path.write_text(broken)
        with caplog.at_level(logging.ERROR, logger="tensorgate.server.security.watched_file"):
            assert verifier.verify(issuer.token()).name == "jwt:user-1"
        assert any("keeping the previous content" in record.getMessage() for record in caplog.records)
    issuer.write_jwks()  # repaired
    assert verifier.verify(issuer.token()).name == "jwt:user-1"


@pytest.mark.parametrize(
    "algorithms", [(), ("none",), ("HS256",), ("RS256", "HS512"), ("RS256", "None"), ("XY999",)], ids=str
)
def test_constructor_refuses_unsafe_algorithm_lists(issuer: TokenIssuer, algorithms: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        make_verifier(issuer.jwks_path, algorithms=algorithms)


def test_constructor_refuses_bad_settings_and_files(issuer: TokenIssuer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="audience"):
        JwtVerifier(issuer.jwks_path, issuer=ISSUER, audiences=[], algorithms=["RS256"])
    with pytest.raises(ValueError, match="issuer"):
        JwtVerifier(issuer.jwks_path, issuer="", audiences=[AUDIENCE], algorithms=["RS256"])
    with pytest.raises(ValueError, match="usable with"):
        make_verifier(issuer.jwks_path, algorithms=("ES256",))  # the file holds only an RSA key
    private = tmp_path / "private.json"
    private_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(new_rsa_key(), as_dict=True)
    private.write_text(json.dumps({"keys": [{**private_jwk, "kid": "oops"}]}))
    with pytest.raises(ValueError, match="private"):
        make_verifier(private)
    with pytest.raises(FileNotFoundError):
        make_verifier(tmp_path / "missing.json")
