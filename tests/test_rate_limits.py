"""Limits that protect other tenants hold on every path: each message of a stream is charged to its key's rate
(gRPC, the Open Inference Protocol, REST through Envoy), a revoked key or an expired token ends an open stream at
its next message, and failed authentication is throttled per client address."""

from __future__ import annotations

import itertools
import json
import queue
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from tritonclient.grpc import service_pb2 as oip

from tensorgate.clients.client import TensorgateClient
from tensorgate.server.errors import RateLimitedError
from tensorgate.server.security import rate_limit
from tensorgate.v1 import codec
from tensorgate.v1.inference_service_pb2 import StreamPredictRequest, StreamPredictResponse
from tensorgate.v1.model_service_pb2 import GetModelStatusRequest, GetModelStatusResponse

from conftest import CLI, ServerProcess, start_server
from jwt_tokens import TokenIssuer

RATE, BURST = 2, 5  # the limited key's requests per second, and its burst
FAILURE_BURST = 8  # failed authentications an address may make at once
IMAGE = np.full((1, 28, 28), 0.5, np.float32)
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


@dataclass
class Limited:
    stack: ServerProcess
    keys_file: Path
    issuer: TokenIssuer

    def key(self, name: str) -> str:
        result = subprocess.run(
            [*CLI, "keys", "add", name, "--scopes", "predict", "--file", str(self.keys_file)],
            capture_output=True,
            text=True,
            check=True,
        )
        key = result.stdout.strip()
        wait_until_accepted(self.stack.target, key)
        return key


_POLLERS = itertools.count(1)


def wait_until_accepted(target: str, key: str) -> None:
    """Wait (on the wall clock) until the server has re-read the key file and knows ``key``.

    Each poll before then is a failed authentication: it comes from an address of its own (the server trusts
    loopback's x-forwarded-for), so that polling does not throttle the tests' own address.
    """
    metadata = (("x-forwarded-for", f"198.18.0.{next(_POLLERS)}"), ("x-api-key", key))
    deadline = time.monotonic() + 15
    while (code := _status_with(target, metadata)) != grpc.StatusCode.OK:
        assert code == grpc.StatusCode.UNAUTHENTICATED and time.monotonic() < deadline, code
        time.sleep(0.2)


@pytest.fixture(scope="module")
def limited(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    root = tmp_path_factory.mktemp("limited-repository")
    shutil.copytree(repository / "mnist", root / "mnist")
    work = tmp_path_factory.mktemp("limited")
    keys_file = work / "keys.toml"
    subprocess.run([*CLI, "keys", "add", "bootstrap", "--scopes", "predict", "--file", str(keys_file)], check=True)
    issuer = TokenIssuer(work / "jwks.json")
    config = work / "tensorgate.toml"
    config.write_text(
        f"""
api_keys_file = "{keys_file}"
rate_limit_per_key = {RATE}
rate_limit_burst = {BURST}
auth_failures_per_s = 0.5
auth_failure_burst = {FAILURE_BURST}

[jwt]
jwks_file = "{work / "jwks.json"}"
issuer = "https://issuer.test"
audiences = ["tensorgate"]
leeway_s = 0
"""
    )
    stack = start_server(root, work / "stack.log", "--config", str(config), gateway=True)
    yield Limited(stack, keys_file, issuer)
    assert stack.stop() == 0, stack.log()[-3000:]


def _message(i: int) -> StreamPredictRequest:
    message = StreamPredictRequest(id=str(i), model="mnist")
    message.inputs["keras_tensor"].CopyFrom(codec.encode(IMAGE))
    return message


def _retry_delay_s(status: object) -> float:
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)  # type: ignore[attr-defined]
    return info.retry_delay.ToNanoseconds() / 1e9


def _admitted_at_most(elapsed_s: float) -> float:
    """What a bucket of BURST refilled at RATE can admit in ``elapsed_s`` (plus one for the clock's edges)."""
    return BURST + RATE * elapsed_s + 1


def test_every_stream_message_is_charged(limited: Limited) -> None:
    key = limited.key("streamer")
    count = 200  # far more than the rate admits while the stream runs, on any machine
    started = time.monotonic()
    with grpc.insecure_channel(limited.stack.target) as channel:
        stream = channel.stream_stream(
            "/tensorgate.v1.InferenceService/StreamPredict",
            request_serializer=StreamPredictRequest.SerializeToString,
            response_deserializer=StreamPredictResponse.FromString,
        )
        answers = list(stream((_message(i) for i in range(count)), metadata=(("x-api-key", key),), timeout=120))
    elapsed = time.monotonic() - started
    assert [a.id for a in answers] == [str(i) for i in range(count)], "the stream must go on past its refusals"
    served = [a for a in answers if not a.HasField("error")]
    refused = [a for a in answers if a.HasField("error")]
    assert len(served) <= _admitted_at_most(elapsed), f"{len(served)} served in {elapsed:.1f} s"
    assert refused and all(a.error.code == RESOURCE_EXHAUSTED for a in refused)
    assert "rate limit of 2 requests/s for 'streamer' exceeded" in refused[0].error.message
    assert 0 < _retry_delay_s(refused[0].error) <= 1 / RATE
    assert all(a.outputs["output_0"].shape == [1, 10] for a in served)


