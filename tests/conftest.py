"""Shared fixtures: a model repository built for real (MNIST trained by the `train` command, a
second multi-input model, a broken version) and a real server process on a free loopback port."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tensorgate.clients.client import ClientTls, TensorgateClient
from tensorgate.clients.datasets import MnistData, load_mnist

# Re-exported: tests import them from here.
from support.processes import CLI as CLI
from support.processes import free_port as free_port
from support.processes import start_stack, stop

ROOT = Path(__file__).resolve().parent.parent


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


def build_slow_model(path: Path, call_s: float = 0.2) -> None:
    """A model whose every call takes ``call_s`` seconds on the wall clock, however fast the machine: its graph
    loops until ``tf.timestamp()`` passes the call's start + ``call_s`` (a stateful op, never folded away)."""
    import tensorflow as tf

    class Slow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            until = tf.timestamp() + call_s
            (now,) = tf.while_loop(lambda now: now < until, lambda _: (tf.timestamp(),), (tf.timestamp(),))
            return {"y": x * 2.0 + 0.0 * tf.cast(now, tf.float32)}

    module = Slow()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def build_checking_model(path: Path) -> None:
    """A float32 model that refuses negative inputs with tf.debugging (an Assert op, which TFLite would drop)."""

    import tensorflow as tf

    class Checking(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            tf.debugging.assert_non_negative(x, message="x must be non-negative")
            return {"y": x * 2.0}

    module = Checking()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def scrape(metrics_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus /metrics page, keyed by (name, labels)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


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
    rest_url: str = ""  # the v2 REST API (plaintext)
    tfserving_rest_url: str = ""  # TF Serving's REST API (plaintext)
    tls: ClientTls | None = None  # how to reach the server's port when it speaks TLS
    gateway_ssl: ssl.SSLContext | None = None  # how to reach Envoy's listener when it speaks TLS

    def log(self) -> str:
        return self.log_path.read_text()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return scrape(self.metrics_url)

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value (0 when the series does not exist yet)."""
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) * 1024

    def stop(self, timeout_s: float = 60) -> int:
        return stop(self.process, timeout_s)


def start_server(
    repository: Path | str,
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
    credentials = tls.credentials() if tls else None
    try:
        stack = start_stack(
            repository,
            log_path,
            *extra,
            gateway=gateway,
            replicas=replicas,
            credentials=credentials,
            gateway_ssl=gateway_ssl,
        )
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"server did not start ({exc}); log:\n{log_path.read_text()}") from None
    server = ServerProcess(
        stack.process, f"127.0.0.1:{stack.port}", f"http://127.0.0.1:{stack.metrics_port}/metrics", log_path
    )
    server.tls, server.gateway_ssl = tls, gateway_ssl
    server.rest_url = f"http://127.0.0.1:{stack.rest_port}"
    server.tfserving_rest_url = f"http://127.0.0.1:{stack.tfserving_rest_port}"
    if gateway:
        server.gateway_url = f"{'https' if gateway_ssl else 'http'}://127.0.0.1:{stack.gateway_port}"
        server.gateway_target = f"127.0.0.1:{stack.gateway_port}"
        server.gateway_admin_url = f"http://127.0.0.1:{stack.gateway_admin_port}"
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
    build_slow_model(root / "slow" / "1", call_s=0.3)
    (root / "slow" / "model.toml").write_text("[batching]\nmax_batch_size = 1\nmax_queue_size = 1\n")
    stack = start_server(root, tmp_path_factory.mktemp("gateway") / "stack.log", "--model-workers", "1", gateway=True)
    yield stack
    assert stack.stop() == 0, stack.log()[-5000:]


def add_key(keys_file: Path, name: str, scopes: str, models: str = "") -> str:
    """A new API key from `tensorgate keys add` (the file keeps only its hash)."""
    command = [*CLI, "keys", "add", name, "--scopes", scopes, "--models", models, "--file", str(keys_file)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@dataclass(frozen=True)
class KeyedServer:
    """A server that requires API keys: one key with the admin and predict scopes, one with predict only."""

    server: ServerProcess
    admin_key: str
    reader_key: str


@pytest.fixture(scope="module")
def keyed_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedServer]:
    directory = tmp_path_factory.mktemp("keyed")
    keys = directory / "keys.toml"
    admin_key, reader_key = add_key(keys, "ops", "admin,predict"), add_key(keys, "reader", "predict")
    server = start_server(repository, directory / "server.log", "--api-keys-file", str(keys))
    yield KeyedServer(server, admin_key, reader_key)
    assert server.stop() == 0, server.log()
