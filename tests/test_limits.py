"""Every configurable limit refuses an oversized request, before any model work, with the right gRPC code and
HTTP status, and leaves the server healthy: message size, examples per request, tensor elements, stream
duration and the server's maximum request timeout."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tensorgate.clients.client import TensorgateClient
from tensorgate.v1 import codec, inference_service_pb2_grpc
from tensorgate.v1.inference_service_pb2 import PredictRequest, StreamPredictRequest

from conftest import ServerProcess, build_slow_model, start_server

MESSAGE_BYTES = 64 * 1024  # 20 MNIST images (62,720 bytes of float32) fit; 21 do not
MAX_EXAMPLES = 16
MAX_ELEMENTS = 4 * 784  # four images
STREAM_S = 2.0
REQUEST_TIMEOUT_S = 0.5
SLOW_CALL_S = 1.2  # a call of the slow model outlasts the request timeout, twice over


@pytest.fixture(scope="module")
def limited(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("limits-repository")
    shutil.copytree(repository / "mnist", root / "mnist")
    build_slow_model(root / "slow" / "1", call_s=SLOW_CALL_S)
    (root / "slow" / "model.toml").write_text("[batching]\nmax_batch_size = 1\n")
    limits = {
        "--max-message-bytes": MESSAGE_BYTES,
        "--max-examples-per-request": MAX_EXAMPLES,
        "--max-tensor-elements": MAX_ELEMENTS,
        "--max-stream-duration-s": STREAM_S,
        "--max-request-timeout-s": REQUEST_TIMEOUT_S,
        "--model-workers": 1,
    }
    flags = [str(item) for pair in limits.items() for item in pair]
    server = start_server(root, tmp_path_factory.mktemp("limits") / "server.log", *flags, gateway=True)
    yield server
    assert server.stop() == 0


def images(count: int) -> np.ndarray:
    return np.zeros((count, 28, 28), np.float32)


def rest_predict(server: ServerProcess, x: np.ndarray) -> tuple[int, dict]:
    body = {"inputs": {"keras_tensor": {"dtype": "DATA_TYPE_FLOAT32", "shape": list(x.shape), "floatValues": []}}}
    body["inputs"]["keras_tensor"]["floatValues"] = x.ravel().tolist()
    request = urllib.request.Request(
        f"{server.gateway_url}/v1/models/mnist:predict", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw.startswith(b"{") else {"text": raw.decode()}


def assert_healthy(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with TensorgateClient(server.target) as client:
        assert client.predict("mnist", images(1)).shape == (1, 10)


def test_message_size(limited: ServerProcess) -> None:
    with TensorgateClient(limited.target) as client:
        assert client.predict("mnist", images(MAX_ELEMENTS // 784)).shape == (4, 10)
    # The client may send more than the server takes: the server's own limit answers.
    with TensorgateClient(limited.target, max_message_bytes=1 << 20) as client, pytest.raises(grpc.RpcError) as raised:
        client.predict("mnist", images(21))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # REST: a JSON body over the limit is refused by Envoy before it is transcoded.
    status, _ = rest_predict(limited, np.full((30, 28, 28), 0.123456, np.float32))
    assert status == 413
    assert_healthy(limited)


def test_examples_and_elements(limited: ServerProcess) -> None:
    with TensorgateClient(limited.target) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.predict("mnist", images(5))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"more than the limit of {MAX_ELEMENTS}" in (raised.value.details() or "")
    status, body = rest_predict(limited, images(5))
    assert status == 400 and body["code"] == 3 and "limit" in body["message"]
    assert limited.metric("tensorgate_requests_rejected_total", reason="invalid") >= 2
    assert_healthy(limited)


def test_examples_per_request(repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "repository"
    shutil.copytree(repository / "mnist", root / "mnist")
    server = start_server(root, tmp_path / "server.log", "--max-examples-per-request", "3")
    try:
        with TensorgateClient(server.target) as client, pytest.raises(grpc.RpcError) as raised:
            client.predict("mnist", images(4))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "batch of 4 examples exceeds the limit of 3" in (raised.value.details() or "")
        assert_healthy(server)
    finally:
        assert server.stop() == 0


def test_stream_duration(limited: ServerProcess) -> None:
    def slow_sender() -> Iterator[StreamPredictRequest]:
        for i in range(100):
            request = StreamPredictRequest(id=str(i), model="mnist")
            codec.encode_into(images(1), request.inputs["keras_tensor"], raw=True)
            yield request
            time.sleep(0.1)

    started = time.monotonic()
    answered = 0
    with grpc.insecure_channel(limited.target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            for response in stub.StreamPredict(slow_sender(), timeout=60):
                assert not response.HasField("error")
                answered += 1
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"limit of {STREAM_S:g} s" in (raised.value.details() or "")
    assert STREAM_S <= time.monotonic() - started < STREAM_S + 5 and answered >= 5
    assert_healthy(limited)


def test_request_timeout_caps_calls_without_a_deadline(limited: ServerProcess) -> None:
    """Two calls to a model that takes longer than the limit, one worker: the second waits past the
    server's maximum request timeout and is refused before its model work starts."""
    x = np.ones((1, 4), np.float32)
    with grpc.insecure_channel(limited.target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)

        def call() -> grpc.StatusCode:
            request = PredictRequest(model="slow")
            codec.encode_into(x, request.inputs["x"], raw=True)
            try:
                stub.Predict(request)  # no deadline from the caller
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

        assert call() == grpc.StatusCode.OK  # alone, a call that outlasts the limit is answered: it started in time
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(call)
            time.sleep(SLOW_CALL_S / 4)  # the first call holds the only worker; the second queues behind it
            second = pool.submit(call)
            codes = [first.result(), second.result()]
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED]
    assert_healthy(limited)
