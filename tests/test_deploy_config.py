"""The production configuration in deploy/ is valid against the configuration schema and renders an Envoy
config that Envoy itself accepts: TLS on every hop, API keys and JWTs on."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from tensorgate.gateway.envoy import envoy_binary, render_envoy_config
from tensorgate.server.commands.certs import create_dev_pki
from tensorgate.server.config import ServerConfig, load_config
from tensorgate.server.security.auth import write_key_file
from tensorgate.server.security.principal import Principal

from conftest import ROOT
from jwt_tokens import TokenIssuer

PRODUCTION = ROOT / "deploy" / "config" / "tensorgate.toml"
MOUNT = "/etc/tensorgate"


def production_config(tmp_path: Path) -> ServerConfig:
    """deploy/config/tensorgate.toml with its mounted files created under tmp_path instead of /etc/tensorgate."""
    pki = create_dev_pki(tmp_path / "tls")
    (tmp_path / "auth").mkdir()
    write_key_file(tmp_path / "auth" / "keys.toml", {"0" * 64: Principal("ops", frozenset({"admin"}))})
    TokenIssuer(tmp_path / "auth" / "jwks.json")
    text = PRODUCTION.read_text().replace(MOUNT, str(tmp_path))
    assert str(pki.server.cert) in text
    config_file = tmp_path / "tensorgate.toml"
    config_file.write_text(text)
    return load_config(config_file, environ={})


def test_production_config_turns_on_tls_and_auth(tmp_path: Path) -> None:
    config = production_config(tmp_path)
    assert config.tls.enabled and config.tls.ca_file is not None  # mTLS on the server's port
    assert config.gateway_tls.enabled and config.upstream_tls.enabled
    assert config.api_keys_file is not None and config.jwt.jwks_file is not None
    assert not config.allow_plaintext and config.host == "0.0.0.0"
    assert set(tomllib.loads(PRODUCTION.read_text())) <= set(ServerConfig.model_fields)


def test_envoy_accepts_the_rendered_production_config(tmp_path: Path) -> None:
    envoy_json = tmp_path / "envoy.json"
    envoy_json.write_text(render_envoy_config(production_config(tmp_path)))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(envoy_json), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
