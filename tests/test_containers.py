"""The images built from deploy/docker/ on a local Debian bookworm base, and the production stack run in containers
by deploy/containers.py with podman: what users deploy, not the processes the other tests start.

The images are built once per run (podman's layer cache and pip's cache mount make a rebuild of unchanged
sources take seconds; the first build downloads TensorFlow). Skipped, saying why, only where podman cannot run
(not installed, not root for debootstrap, or refused by the host); `make system-packages` installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from tensorgate.clients.client import ClientTls, TensorgateClient
from tensorgate.clients.datasets import MnistData
from tensorgate.v1.model_service_pb2 import ModelVersionState

from conftest import mnist_inputs, scrape
from jwt_tokens import TokenIssuer
from support.load import Load
from support.processes import free_port_block
from support.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
ISSUER = "https://login.example.com/"  # deploy/config/tensorgate.toml's jwt.issuer


containers = load_script(ROOT / "deploy" / "containers.py", "deploy_containers")


def why_podman_cannot_run() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (Debian: apt-get install podman runc debootstrap; make system-packages)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (it makes the local base image)"
    if os.geteuid() != 0:
        return "debootstrap and rootful podman need root here"
    try:
        containers.Engine.detect("podman")("info", timeout=60)
    except (containers.ContainerError, subprocess.TimeoutExpired) as exc:
        return f"podman cannot run on this host: {exc}"
    return None


REASON = why_podman_cannot_run()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(scope="module")
def engine() -> containers.Engine:
    return containers.Engine.detect("podman")


@pytest.fixture(scope="module")
def images(engine: containers.Engine) -> list[str]:
    """The server and Envoy images, built from the repository's Dockerfiles on the local Debian base."""
    base = containers.make_base(engine)
    return containers.build_images(engine, base, containers.ca_bundle())


def run(engine: containers.Engine, image: str, *args: str, entrypoint: str | None = None) -> str:
    """A throwaway container as Kubernetes runs one: read-only root, no capabilities, no network."""
    options = ["--rm", "--read-only", "--cap-drop", "ALL", "--network", "none"]
    if entrypoint:
        options += ["--entrypoint", entrypoint]
    return engine("run", *options, image, *args, timeout=120)


def test_the_images_run_as_their_unprivileged_users_on_a_read_only_root(
    engine: containers.Engine, images: list[str]
) -> None:
    server, envoy = containers.SERVER_IMAGE, containers.ENVOY_IMAGE
    assert images == [server, envoy]
    assert run(engine, server, "--version", entrypoint="tensorgate").strip() == f"tensorgate {containers.VERSION}"
    help_text = run(engine, server, "--help")  # the image's entrypoint is `tensorgate serve`
    assert "--model-repository" in help_text and "--no-gateway" in help_text
    assert json.loads(engine("image", "inspect", "--format", "{{json .Config.Entrypoint}}", server)) == [
        "tensorgate",
        "serve",
    ]
    for image, user in ((server, "10001:10001"), (envoy, "101:101")):
        assert engine("image", "inspect", "--format", "{{.Config.User}}", image).strip() == user
        ids = run(engine, image, "-c", "id -u; id -g; touch /probe 2>&1 || true", entrypoint="sh").split("\n")
        assert ids[:2] == user.split(":") and "Read-only file system" in ids[2], ids
    assert "1.40.0" in run(engine, envoy, "--version", entrypoint="envoy")
    # The build's CA secret never reaches an image (looked for in the image's own /run, no tmpfs over it).
    for image in (server, envoy):
        probe = "test -e /run/secrets/ca && echo present || echo absent"
        assert engine("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", probe).strip() == "absent"


# --- the stack -------------------------------------------------------------------------------------------------------


@dataclass
class RunningStack:
    stack: containers.Stack
    key: str
    issuer: TokenIssuer
    models: Path

    @property
    def ca(self) -> Path:
        return self.stack.secrets.tls / "ca.pem"

    @property
    def gateway(self) -> str:
        return f"localhost:{self.stack.ports.gateway}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def channel(self) -> grpc.Channel:
        return grpc.secure_channel(self.gateway, grpc.ssl_channel_credentials(self.ca.read_bytes()))

    def client(self, **auth: str) -> TensorgateClient:
        return TensorgateClient(self.gateway, tls=ClientTls(self.ca), **auth)

    def load(self, channel: grpc.Channel) -> Load:
        """Steady load through Envoy at half the API key's rate limit (200/s in deploy/config/tensorgate.toml)."""
        return Load(channel, f"https://{self.gateway}", {"x-api-key": self.key}, self.ssl_context(), rate_per_s=100)

    def replica_client(self, index: int) -> TensorgateClient:
        """Straight to replica ``index``'s gRPC port: mTLS with the client certificate `tensorgate certs` made."""
        pki = self.stack.secrets.pki
        tls = ClientTls(pki / "ca.pem", pki / "client.pem", pki / "client-key.pem")
        return TensorgateClient(f"localhost:{self.stack.ports.grpc + index}", tls=tls, api_key=self.key)

    def examples(self, index: int, version: str) -> float:
        """Replica ``index``'s count of mnist examples answered by ``version``, from its /metrics."""
        samples = scrape(f"http://127.0.0.1:{self.stack.ports.metrics + index}/metrics")
        return samples.get(
            ("tensorgate_model_examples_total", frozenset({"model": "mnist", "version": version}.items())), 0.0
        )


