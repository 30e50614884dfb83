"""Shared fixtures: a model repository built for real (MNIST trained by the `train` command, a
second multi-input model, a broken version) and a real server process on a free loopback port."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tensorgate.clients.client import ClientTls, TensorgateClient
from tensorgate.clients.datasets import MnistData, load_mnist

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "tensorgate.server.commands"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports, below the kernel's ephemeral range (32768 and up), so that
    no outgoing connection takes one of them between now and the server binding it."""
    rng = random.Random()
    while True:
        first = rng.randrange(20000, 32000 - count)
        try:
            for port in range(first, first + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first


def build_scorer_model(path: Path) -> None:
    """A non-MNIST SavedModel: three inputs of other dtypes and shapes, four outputs."""
    import tensorflow as tf

    class Scorer(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 3], tf.float64, name="features"),
                tf.TensorSpec([None], tf.string, name="tag"),
                tf.TensorSpec([None, 2], tf.int32, name="counts"),
            ]
        )
        def serve(self, features: tf.Tensor, tag: tf.Tensor, counts: tf.Tensor) -> dict[str, tf.Tensor]:
            return {
                "scaled": features * 2.0,
                "tag_length": tf.strings.length(tag),
                "total": tf.cast(tf.reduce_sum(counts, axis=1), tf.int64),
                "positive": features[:, 0] > 0,
            }

    module = Scorer()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def build_slow_model(path: Path, matmuls: int = 40) -> None:
    """A model whose every call takes a while (a chain of 512x512 matmuls), so that its queue fills."""
    import tensorflow as tf

    class Slow(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = tf.Variable(tf.eye(512) * 0.999)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            def step(i: tf.Tensor, acc: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                return i + 1, tf.linalg.matmul(acc, self.weights)

            _, acc = tf.while_loop(lambda i, _: i < matmuls, step, (tf.constant(0), tf.eye(512)))
            return {"y": x * 2.0 + 0.0 * tf.reduce_sum(acc)}

    module = Slow()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@dataclass
class ServerProcess:
    """A tensorgate server running as a child process."""

    process: subprocess.Popen[bytes]
    target: str
    metrics_url: str
    log_path: Path
    gateway_url: str = ""
    gateway_target: str = ""
    gateway_admin_url: str = ""
    tls: ClientTls | None = None  # how to reach the server's port when it speaks TLS
    gateway_ssl: ssl.SSLContext | None = None  # how to reach Envoy's listener when it speaks TLS

    def log(self) -> str:
        return self.log_path.read_text()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of /metrics, keyed by (name, labels)."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value (0 when the series does not exist yet)."""
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) * 1024

    def stop(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)


def wait_until_serving(
    target: str, process: subprocess.Popen[bytes], tls: ClientTls | None = None, timeout_s: float = 120
) -> None:
    deadline = time.monotonic() + timeout_s
    channel = grpc.secure_channel(target, tls.credentials()) if tls else grpc.insecure_channel(target)
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before serving")
            try:
                if (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"server at {target} not SERVING after {timeout_s} s")


def wait_until_gateway_answers(
    url: str, process: subprocess.Popen[bytes], context: ssl.SSLContext | None = None, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"stack exited with {process.returncode} before the gateway answered")
        try:
            with urllib.request.urlopen(f"{url}/openapi.json", timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"gateway at {url} did not answer")


def start_server(
    repository: Path,
    log_path: Path,
    *extra: str,
    gateway: bool = False,
    replicas: int = 1,
    tls: ClientTls | None = None,
    gateway_ssl: ssl.SSLContext | None = None,
) -> ServerProcess:
    """A server on free loopback ports; with ``gateway``, the whole stack: supervisor, server and Envoy.

    ``tls`` and ``gateway_ssl`` are how the test reaches a server port or gateway that speaks TLS. With
    ``replicas``, replica i listens on ``target``'s port + i.
    """
    port, metrics_port = free_port_block(replicas), free_port_block(replicas)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [*CLI, "serve", "--model-repository", str(repository), "--port", str(port)]
    command += ["--metrics-port", str(metrics_port), "--replicas", str(replicas)]
    gateway_port, admin_port = free_port(), free_port()
    if gateway:
        command += ["--gateway-port", str(gateway_port), "--gateway-admin-port", str(admin_port)]
    else:
        command += ["--gateway", "false"]
    with log_path.open("wb") as log:
        process = subprocess.Popen([*command, *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(process, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", log_path)
    server.tls, server.gateway_ssl = tls, gateway_ssl
    if gateway:
        server.gateway_url = f"{'https' if gateway_ssl else 'http'}://127.0.0.1:{gateway_port}"
        server.gateway_target = f"127.0.0.1:{gateway_port}"
        server.gateway_admin_url = f"http://127.0.0.1:{admin_port}"
    try:
        wait_until_serving(server.target, process, tls)
        if gateway:
            wait_until_gateway_answers(server.gateway_url, process, gateway_ssl)
    except Exception:
        process.kill()
        process.wait()
        raise RuntimeError(f"server did not start; log:\n{server.log()}") from None
    return server


@pytest.fixture(scope="session")
def mnist() -> MnistData:
    return load_mnist()


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mnist/1 trained by `tensorgate train`, scorer/1, broken/1 (corrupt), and empty/ (no version)."""
    root = tmp_path_factory.mktemp("repository")
    result = subprocess.run([*CLI, "train", "--repository", str(root)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    build_scorer_model(root / "scorer" / "1")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(repository, tmp_path_factory.mktemp("server") / "server.log")
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[TensorgateClient]:
    with TensorgateClient(server.target) as client:
        yield client


def mnist_inputs(images: np.ndarray) -> np.ndarray:
    """Test images as the reference model takes them: float32 in [0, 1]."""
    return (images / 255.0).astype(np.float32)


@pytest.fixture(scope="session")
def stack(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Supervisor + server + Envoy over mnist, scorer, broken, and a slow model with a queue of one."""
    root = tmp_path_factory.mktemp("gateway-repository")
    for model in ("mnist", "scorer", "broken"):
        shutil.copytree(repository / model, root / model)
    build_slow_model(root / "slow" / "1", matmuls=60)
    (root / "slow" / "model.toml").write_text("[batching]\nmax_batch_size = 1\nmax_queue_size = 1\n")
    stack = start_server(root, tmp_path_factory.mktemp("gateway") / "stack.log", "--model-workers", "1", gateway=True)
    yield stack
    assert stack.stop() == 0, stack.log()[-5000:]
