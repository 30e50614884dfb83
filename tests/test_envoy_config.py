"""gateway/envoy.py builds Envoy's bootstrap as data and writes it as JSON: a path or an issuer reaches Envoy exactly
as configured, whatever characters it holds, and the public routes are one input to the renderer."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tensorgate.gateway import DESCRIPTOR_SET, DOCS_DIR, OPENAPI
from tensorgate.gateway.envoy import PUBLIC_ROUTES, envoy_binary, envoy_bootstrap, render_envoy_config
from tensorgate.server.commands.certs import create_dev_pki
from tensorgate.server.config import JwtConfig, ServerConfig, TlsConfig

from jwt_tokens import TokenIssuer

# What YAML pasted unquoted would have read as a mapping, a comment, a flow collection or a quoted string.
ODD_DIRECTORY = "files: here #1 {a, [b]} 'c' \"d\""
ODD_ISSUER = "https://login.example.com/#tenant: a, {b} [c] 'd' \"e\" \\f"


def values_of(node: Any, key: str) -> Iterator[Any]:
    """Every value held under ``key`` anywhere in a parsed JSON document."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                yield value
            yield from values_of(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from values_of(item, key)


def jwt_rules(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    (manager,) = values_of(bootstrap, "http_filters")
    (jwt,) = [f for f in manager if f["name"] == "envoy.filters.http.jwt_authn"]
    rules: list[dict[str, Any]] = jwt["typed_config"]["rules"]
    return rules


def test_odd_paths_and_issuer_render_exactly_and_envoy_accepts_them(tmp_path: Path) -> None:
    root = tmp_path / ODD_DIRECTORY
    pki = create_dev_pki(root / "tls")
    (root / "auth").mkdir()
    TokenIssuer(root / "auth" / "jwks.json")
    assets = root / "gateway # assets"
    assets.mkdir()
    shutil.copy(DESCRIPTOR_SET, assets)
    shutil.copy(OPENAPI, assets)
    shutil.copytree(DOCS_DIR, assets / DOCS_DIR.name)
    config = ServerConfig(
        tls=TlsConfig(cert_file=pki.server.cert, key_file=pki.server.key, ca_file=pki.ca),
        gateway_tls=TlsConfig(cert_file=pki.gateway.cert, key_file=pki.gateway.key, ca_file=pki.ca),
        upstream_tls=TlsConfig(cert_file=pki.gateway.cert, key_file=pki.gateway.key, ca_file=pki.ca),
        jwt=JwtConfig(jwks_file=root / "auth" / "jwks.json", issuer=ODD_ISSUER),
    )
    config_file = tmp_path / "envoy.json"
    config_file.write_text(render_envoy_config(config, assets))

    bootstrap = json.loads(config_file.read_text())
    files = {str(p.resolve()) for p in (pki.gateway.cert, pki.gateway.key, pki.ca)}  # the server's are not Envoy's
    files |= {str((root / "auth" / "jwks.json").resolve()), str(assets / OPENAPI.name)}
    files |= {str(assets / DOCS_DIR.name / p.name) for p in DOCS_DIR.iterdir() if p.is_file()}
    assert set(values_of(bootstrap, "filename")) == files
    assert set(values_of(bootstrap, "proto_descriptor")) == {str(assets / DESCRIPTOR_SET.name)}
    assert list(values_of(bootstrap, "issuer")) == [ODD_ISSUER]
    # Envoy reads every one of those files while it validates: a path it got wrong would fail here.
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config_file), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_routes_are_the_jwt_filters_exceptions(tmp_path: Path) -> None:
    TokenIssuer(tmp_path / "jwks.json")
    config = ServerConfig(jwt=JwtConfig(jwks_file=tmp_path / "jwks.json", issuer="https://login.example.com/"))
    everything_else = {"match": {"prefix": "/"}, "requires": {"provider_name": "tensorgate"}}
    assert jwt_rules(envoy_bootstrap(config)) == [*({"match": m} for m in PUBLIC_ROUTES), everything_else]
    only_health = ({"path": "/grpc.health.v1.Health/Check"},)
    rules = jwt_rules(envoy_bootstrap(config, public_routes=only_health))
    assert rules == [{"match": {"path": "/grpc.health.v1.Health/Check"}}, everything_else]
