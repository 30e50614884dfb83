"""A model repository in S3, end to end against moto's S3 server on a free loopback port: the server serves what
the bucket holds, picks up a new version under load with no failed request, ignores a half-uploaded version
until it is complete, and retires a version deleted from the bucket."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import grpc
import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from tensorgate.clients.client import TensorgateClient
from tensorgate.server.models.mirror import RepositoryUnavailable
from tensorgate.server.models.s3 import S3Store
from tensorgate.v1 import codec, inference_service_pb2_grpc
from tensorgate.v1.inference_service_pb2 import PredictRequest
from tensorgate.v1.model_service_pb2 import ModelVersionState

from conftest import CLI, ServerProcess, build_slow_model, free_port, start_server

BUCKET = "models-bucket"
PREFIX = "team/repository"
SECRET = "s3-secret-never-logged"
POLL_S = 0.2
AVAILABLE = ModelVersionState.MODEL_VERSION_STATE_AVAILABLE


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server, with the environment (inherited by the tensorgate process) pointing boto3 at it."""
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "test-key-id")
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        try:
            yield endpoint
        finally:
            moto.stop()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A small SavedModel's files by relative path (y = 2x)."""
    root = tmp_path_factory.mktemp("s3-model") / "1"
    build_slow_model(root, call_s=0.001)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Bucket:
    def __init__(self) -> None:
        self.client = boto3.client("s3")
        self.client.create_bucket(Bucket=BUCKET)

    def upload(self, files: dict[str, bytes], model: str, version: int) -> None:
        for relative, data in files.items():
            self.client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{model}/{version}/{relative}", Body=data)

    def delete(self, model: str, version: int) -> None:
        listing = self.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{model}/{version}/")
        for item in listing.get("Contents", []):
            self.client.delete_object(Bucket=BUCKET, Key=item["Key"])


def wait_for(condition: Callable[[], bool], failures: list[str], timeout_s: float = 120) -> None:
    """Wait until ``condition`` holds; fails at once when a caller has failed."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert failures == []
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def states(client: TensorgateClient, model: str = "m") -> dict[str, int]:
    return {v.version: v.state for v in client.model_status(model).versions}


@pytest.fixture(scope="module")
def s3_server(
    s3_endpoint: str, model_files: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Bucket]]:
    bucket = Bucket()
    bucket.upload(model_files, "m", 1)
    bucket.client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/m/model.toml", Body=b'version_policy = "latest"\n')
    directory = tmp_path_factory.mktemp("s3-server")
    server = start_server(
        f"s3://{BUCKET}/{PREFIX}",
        directory / "server.log",
        "--model-cache-dir",
        str(directory / "cache"),
        "--poll-interval-s",
        str(POLL_S),
    )
    yield server, bucket
    assert server.stop() == 0, server.log()[-5000:]
    assert SECRET not in server.log()


def test_versions_from_the_bucket_under_load(
    s3_server: tuple[ServerProcess, Bucket], model_files: dict[str, bytes]
) -> None:
    server, bucket = s3_server
    stop = threading.Event()
    answers: list[str] = []
    failures: list[str] = []

    def caller() -> None:
        with grpc.insecure_channel(server.target) as channel:
            stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
            while not stop.is_set():
                request = PredictRequest(model="m")
                request.inputs["x"].CopyFrom(codec.encode(np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)))
                try:
                    response = stub.Predict(request, timeout=30)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")
                    continue
                y = codec.decode(response.outputs["y"])
                if not np.array_equal(y, [[2.0, 4.0, 6.0, 8.0]]):
                    failures.append(f"version {response.version} answered {y}")
                answers.append(response.version)

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        with TensorgateClient(server.target) as client:
            assert states(client) == {"1": AVAILABLE}
            wait_for(lambda: "1" in answers, failures)
            # Half uploaded: everything but the graph file. Several polls later it is still not there.
            bucket.upload({k: v for k, v in model_files.items() if k != "saved_model.pb"}, "m", 2)
            deadline = time.monotonic() + 10 * POLL_S
            while time.monotonic() < deadline:
                assert states(client) == {"1": AVAILABLE}
                time.sleep(POLL_S / 2)
            bucket.upload({"saved_model.pb": model_files["saved_model.pb"]}, "m", 2)
            wait_for(lambda: states(client) == {"2": AVAILABLE}, failures)
            wait_for(lambda: answers[-1:] == ["2"], failures)
            # Deleted from the bucket: version 2 is retired, version 1 (the latest left) serves again.
            bucket.delete("m", 2)
            wait_for(lambda: states(client) == {"1": AVAILABLE}, failures)
            count = len(answers)
            wait_for(lambda: len(answers) > count + 10, failures)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert failures == []
    assert answers[-1] == "1"
    assert {"1", "2"} <= set(answers)
    log = server.log()
    assert f"s3://{BUCKET}/{PREFIX}" in log
    assert "model version downloaded" in log


def test_a_missing_bucket_is_a_clear_error_without_credentials(s3_endpoint: str, tmp_path: Path) -> None:
    store = S3Store("s3://no-such-bucket/models")
    with pytest.raises(RepositoryUnavailable, match="s3://no-such-bucket/models: NoSuchBucket") as raised:
        store.list()
    assert SECRET not in str(raised.value)


def test_a_server_over_a_missing_bucket_exits_with_one_line(s3_endpoint: str, tmp_path: Path) -> None:
    command = [*CLI, "serve", "--model-repository", "s3://no-such-bucket/models", "--no-gateway"]
    command += ["--port", str(free_port()), "--metrics-port", str(free_port()), "--model-cache-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: cannot list model repository s3://no-such-bucket/models: NoSuchBucket" in result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout
