"""Dynamic batching: merged results equal solo results, a full queue refuses and recovers,
cancelled and expired requests never reach the model."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData
from tensorgate.v1 import codec, inference_service_pb2_grpc
from tensorgate.v1.inference_service_pb2 import PredictRequest, StreamPredictRequest

from conftest import ServerProcess, build_slow_model, mnist_inputs, start_server

SLOW_CONFIG = """
[batching]
max_batch_size = 1
max_queue_size = 3
"""


@pytest.fixture(scope="module")
def batching_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One model worker, MNIST merging for up to 20 ms, and a slow model with a queue of 3."""
    root = tmp_path_factory.mktemp("batching-repository")
    shutil.copytree(repository / "mnist", root / "mnist")
    (root / "mnist" / "model.toml").write_text("[batching]\nmax_queue_delay_us = 20000\nmax_batch_size = 64\n")
    build_slow_model(root / "slow" / "1")
    (root / "slow" / "model.toml").write_text(SLOW_CONFIG)
    server = start_server(root, tmp_path_factory.mktemp("batching") / "server.log", "--model-workers", "1")
    yield server
    assert server.stop() == 0, server.log()


def slow_request() -> PredictRequest:
    request = PredictRequest(model="slow")
    request.inputs["x"].CopyFrom(codec.encode(np.ones((1, 4), np.float32)))
    return request


def slow_call_seconds(stub: inference_service_pb2_grpc.InferenceServiceStub) -> float:
    started = time.monotonic()
    stub.Predict(slow_request(), timeout=30)
    return time.monotonic() - started


def test_merged_batches_give_the_same_answers_as_solo_requests(
    batching_server: ServerProcess, mnist: MnistData
) -> None:
    x = mnist_inputs(mnist.x_test[:48])
    before = batching_server.metric("tensorgate_batch_size_count", model="mnist", version="1")
    with grpc.insecure_channel(batching_server.target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        requests = []
        for image in x:
            request = PredictRequest(model="mnist")
            request.inputs["keras_tensor"].CopyFrom(codec.encode(image[np.newaxis]))
            requests.append(request)
        futures = [stub.Predict.future(request, timeout=30) for request in requests]
        merged = np.concatenate([codec.decode(f.result().outputs["output_0"]) for f in futures])
        batches = batching_server.metric("tensorgate_batch_size_count", model="mnist", version="1") - before
        solo = np.concatenate([codec.decode(stub.Predict(r, timeout=30).outputs["output_0"]) for r in requests])
    assert batches < len(x) / 2, f"{len(x)} concurrent requests ran in {batches} batches: not merged"
    np.testing.assert_array_equal(merged.argmax(1), solo.argmax(1))
    np.testing.assert_allclose(merged, solo, rtol=1e-5, atol=1e-6)


def test_full_queue_refuses_with_retry_hint_and_recovers(batching_server: ServerProcess) -> None:
    overload_before = batching_server.metric(
        "tensorgate_requests_dropped_total", model="slow", version="1", reason="overload"
    )
    with grpc.insecure_channel(batching_server.target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        futures = [stub.Predict.future(slow_request(), timeout=60) for _ in range(12)]
        outcomes = []
        for future in futures:
            try:
                future.result()
                outcomes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                outcomes.append(exc.code())
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                assert "queue of model slow/1 is full (3 requests); retry in" in exc.details()
                details = dict(exc.trailing_metadata())["grpc-status-details-bin"]
                status = status_pb2.Status.FromString(details)
                retry = error_details_pb2.RetryInfo()
                assert status.details[0].Unpack(retry) and retry.retry_delay.ToNanoseconds() > 0
        refused = outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        # One request runs, three wait: the other eight are refused at once.
        assert outcomes.count(grpc.StatusCode.OK) >= 4 and refused >= 1, outcomes
        overload = batching_server.metric(
            "tensorgate_requests_dropped_total", model="slow", version="1", reason="overload"
        )
        assert overload - overload_before == refused
        assert stub.Predict(slow_request(), timeout=30).outputs["y"].raw_contents  # recovered


def test_cancelled_and_expired_requests_never_reach_the_model(batching_server: ServerProcess) -> None:
    def dropped() -> float:
        return sum(
            batching_server.metric("tensorgate_requests_dropped_total", model="slow", version="1", reason=reason)
            for reason in ("cancelled", "expired")
        )

    examples_before = batching_server.metric("tensorgate_model_examples_total", model="slow", version="1")
    dropped_before = dropped()
    with grpc.insecure_channel(batching_server.target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        call_s = slow_call_seconds(stub)
        busy = stub.Predict.future(slow_request(), timeout=60)  # holds the only worker
        time.sleep(call_s / 4)
        expiring = stub.Predict.future(slow_request(), timeout=call_s / 4)
        cancelled = [stub.Predict.future(slow_request(), timeout=60) for _ in range(2)]
        time.sleep(call_s / 8)
        for future in cancelled:
            assert future.cancel()
        with pytest.raises(grpc.RpcError) as raised:
            expiring.result()
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        busy.result()
        deadline, later_calls = time.monotonic() + 10, 0
        while dropped() - dropped_before < 3 and time.monotonic() < deadline:
            stub.Predict(slow_request(), timeout=30)  # the batch loop drops dead requests as it reaches them
            later_calls += 1
    examples = batching_server.metric("tensorgate_model_examples_total", model="slow", version="1") - examples_before
    assert dropped() - dropped_before == 3
    # Only the timing call, the busy call and the later calls reached the model.
    assert examples == 2 + later_calls
    log = batching_server.log()
    assert "Traceback" not in log, log


def test_stopped_reader_does_not_grow_server_memory(batching_server: ServerProcess) -> None:
    with TensorgateClient(batching_server.target) as client:
        assert client.predict("mnist", np.zeros((1, 28, 28), np.float32)).shape == (1, 10)
    baseline = batching_server.rss_bytes()
    request_bytes = codec.encode(np.zeros((256, 28, 28), np.float32))
    with grpc.insecure_channel(batching_server.target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        request = StreamPredictRequest(model="mnist")
        request.inputs["keras_tensor"].CopyFrom(request_bytes)
        call = stub.StreamPredict(iter([request] * 5000), timeout=30)
        time.sleep(3)
        grown = batching_server.rss_bytes() - baseline
        call.cancel()
    assert grown < 150 * 2**20, f"server memory grew by {grown / 2**20:.0f} MiB while the client did not read"