def test_every_oip_stream_message_is_charged(limited: Limited) -> None:
    key = limited.key("oip-streamer")
    count = 200
    request = oip.ModelInferRequest(model_name="mnist")
    tensor = request.inputs.add(name="keras_tensor", datatype="FP32", shape=[1, 28, 28])
    tensor.contents.fp32_contents.extend(IMAGE.ravel().tolist())
    started = time.monotonic()
    with grpc.insecure_channel(limited.stack.target) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=oip.ModelInferRequest.SerializeToString,
            response_deserializer=oip.ModelStreamInferResponse.FromString,
        )
        answers = list(stream((request for _ in range(count)), metadata=(("x-api-key", key),), timeout=120))
    elapsed = time.monotonic() - started
    assert len(answers) == count
    refused = [a for a in answers if a.error_message]
    assert count - len(refused) <= _admitted_at_most(elapsed)
    assert refused and all("rate limit of 2 requests/s for 'oip-streamer'" in a.error_message for a in refused)


def test_every_rest_stream_line_is_charged(limited: Limited) -> None:
    key = limited.key("rest-streamer")
    tensor = {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 28, 28], "floatValues": IMAGE.ravel().tolist()}
    count = 100
    body = [{"id": str(i), "model": "mnist", "inputs": {"keras_tensor": tensor}} for i in range(count)]
    request = urllib.request.Request(
        f"{limited.stack.gateway_url}/v1/models:streamPredict",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"x-api-key": key},
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=120) as response:
        lines = [json.loads(line) for line in response.read().decode().splitlines() if line.strip()]
    elapsed = time.monotonic() - started
    assert [line["id"] for line in lines] == [str(i) for i in range(count)]
    refused = [line for line in lines if "error" in line]
    assert count - len(refused) <= _admitted_at_most(elapsed)
    assert refused and all(line["error"]["code"] == RESOURCE_EXHAUSTED for line in refused)


class OpenStream:
    """A StreamPredict whose messages the test sends one at a time, reading each answer before the next."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self._outbox: queue.Queue[StreamPredictRequest | None] = queue.Queue()
        stream = channel.stream_stream(
            "/tensorgate.v1.InferenceService/StreamPredict",
            request_serializer=StreamPredictRequest.SerializeToString,
            response_deserializer=StreamPredictResponse.FromString,
        )
        self._answers = stream(iter(self._outbox.get, None), metadata=metadata, timeout=120)
        self._sent = 0

    def ask(self) -> StreamPredictResponse:
        """Send one message and wait for its answer (raises grpc.RpcError once the stream has ended)."""
        self._outbox.put(_message(self._sent))
        self._sent += 1
        return next(self._answers)

    def close(self) -> None:
        self._outbox.put(None)


def _ask_until_ended(stream: OpenStream, within_s: float) -> grpc.RpcError:
    """Keep asking (one message at a time, so the bucket refills) until the server ends the stream."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            stream.ask()
        except grpc.RpcError as exc:
            return exc
        time.sleep(1 / RATE)  # keeps the key within its rate: only the revocation may end the stream
    raise AssertionError(f"the stream was still open {within_s} s later")


def test_a_revoked_key_ends_its_open_stream(limited: Limited) -> None:
    key = limited.key("revoked-mid-stream")
    with grpc.insecure_channel(limited.stack.target) as channel:
        stream = OpenStream(channel, (("x-api-key", key),))
        try:
            assert not stream.ask().HasField("error")
            subprocess.run([*CLI, "keys", "revoke", "revoked-mid-stream", "--file", str(limited.keys_file)], check=True)
            ended = _ask_until_ended(stream, within_s=15)
        finally:
            stream.close()
    assert ended.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown or revoked API key" in (ended.details() or "")


def test_an_expired_token_ends_its_open_stream(limited: Limited) -> None:
    token = limited.issuer.token(expires_in_s=3)
    with grpc.insecure_channel(limited.stack.target) as channel:
        stream = OpenStream(channel, (("authorization", f"Bearer {token}"),))
        try:
            assert not stream.ask().HasField("error")
            ended = _ask_until_ended(stream, within_s=15)
        finally:
            stream.close()
    assert ended.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (ended.details() or "")