def stack_ports() -> containers.Ports:
    first = free_port_block(10)
    return containers.Ports(
        gateway=first, admin=first + 1, grpc=first + 2, rest=first + 4, metrics=first + 6, health=first + 8
    )


@pytest.fixture(scope="module")
def running(
    engine: containers.Engine, images: list[str], repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    models = tmp_path_factory.mktemp("container-models")
    models.chmod(0o755)  # mounted as /models, read by uid 10001 (pytest makes its directories 0700)
    shutil.copytree(repository / "mnist" / "1", models / "mnist" / "1")
    secrets = containers.Secrets(tmp_path_factory.mktemp("container-secrets"))
    secrets.auth.mkdir()
    issuer = TokenIssuer(secrets.jwks)
    stack = containers.Stack(engine, models, secrets, name=f"tgtest-{os.getpid()}", ports=stack_ports())
    try:
        key = stack.up(timeout_s=240)
        assert key is not None and key.startswith("tg_")
        yield RunningStack(stack, key, issuer, models)
    finally:
        stack.down()


def test_the_stack_answers_grpc_and_rest_through_envoy_with_tls_and_keys(
    running: RunningStack, mnist: MnistData
) -> None:
    images = mnist_inputs(mnist.x_test[:64])
    with running.client(api_key=running.key) as client:
        classes = client.predict("mnist", images).argmax(axis=1)
    assert (classes == mnist.y_test[:64]).mean() > 0.9
    token = running.issuer.token(issuer=ISSUER)
    with running.client(token=token) as client:  # a JWT of the configured issuer, checked by Envoy and the server
        assert (client.predict("mnist", images).argmax(axis=1) == classes).all()
    with running.client() as client, pytest.raises(grpc.RpcError) as refused:
        client.predict("mnist", images[:1])
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    body = json.dumps({"inputs": {"keras_tensor": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 28, 28],
                                                   "floatValues": images[0].ravel().tolist()}}}).encode()  # fmt: skip
    request = urllib.request.Request(
        f"https://{running.gateway}/v1/models/mnist:predict", data=body, headers={"x-api-key": running.key}
    )
    with urllib.request.urlopen(request, timeout=30, context=running.ssl_context()) as answer:
        scores = json.loads(answer.read())["outputs"]["output_0"]["floatValues"]
    assert int(np.argmax(scores)) == classes[0]
    infer = {"inputs": [{"name": "keras_tensor", "datatype": "FP32", "shape": [1, 28, 28],
                         "data": images[0].ravel().tolist()}]}  # fmt: skip
    request = urllib.request.Request(
        f"https://{running.gateway}/v2/models/mnist/infer",
        data=json.dumps(infer).encode(),
        headers={"x-api-key": running.key, "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30, context=running.ssl_context()) as answer:
        assert int(np.argmax(json.loads(answer.read())["outputs"][0]["data"])) == classes[0]
    # Each replica's /metrics, and Envoy's statistics on its (loopback) admin port.
    answered = sum(running.examples(i, "1") for i in range(2))
    assert answered >= 64 * 2 + 2
    with urllib.request.urlopen(f"http://127.0.0.1:{running.stack.ports.admin}/stats/prometheus", timeout=5) as stats:
        assert "envoy_cluster_upstream_rq" in stats.read().decode()


def test_the_replica_ports_speak_mtls_only(running: RunningStack) -> None:
    target = f"localhost:{running.stack.ports.grpc}"
    with running.replica_client(0) as client:
        assert [model.name for model in client.list_models(timeout_s=10)] == ["mnist"]
    # In plaintext, or over TLS without a client certificate: refused at the handshake.
    for tls in (None, ClientTls(running.ca)):
        with TensorgateClient(target, api_key=running.key, tls=tls) as client, pytest.raises(grpc.RpcError) as refused:
            client.list_models(timeout_s=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, tls


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def replica_down(stack: containers.Stack, index: int) -> Callable[[], bool]:
    port = str(stack.ports.grpc + index)
    return lambda: port not in stack.healthy_replicas().get("tensorgate_grpc", [])


def all_healthy(stack: containers.Stack) -> bool:
    try:
        return all(len(hosts) == stack.replicas for hosts in stack.healthy_replicas().values())
    except (OSError, ValueError):
        return False


def test_killed_stopped_and_crashed_replicas_come_back_without_a_failed_request(
    running: RunningStack, engine: containers.Engine
) -> None:
    stack = running.stack
    channel = running.channel()
    load = running.load(channel)
    try:
        wait_for(lambda: load.outcomes["OK"] > 20, "the load to get answers")
        # podman kill (SIGKILL): Envoy retries the calls it held on the other replica; `up` starts it again.
        took: dict[str, float] = {}
        started = time.monotonic()
        engine("kill", stack.server(0))
        wait_for(replica_down(stack, 0), "Envoy to drop the killed replica")
        stack.up(timeout_s=180)
        took["kill"] = time.monotonic() - started
        # podman stop (SIGTERM, then the stop timeout): the replica drains, and `up` starts it again.
        started = time.monotonic()
        engine("stop", stack.server(1), timeout=60)
        assert engine.state(stack.server(1)) == "exited"
        stack.up(timeout_s=180)
        took["stop"] = time.monotonic() - started
        # A crash (the server's process killed from the host, not by the engine): the restart policy brings it back.
        started = time.monotonic()
        restarts = engine.restarts(stack.server(0))
        pid = int(engine("container", "inspect", "--format", "{{.State.Pid}}", stack.server(0)))
        os.kill(pid, signal.SIGKILL)
        wait_for(replica_down(stack, 0), "Envoy to drop the crashed replica")
        wait_for(lambda: engine.restarts(stack.server(0)) > restarts, "the engine to restart the crashed replica")
        wait_for(lambda: all_healthy(stack), "both replicas healthy again")
        took["crash"] = time.monotonic() - started
        before = [running.examples(i, "1") for i in range(2)]
        answered = load.outcomes["OK"]
        wait_for(lambda: load.outcomes["OK"] > answered + 200, "answers with both replicas back")
        after = [running.examples(i, "1") for i in range(2)]
    finally:
        outcomes = load.stop()
        channel.close()
    print(f"outcomes {dict(outcomes)}; back in (s) {took}; examples per replica, last phase {before} -> {after}")
    assert outcomes["OK"] > 100
    assert load.failed() == {}, dict(outcomes)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)  # traffic spreads over both


def test_a_version_copied_into_the_mounted_repository_is_served_by_every_replica(running: RunningStack) -> None:
    channel = running.channel()
    load = running.load(channel)
    try:
        wait_for(lambda: load.outcomes["OK"] > 20, "the load to get answers")
        # Built aside (a hidden directory is never scanned) and renamed into place, as `tensorgate train` writes.
        incoming = running.models / "mnist" / ".incoming-2"
        shutil.copytree(running.models / "mnist" / "1", incoming)
        incoming.rename(running.models / "mnist" / "2")
        wait_for(lambda: all(running.examples(i, "2") > 0 for i in range(2)), "every replica to answer with v2")
        for index in range(2):
            with running.replica_client(index) as client:
                states = {v.version: ModelVersionState.Name(v.state) for v in client.model_status("mnist").versions}
            assert states.get("2") == "MODEL_VERSION_STATE_AVAILABLE", (index, states)
        settled = load.outcomes["OK"]
        wait_for(lambda: load.outcomes["OK"] > settled + 20, "answers after the rollout")
    finally:
        outcomes = load.stop()
        channel.close()
    assert load.failed() == {}, dict(outcomes)


def test_a_single_container_serves_a_mounted_repository_as_docker_run_does(
    engine: containers.Engine, images: list[str], repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """README's `docker run -p 8500:8500 -p 8080:8080 -v $PWD/models:/models IMAGE`: gRPC, and REST through the
    Envoy the server starts beside itself, with the image's own environment (plaintext, every mounted model)."""
    models = tmp_path_factory.mktemp("single-models")
    models.chmod(0o755)
    shutil.copytree(repository / "mnist" / "1", models / "mnist" / "1")
    grpc_port, gateway_port = free_port_block(1), free_port_block(1)
    name = f"tgtest-single-{os.getpid()}"
    # The README's command as it is, on this host's loopback: the image's own ports, network and environment.
    engine(
        "run", "--detach", "--name", name, "--publish", f"127.0.0.1:{grpc_port}:8500",
        "--publish", f"127.0.0.1:{gateway_port}:8080", "--volume", f"{models}:/models:ro", containers.SERVER_IMAGE,
    )  # fmt: skip
    try:
        with TensorgateClient(f"127.0.0.1:{grpc_port}") as client:
            wait_for(lambda: ready(client), "the container to serve mnist", timeout_s=120)
            assert client.predict("mnist", np.zeros((1, 28, 28), np.float32)).shape == (1, 10)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{gateway_port}/v1/models"), "Envoy in the container")
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway_port}/v1/models", timeout=5) as answer:
            assert "mnist" in answer.read().decode()
    finally:
        logs = subprocess.run([engine.program, "logs", name], capture_output=True, text=True, env=engine.env).stderr
        engine("rm", "--force", name)
    assert "plaintext on a non-loopback address" in logs


def ready(client: TensorgateClient) -> bool:
    try:
        return client.model_ready("mnist", timeout_s=2)
    except grpc.RpcError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False
