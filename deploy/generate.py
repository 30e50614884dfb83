"""Regenerate (or check) the deployment files derived from the production configuration.

    .venv/bin/python deploy/generate.py          # rewrite them
    .venv/bin/python deploy/generate.py --check  # exit 1 when one differs from what its sources give (a test runs it)

It needs the project installed (the ``tensorgate`` command renders Envoy's configuration) and PyYAML (dev extra).

Outputs (Envoy's configurations rendered by the real ``tensorgate envoy-config`` command):

- ``deploy/kubernetes/server-configmap.yaml``: that file plus the Kubernetes settings (health port, drain delay),
  as the ConfigMap the server pods mount.
- ``deploy/envoy/envoy.json``: the Envoy configuration for Kubernetes (upstream: the headless Service
  ``tensorgate-server``, which DNS resolves to every ready server pod), and the ConfigMap
  ``deploy/kubernetes/envoy-configmap.yaml`` holding it. The Envoy image bakes the same file in.
- ``deploy/envoy/envoy-compose.json``: the same for ``deploy/compose.yaml`` (upstream: the compose service
  ``server``, which Docker's DNS resolves to every replica).

Envoy's configurations are JSON, which has no comments: ``deploy/envoy/README.md`` says where they come from.
- ``deploy/kubernetes/otel-collector-configmap.yaml``: ``deploy/compose/otel-collector.yaml`` as a ConfigMap.

Each Envoy configuration is rendered from the configuration file the servers of that deployment read, with the
``TENSORGATE_*`` environment their container gets (``deploy/compose.yaml``, the server Deployment), so that Envoy
and the servers always agree on ports, TLS files, limits and the tracing collector.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PRODUCTION = DEPLOY / "config" / "tensorgate.toml"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
SERVER_DEPLOYMENT = KUBERNETES / "server-deployment.yaml"
OTEL_COLLECTOR = DEPLOY / "compose" / "otel-collector.yaml"
NAMESPACE = "tensorgate"
MOUNT = "/etc/tensorgate"  # where containers find certificates, keys and the JWKS (Secrets, bind mounts)
ASSETS_DIR = f"{MOUNT}/gateway"  # where envoy.Dockerfile copies the descriptor set, openapi.json and docs/
K8S_UPSTREAM = f"tensorgate-server.{NAMESPACE}.svc.cluster.local:8500"
COMPOSE_UPSTREAM = "server:8500"
ENV_PREFIX = "TENSORGATE_"
# Top-level keys the Kubernetes servers add to the production configuration.
K8S_SETTINGS = """\
# Kubernetes (added by deploy/generate.py): kubelet's gRPC probes use the plaintext health port, since the
# main port is mTLS; on SIGTERM a server reports NOT_SERVING for drain_delay_s before it refuses calls, so that
# Envoy's health checks and DNS answers leave the pod before its port closes.
health_port = 8510
drain_delay_s = 5
"""


@dataclass(frozen=True)
class EnvoyVariant:
    output: Path
    config_text: str  # the TOML file the servers of this deployment read
    environ: dict[str, str]  # the TENSORGATE_* variables of their container
    upstream: str


def server_configmap_toml() -> str:
    """The production configuration with K8S_SETTINGS among its top-level keys: before the first table (and the
    comment lines right above it), since a key after a table header would belong to that table."""
    lines = PRODUCTION.read_text().splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.startswith("[")), len(lines))
    while at > 0 and lines[at - 1].startswith("#"):
        at -= 1
    head = "".join(lines[:at]).rstrip("\n") + "\n\n"
    return head + K8S_SETTINGS + ("\n" + "".join(lines[at:]) if at < len(lines) else "")


def compose_environment() -> dict[str, str]:
    environment = yaml.safe_load(COMPOSE.read_text())["services"]["server"].get("environment", {})
    return {str(key): str(value) for key, value in environment.items() if str(key).startswith(ENV_PREFIX)}


def deployment_environment() -> dict[str, str]:
    deployment = yaml.safe_load(SERVER_DEPLOYMENT.read_text())
    (container,) = (c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server")
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if e["name"].startswith(ENV_PREFIX)}


def render_envoy(variant: EnvoyVariant) -> str:
    """``tensorgate envoy-config`` for a configuration whose files live under MOUNT in the containers.

    The command validates the configuration as ``serve`` would, and TlsConfig insists that certificate files exist:
    they do in the containers, not here. So the files under MOUNT that the configuration names are stood in for
    by empty placeholders in a temporary directory (rendering only writes their paths into the JSON, it never
    reads them), the configuration is given that directory instead of MOUNT, and the output maps it back. This
    keeps the real command and every validation rule in the loop, which building an unvalidated ServerConfig
    (``model_construct``) would skip.
    """
    with tempfile.TemporaryDirectory() as tmp:
        stand_in = Path(tmp).resolve()
        texts = [variant.config_text, *variant.environ.values()]
        for mounted in sorted({m for text in texts for m in re.findall(rf"{re.escape(MOUNT)}/[^\"'\s]+", text)}):
            placeholder = stand_in / Path(mounted).relative_to(MOUNT)
            placeholder.parent.mkdir(parents=True, exist_ok=True)
            placeholder.touch()
        config_file = stand_in / "tensorgate.toml"
        config_file.write_text(variant.config_text.replace(MOUNT, str(stand_in)))
        # Only the deployment's own TENSORGATE_* variables: none of the caller's shell may leak into the output.
        environ = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
        environ |= {key: value.replace(MOUNT, str(stand_in)) for key, value in variant.environ.items()}
        command = [sys.executable, "-m", "tensorgate.server.commands", "envoy-config", "--config", str(config_file)]
        command += ["--assets-dir", ASSETS_DIR, "--gateway-upstream", variant.upstream]
        result = subprocess.run(command, capture_output=True, text=True, env=environ, cwd=ROOT)
        if result.returncode != 0:
            raise SystemExit(f"tensorgate envoy-config failed:\n{result.stderr}")
        # Paths are inside JSON strings: the stand-in as JSON writes it (MOUNT needs no escaping).
        return result.stdout.replace(json.dumps(str(stand_in))[1:-1], MOUNT)


def config_map(name: str, component: str, key: str, text: str, source: str) -> str:
    """A ConfigMap holding ``text`` under ``key`` as a YAML literal block, checked to read back unchanged."""
    manifest = textwrap.dedent(
        f"""\
        # Generated by deploy/generate.py from {source}: do not edit.
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: {name}
          namespace: {NAMESPACE}
          labels:
            app.kubernetes.io/name: tensorgate
            app.kubernetes.io/component: {component}
        data:
          {key}: |
        """
    ) + textwrap.indent(text, "    ")
    if yaml.safe_load(manifest)["data"][key] != text:  # e.g. trailing spaces a literal block cannot keep
        raise SystemExit(f"{source} does not survive a YAML literal block; fix the text")
    return manifest


def generate() -> dict[Path, str]:
    """Every output path and its content."""
    server_toml = server_configmap_toml()
    k8s = EnvoyVariant(DEPLOY / "envoy" / "envoy.json", server_toml, deployment_environment(), K8S_UPSTREAM)
    compose = EnvoyVariant(
        DEPLOY / "envoy" / "envoy-compose.json", PRODUCTION.read_text(), compose_environment(), COMPOSE_UPSTREAM
    )
    outputs = {variant.output: render_envoy(variant) for variant in (k8s, compose)}
    outputs[KUBERNETES / "server-configmap.yaml"] = config_map(
        "tensorgate-server", "server", "tensorgate.toml", server_toml, "deploy/config/tensorgate.toml"
    )
    outputs[KUBERNETES / "envoy-configmap.yaml"] = config_map(
        "tensorgate-envoy", "gateway", "envoy.json", outputs[k8s.output], "deploy/envoy/envoy.json"
    )
    collector = OTEL_COLLECTOR.read_text()
    outputs[KUBERNETES / "otel-collector-configmap.yaml"] = config_map(
        "otel-collector", "otel-collector", "config.yaml", collector, "deploy/compose/otel-collector.yaml"
    )
    return outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    outputs = generate()
    if args.check:
        stale = sorted(
            str(p.relative_to(ROOT)) for p, text in outputs.items() if not p.is_file() or p.read_text() != text
        )
        if stale:
            print("deployment files differ from their sources; run `python deploy/generate.py`:", *stale, sep="\n  ")
            return 1
        print("deployment files are up to date")
        return 0
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