def _status_with(target: str, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        status = channel.unary_unary(
            "/tensorgate.v1.ModelService/GetModelStatus",
            request_serializer=GetModelStatusRequest.SerializeToString,
            response_deserializer=GetModelStatusResponse.FromString,
        )
        try:
            status(GetModelStatusRequest(model="mnist"), metadata=metadata, timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()


def test_failed_authentication_is_throttled_per_address(limited: Limited) -> None:
    """The server's port is reached from loopback, a trusted proxy: the last x-forwarded-for hop is the address."""
    key = limited.key("innocent")
    guesser = (("x-forwarded-for", "198.51.100.1, 203.0.113.7"),)
    codes = [_status_with(limited.stack.target, (*guesser, ("x-api-key", f"guess-{i}"))) for i in range(40)]
    assert codes[:FAILURE_BURST] == [grpc.StatusCode.UNAUTHENTICATED] * FAILURE_BURST
    assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, "guessing went on unthrottled"
    # Throttled: even a right key from that address waits; other addresses are not affected.
    assert _status_with(limited.stack.target, (*guesser, ("x-api-key", key))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    other = (("x-forwarded-for", "203.0.113.8"), ("x-api-key", key))
    assert _status_with(limited.stack.target, other) == grpc.StatusCode.OK
    assert limited.stack.metric("tensorgate_requests_rejected_total", reason="rate_limited") > 0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_admits_while_it_holds_a_token_then_charges_the_whole_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(rate_limit.time, "monotonic", clock)
    limiter = rate_limit.RateLimiter(rate_per_s=10, burst=100, unit="examples")
    limiter.take("a", 64)
    limiter.take("a", 64)  # 36 tokens left: admitted, and 28 into debt
    with pytest.raises(RateLimitedError) as refused:
        limiter.take("a")
    assert refused.value.retry_after_s == pytest.approx(2.9)  # 29 tokens at 10/s
    assert "rate limit of 10 examples/s for 'a' exceeded" in str(refused.value)
    limiter.take("b", 100)  # another caller has its own bucket
    clock.now += 3  # 30 tokens back: 2 in the bucket
    limiter.check("a")  # checking charges nothing
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(RateLimitedError):
        limiter.check("a")


def test_full_buckets_are_dropped_when_the_table_is_full(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(rate_limit.time, "monotonic", clock)
    monkeypatch.setattr(rate_limit, "MAX_BUCKETS", 3)
    limiter = rate_limit.RateLimiter(rate_per_s=1, burst=5, unit="failed authentications")
    for address in ("a", "b", "c"):
        limiter.charge(address)
    clock.now += 10  # every bucket is full again
    limiter.charge("d")
    limiter.charge("c")
    assert sorted(limiter._buckets) == ["c", "d"]


@pytest.fixture(scope="module")
def per_example(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("per-example-repository")
    shutil.copytree(repository / "mnist", root / "mnist")
    keys_file = tmp_path_factory.mktemp("per-example") / "keys.toml"
    result = subprocess.run(
        [*CLI, "keys", "add", "bulk", "--scopes", "predict", "--file", str(keys_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    flags = ["--api-keys-file", str(keys_file), "--rate-limit-per-key", "1", "--rate-limit-burst", "100"]
    server = start_server(root, keys_file.parent / "server.log", *flags, "--rate-limit-unit", "example")
    yield server, result.stdout.strip()
    assert server.stop() == 0, server.log()[-3000:]


def test_a_token_can_be_one_example(per_example: tuple[ServerProcess, str]) -> None:
    """rate_limit_unit = "example": a call of 64 images costs 64 tokens (admitted while the bucket holds one)."""
    server, key = per_example
    with TensorgateClient(server.target, api_key=key) as client:
        x = np.full((64, 28, 28), 0.5, np.float32)
        assert client.predict("mnist", x).shape == (64, 10)
        assert client.predict("mnist", x).shape == (64, 10)  # 36 tokens were left: admitted, 28 into debt
        with pytest.raises(grpc.RpcError) as refused:
            client.predict("mnist", x[:1])
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit of 1 examples/s for 'bulk' exceeded" in (refused.value.details() or "")


def test_failed_authentication_through_the_gateway_is_throttled(limited: Limited) -> None:
    """Through Envoy, the address is the one Envoy saw; a header the caller forges does not move it."""
    statuses = []
    for i in range(40):
        request = urllib.request.Request(
            f"{limited.stack.gateway_url}/v1/models/mnist",
            headers={"x-api-key": f"guess-{i}", "x-forwarded-for": f"192.0.2.{i}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
    assert statuses[0] == 401 and statuses[-1] == 429, statuses
