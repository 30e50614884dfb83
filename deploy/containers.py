"""Build tensorgate's images and run the production stack in containers, with podman (or docker).

    python3 deploy/containers.py base                 # a local Debian bookworm base image, by debootstrap (root)
    python3 deploy/containers.py build [--local-base] # the server and Envoy images from deploy/docker/
    python3 deploy/containers.py up --models models   # two server replicas and Envoy, TLS and API keys
    python3 deploy/containers.py down

``up`` runs the shipped production configuration (deploy/config/tensorgate.toml) as Kubernetes does: the servers
speak mTLS only, Envoy terminates TLS on the gateway port, API keys (and JWTs, given a JWKS) authenticate, every
container runs with a read-only root filesystem (a tmpfs on /tmp, Kubernetes' emptyDir) as uid 10001 (Envoy as
101), the model repository is mounted read-only. The containers share the host's network, so each replica takes
its own ports (port + replica index, as ``tensorgate serve --replicas`` does) and Envoy dials 127.0.0.1.
Certificates (``tensorgate certs``), an API key with the predict and admin scopes (printed once) and Envoy's
configuration (``tensorgate envoy-config``) are made by the server image itself under the secrets directory, so
the host needs Python 3 and the container engine only. ``up`` is idempotent: run again, it starts the containers
that are not running (one an operator stopped or killed); a container that crashes is restarted by the engine
(``--restart always``).

Hosts where the engine may not raise a container's resource limits (a sandbox, some CI runners) need a
containers.conf with ``default_ulimits = []``: deploy/podman/containers.conf is used for podman unless
``CONTAINERS_CONF`` names another one.

Only the standard library: it runs with the host's ``python3`` before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PRODUCTION_CONFIG = ROOT / "deploy" / "config" / "tensorgate.toml"
PODMAN_CONF = ROOT / "deploy" / "podman" / "containers.conf"

LOCAL_BASE = "localhost/debian:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the Dockerfiles need of a base: python3 with venv (and CA certificates for pip's TLS).
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")

SERVER_IMAGE = f"localhost/tensorgate/server:{VERSION}"
ENVOY_IMAGE = f"localhost/tensorgate/envoy:{VERSION}"
DOCKERFILES = {SERVER_IMAGE: "deploy/docker/server.Dockerfile", ENVOY_IMAGE: "deploy/docker/envoy.Dockerfile"}

SERVER_USER = "10001:10001"
# Envoy's own uid, in the servers' group: the private keys are readable by the group (Kubernetes' fsGroup).
ENVOY_USER = "101:10001"
LABEL = "io.tensorgate.stack"
# Where the containers find their files (the paths of deploy/config/tensorgate.toml and the images).
CONFIG_PATH = "/etc/tensorgate/config/tensorgate.toml"
TLS_DIR = "/etc/tensorgate/tls"
AUTH_DIR = "/etc/tensorgate/auth"
MODELS_DIR = "/models"
ASSETS_DIR = "/etc/tensorgate/gateway"
# What the servers and Envoy read of `tensorgate certs`' output; the CA's key and the client's stay outside.
MOUNTED_TLS_FILES = ("ca.pem", "server.pem", "server-key.pem", "gateway.pem", "gateway-key.pem")


class ContainerError(RuntimeError):
    """A container command failed, or the stack did not become ready; the message says which and why."""


@dataclass(frozen=True)
class Engine:
    """The container engine's command line: podman (with its containers.conf) or docker."""

    program: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def detect(cls, program: str | None = None) -> Engine:
        """``program``, else ``TENSORGATE_CONTAINER_ENGINE``, else podman where installed, else docker."""
        program = (
            program
            or os.environ.get("TENSORGATE_CONTAINER_ENGINE")
            or ("podman" if shutil.which("podman") else "docker")
        )
        env = dict(os.environ)
        if Path(program).name == "podman":
            env.setdefault("CONTAINERS_CONF", str(PODMAN_CONF))
        return cls(program, env)

    def __call__(self, *args: str, stdin: bytes | None = None, timeout: float | None = None) -> str:
        """Run ``program *args``; its stdout. Raises ContainerError with its stderr when it fails."""
        result = subprocess.run(
            [self.program, *args], input=stdin, capture_output=True, env=self.env, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise ContainerError(f"{self.program} {' '.join(args[:2])} failed: {result.stderr.decode().strip()}")
        return result.stdout.decode()

    def image_exists(self, image: str) -> bool:
        try:
            self("image", "inspect", "--format", "{{.Id}}", image)
        except ContainerError:
            return False
        return True

    def state(self, container: str) -> str | None:
        """``running``, ``exited``, ... or None where there is no such container."""
        try:
            return self("container", "inspect", "--format", "{{.State.Status}}", container).strip()
        except ContainerError:
            return None

    def restarts(self, container: str) -> int:
        """How often the engine restarted ``container`` after it exited (0 where there is no such container)."""
        try:
            return int(self("container", "inspect", "--format", "{{.RestartCount}}", container))
        except ContainerError:
            return 0


# --- images ----------------------------------------------------------------------------------------------------------


def make_base(engine: Engine, mirror: str = DEBIAN_MIRROR, force: bool = False) -> str:
    """``localhost/debian:bookworm``: a minimal Debian bookworm with python3 and python3-venv, made by debootstrap
    (as root) and imported, for hosts that reach Debian's mirror and PyPI but no image registry."""
    if engine.image_exists(LOCAL_BASE) and not force:
        return LOCAL_BASE
    if not shutil.which("debootstrap"):
        raise ContainerError("debootstrap is not installed (Debian: apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="tensorgate-rootfs-") as rootfs:
        include = ",".join(BASE_PACKAGES)
        command = ["debootstrap", "--variant=minbase", f"--include={include}", "bookworm", rootfs, mirror]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ContainerError(f"debootstrap failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
        # Package lists and downloaded .debs are the build's, not the image's.
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (Path(rootfs) / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.run(["tar", "-C", rootfs, "-c", "."], capture_output=True, check=True).stdout
        engine("import", "-", LOCAL_BASE, stdin=tar)
    return LOCAL_BASE


def ca_bundle() -> Path | None:
    """The CA bundle pip is told to trust on this host (a TLS-intercepting proxy's), passed to builds as a secret."""
    for variable in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(variable)
        if value and Path(value).is_file():
            return Path(value)
    return None


def build_images(engine: Engine, base_image: str | None = None, ca: Path | None = None) -> list[str]:
    """The server and Envoy images from deploy/docker/ (``base_image`` as BASE_IMAGE, else the Dockerfile's)."""
    for image, dockerfile in DOCKERFILES.items():
        args = ["build", "--network", "host", "-f", str(ROOT / dockerfile), "-t", image]
        if base_image:
            args += ["--build-arg", f"BASE_IMAGE={base_image}"]
        if ca:
            args += ["--secret", f"id=ca,src={ca}"]
        engine(*args, str(ROOT))
    return list(DOCKERFILES)


# --- the stack -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ports:
    """The host ports of the stack; server replica i takes each server port + i."""

    gateway: int = 8443
    admin: int = 9901
    grpc: int = 8500
    rest: int = 8000
    metrics: int = 8502
    health: int = 8510


@dataclass(frozen=True)
class Secrets:
    """What ``up`` makes once under the secrets directory: ``pki/`` (every file of ``tensorgate certs``, the CA's
    key and the client certificate included), ``tls/`` (the files the containers mount), ``auth/keys.toml`` and
    the JWKS ``auth/jwks.json`` when one was given."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def auth(self) -> Path:
        return self.root / "auth"

    @property
    def jwks(self) -> Path:
        return self.auth / "jwks.json"

    @property
    def envoy_config(self) -> Path:
        return self.root / "envoy.json"


@dataclass(frozen=True)
class Stack:
    """Two (``replicas``) tensorgate servers and Envoy in containers named ``<name>-server-<i>``, ``<name>-envoy``."""

    engine: Engine
    models: Path
    secrets: Secrets
    name: str = "tensorgate"
    ports: Ports = Ports()
    replicas: int = 2
    server_image: str = SERVER_IMAGE
    envoy_image: str = ENVOY_IMAGE

    def server(self, index: int) -> str:
        return f"{self.name}-server-{index}"

    @property
    def envoy(self) -> str:
        return f"{self.name}-envoy"

    @property
    def containers(self) -> list[str]:
        return [self.server(i) for i in range(self.replicas)] + [self.envoy]

    # --- up ---

    def up(self, timeout_s: float = 300) -> str | None:
        """Make what is missing (secrets, Envoy's configuration), start every container that is not running, and
        wait until Envoy reports every replica healthy. The API key, when this call made it (else None)."""
        key = self.prepare_secrets()
        self.render_envoy_config()
        for index in range(self.replicas):
            self.start(self.server(index), self.server_run_args(index))
        self.start(self.envoy, self.envoy_run_args())
        self.wait_ready(timeout_s)
        return key

    def start(self, container: str, run_args: list[str]) -> None:
        state = self.engine.state(container)
        if state == "running":
            return
        if state is None:
            self.engine("run", "--detach", "--name", container, *run_args)
        else:
            self.engine("start", container)

    def common_run_args(self) -> list[str]:
        """What every container of the stack gets: the host's network, a read-only root with a tmpfs /tmp,
        no privileges, restarted when it crashes, the stack's label."""
        return [
            "--label",
            f"{LABEL}={self.name}",
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,size=1g",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--restart",
            "always",
            "--volume",
            f"{self.secrets.tls}:{TLS_DIR}:ro",
            "--volume",
            f"{self.secrets.auth}:{AUTH_DIR}:ro",
        ]

    def server_flags(self, index: int) -> list[str]:
        """The serve flags of replica ``index`` over the production configuration: its ports, and what this
        stack has not got (an OpenTelemetry collector; a JWKS unless one was given)."""
        ports = self.ports
        flags = ["--no-gateway", "--config", CONFIG_PATH, "--no-allow-plaintext"]
        flags += ["--port", str(ports.grpc + index), "--rest-port", str(ports.rest + index)]
        flags += ["--metrics-port", str(ports.metrics + index), "--health-port", str(ports.health + index)]
        flags += ["--tfserving-rest-port", "0", "--tracing-endpoint", ""]
        if not self.secrets.jwks.is_file():
            flags += ["--jwt-jwks-file", ""]
        return flags

    def server_run_args(self, index: int) -> list[str]:
        return [
            *self.common_run_args(),
            "--user",
            SERVER_USER,
            "--volume",
            f"{PRODUCTION_CONFIG}:{CONFIG_PATH}:ro",
            "--volume",
            f"{self.models.resolve()}:{MODELS_DIR}:ro",
            # Envoy drops a replica at its first NOT_SERVING health answer (checked each second): 2 s covers it.
            "--env",
            "TENSORGATE_DRAIN_DELAY_S=2",
            # More than drain_delay_s + shutdown_grace_s (2 + 30): a stop never cuts a drain short.
            "--stop-timeout",
            "40",
            self.server_image,
            *self.server_flags(index),
        ]

    def envoy_run_args(self) -> list[str]:
        return [
            *self.common_run_args(),
            "--user",
            ENVOY_USER,
            "--volume",
            f"{self.secrets.envoy_config}:/etc/envoy/envoy.json:ro",
            self.envoy_image,
        ]

    def tensorgate(self, *args: str, mounts: Sequence[str] = ()) -> str:
        """Run a ``tensorgate`` command in a throwaway server container, as its user; its stdout."""
        volumes = [arg for mount in mounts for arg in ("--volume", mount)]
        return self.engine(
            "run", "--rm", "--network", "none", "--user", SERVER_USER, *volumes, "--entrypoint", "tensorgate",
            self.server_image, *args,
        )  # fmt: skip

    def prepare_secrets(self) -> str | None:
        """Certificates for localhost (the names Envoy dials and callers here use) and an API key with the predict
        and admin scopes, made once; owned by uid 10001 and readable by its group only, as a Kubernetes Secret
        with fsGroup. The key when this call made it."""
        secrets = self.secrets
        for directory in (secrets.pki, secrets.tls, secrets.auth):
            directory.mkdir(parents=True, exist_ok=True)
        made_key = None
        if not (secrets.pki / "ca.pem").is_file():
            self.own(secrets.pki)  # writable by uid 10001, which `tensorgate certs` runs as
            self.tensorgate("certs", "--out", "/pki", "--hosts", "localhost,127.0.0.1", mounts=[f"{secrets.pki}:/pki"])
        if not (secrets.auth / "keys.toml").is_file():
            self.own(secrets.auth)
            output = self.tensorgate(
                "keys", "add", "admin", "--scopes", "predict,admin", "--file", f"{AUTH_DIR}/keys.toml",
                mounts=[f"{secrets.auth}:{AUTH_DIR}"],
            )  # fmt: skip
            made_key = output.strip().splitlines()[-1]
        missing = [name for name in MOUNTED_TLS_FILES if not (secrets.tls / name).is_file()]
        for name in missing:
            shutil.copy2(secrets.pki / name, secrets.tls / name)
        if missing or made_key:  # the copies are root's, a JWKS given with the key may be too
            self.own(secrets.tls, secrets.auth)
        return made_key

    def own(self, *directories: Path) -> None:
        """Give ``directories`` to uid/gid 10001, files group-readable (keys) or world-readable (certificates),
        from a container as root: the same for rootful and rootless engines, whose uid 10001 differ on the host."""
        mounts = [f"{directory}:/own/{i}" for i, directory in enumerate(directories)]
        script = (
            "chown -R 10001:10001 /own && chmod -R u=rwX,g=rX,o= /own"
            " && find /own -name '*.pem' ! -name '*-key.pem' -exec chmod o+r {} +"
            # The certificates stay reachable for the host's user where the engine maps uid 10001 elsewhere.
            " && chmod o+x /own/*"
        )
        volumes = [arg for mount in mounts for arg in ("--volume", mount)]
        self.engine("run", "--rm", "--network", "none", "--user", "0", *volumes, "--entrypoint", "sh",
                    self.server_image, "-c", script)  # fmt: skip

    def render_envoy_config(self) -> None:
        """Envoy's configuration from the servers' own: ``tensorgate envoy-config`` with the same file and flags,
        the replicas on 127.0.0.1 at port + i, the admin port on loopback (it can change Envoy's state)."""
        flags = [flag for flag in self.server_flags(0) if flag != "--no-gateway"]
        mounts = [f"{PRODUCTION_CONFIG}:{CONFIG_PATH}:ro", f"{self.secrets.tls}:{TLS_DIR}:ro",
                  f"{self.secrets.auth}:{AUTH_DIR}:ro"]  # fmt: skip
        rendered = self.tensorgate(
            "envoy-config", *flags, "--assets-dir", ASSETS_DIR, "--replicas", str(self.replicas),
            "--gateway-port", str(self.ports.gateway), "--gateway-admin-port", str(self.ports.admin),
            "--gateway-admin-host", "127.0.0.1", mounts=mounts,
        )  # fmt: skip
        self.secrets.envoy_config.write_text(rendered)
        self.secrets.envoy_config.chmod(0o644)

    def wait_ready(self, timeout_s: float) -> None:
        """Until Envoy is ready and reports every replica healthy in its gRPC and REST clusters."""
        deadline = time.monotonic() + timeout_s
        last = "no answer from Envoy's admin port"
        restarts = {container: self.engine.restarts(container) for container in self.containers}
        while time.monotonic() < deadline:
            for container in self.containers:
                # One that exited, or that the engine had to restart since: it will not come up by waiting.
                if self.engine.state(container) != "running" or self.engine.restarts(container) > restarts[container]:
                    logs = self.logs(container)[-3000:]
                    raise ContainerError(f"{container} exited: {logs}")
            try:
                healthy = self.healthy_replicas()
            except (OSError, ValueError) as exc:
                last = str(exc)
            else:
                if all(len(hosts) == self.replicas for hosts in healthy.values()):
                    return
                last = f"healthy replicas: {healthy}"
            time.sleep(0.5)
        raise ContainerError(f"the stack {self.name} was not ready in {timeout_s:.0f} s ({last})")

    def healthy_replicas(self) -> dict[str, list[str]]:
        """The healthy server endpoints of each of Envoy's server clusters, by Envoy's admin ``/clusters``."""
        url = f"http://127.0.0.1:{self.ports.admin}/clusters?format=json"
        with urllib.request.urlopen(url, timeout=2) as answer:
            statuses = json.load(answer)["cluster_statuses"]
        healthy: dict[str, list[str]] = {}
        for cluster in statuses:
            hosts = cluster.get("host_statuses", [])
            if not any(host["address"]["socket_address"]["port_value"] in self.server_ports() for host in hosts):
                continue
            healthy[cluster["name"]] = [
                f"{host['address']['socket_address']['port_value']}"
                for host in hosts
                if host["health_status"].get("eds_health_status") == "HEALTHY"
                and not host["health_status"].get("failed_active_health_check")
                and not host["health_status"].get("failed_outlier_check")
            ]
        if not healthy:
            raise ValueError("Envoy has no server cluster yet")
        return healthy

    def server_ports(self) -> set[int]:
        return {base + i for base in (self.ports.grpc, self.ports.rest) for i in range(self.replicas)}

    # --- operations ---

    def logs(self, container: str) -> str:
        try:
            result = subprocess.run(
                [self.engine.program, "logs", container],
                capture_output=True,
                text=True,
                env=self.engine.env,
                check=False,
            )
        except OSError as exc:
            return str(exc)
        return result.stdout + result.stderr

    def down(self) -> None:
        """Stop (SIGTERM, then the stop timeout) and remove every container of the stack."""
        for container in reversed(self.containers):
            if self.engine.state(container) is not None:
                self.engine("stop", "-t", "45", container, timeout=60)
                self.engine("rm", "--force", container)


# --- command line ----------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/containers.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", help="podman or docker (default: podman where installed)")
    commands = parser.add_subparsers(dest="command", required=True)
    base = commands.add_parser("base", help=f"make {LOCAL_BASE} with debootstrap (as root)")
    base.add_argument("--mirror", default=DEBIAN_MIRROR)
    base.add_argument("--force", action="store_true", help="make it again even if it exists")
    build = commands.add_parser("build", help="build the server and Envoy images")
    build.add_argument("--base-image", help="BASE_IMAGE of the Dockerfiles (default: their pinned public image)")
    build.add_argument("--local-base", action="store_true", help=f"make and use {LOCAL_BASE}")
    for name, text in (("up", "start the stack (idempotent)"), ("down", "stop and remove the stack")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--name", default="tensorgate", help="prefix of the container names")
        command.add_argument("--replicas", type=int, default=2)
        command.add_argument("--models", type=Path, default=Path("models"), help="model repository (mounted ro)")
        command.add_argument("--secrets", type=Path, default=Path.home() / ".tensorgate" / "containers",
                             help="certificates, API keys, Envoy's configuration (made once)")  # fmt: skip
        command.add_argument("--jwks", type=Path, help="your identity provider's JWKS (default: JWTs off)")
        for port in fields(Ports):
            command.add_argument(f"--{port.name}-port", type=int, default=port.default)
    args = parser.parse_args(argv)
    engine = Engine.detect(args.engine)
    if args.command == "base":
        print(make_base(engine, args.mirror, args.force))
    elif args.command == "build":
        base_image = make_base(engine) if args.local_base else args.base_image
        print("\n".join(build_images(engine, base_image, ca_bundle())))
    else:
        ports = Ports(**{port.name: getattr(args, f"{port.name}_port") for port in fields(Ports)})
        secrets = Secrets(args.secrets.resolve())
        stack = Stack(engine, args.models, secrets, args.name, ports, args.replicas)
        if args.command == "down":
            stack.down()
            return 0
        if args.jwks:
            secrets.auth.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.jwks, secrets.jwks)
        key = stack.up()
        print(f"gateway https://localhost:{ports.gateway} (CA {secrets.tls / 'ca.pem'})")
        if key:
            print(f"API key (shown once; x-api-key header): {key}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ContainerError as error:
        sys.exit(f"error: {error}")
