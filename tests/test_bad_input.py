"""Every bad input gets a clear status, and the server keeps serving after it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from tensorgate.clients.client import StreamItemError, TensorgateClient
from tensorgate.clients.datasets import MnistData
from tensorgate.v1 import codec, inference_service_pb2_grpc
from tensorgate.v1.inference_service_pb2 import PredictRequest, StreamPredictRequest
from tensorgate.v1.tensor_pb2 import DataType, Tensor

from conftest import ServerProcess, mnist_inputs

GOOD = np.full((2, 28, 28), 0.5, dtype=np.float32)


def request_with(tensor: Tensor, model: str = "mnist", version: str = "", name: str = "keras_tensor") -> PredictRequest:
    request = PredictRequest(model=model, version=version)
    request.inputs[name].CopyFrom(tensor)
    return request


def raw(array: np.ndarray) -> Tensor:
    return codec.encode(array)


def typed(dtype: int, shape: list[int], **values: list[float]) -> Tensor:
    return Tensor(dtype=dtype, shape=shape, **values)


BAD_REQUESTS: dict[str, tuple[PredictRequest, grpc.StatusCode, str]] = {
    "unknown model": (request_with(raw(GOOD), model="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    "unknown version": (request_with(raw(GOOD), version="7"), grpc.StatusCode.NOT_FOUND, "has no version 7"),
    "version zero": (request_with(raw(GOOD), version="0"), grpc.StatusCode.INVALID_ARGUMENT, "positive"),
    "unknown label": (
        request_with(raw(GOOD), version="stable"),
        grpc.StatusCode.NOT_FOUND,
        "no version label 'stable'",
    ),
    "no model": (request_with(raw(GOOD), model=""), grpc.StatusCode.INVALID_ARGUMENT, "model is required"),
    "wrong input name": (
        request_with(raw(GOOD), name="image"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "missing ['keras_tensor']; unknown ['image']",
    ),
    "wrong dtype": (
        request_with(raw(GOOD.astype(np.float64))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected dtype float32, got float64",
    ),
    "wrong shape": (
        request_with(raw(np.zeros((2, 28, 27), np.float32))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected shape [-1, 28, 28], got [2, 28, 27]",
    ),
    "wrong rank": (
        request_with(raw(np.zeros((2, 784), np.float32))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected shape [-1, 28, 28], got [2, 784]",
    ),
    "element count": (
        request_with(typed(DataType.DATA_TYPE_FLOAT32, [1, 28, 28], float_values=[0.5] * 700)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 784 values, got 700",
    ),
    "values in the wrong field": (
        request_with(typed(DataType.DATA_TYPE_FLOAT32, [1, 1], double_values=[0.5])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "takes its values in float_values",
    ),
    "NaN": (
        request_with(raw(np.where(np.arange(2 * 28 * 28).reshape(GOOD.shape) == 5, np.nan, GOOD).astype(np.float32))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN or infinite",
    ),
    "raw length": (
        request_with(Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[1, 28, 28], raw_contents=b"\0" * 3000)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 3136 raw bytes, got 3000",
    ),
    "empty batch": (
        request_with(Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[0, 28, 28])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "is empty",
    ),
    "too many examples": (
        request_with(raw(np.zeros((4097, 28, 28), np.float32))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch of 4097 examples exceeds the limit of 4096",
    ),
    "dtype not set": (
        request_with(Tensor(shape=[1, 28, 28], float_values=[0.0] * 784)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dtype is DATA_TYPE_UNSPECIFIED",
    ),
    "negative dimension": (
        request_with(Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[-1, 28, 28])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "negative dimension",
    ),
    "two encodings": (
        request_with(Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[1], float_values=[1], raw_contents=b"\0" * 4)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "use one encoding",
    ),
    "uint8 out of range": (
        request_with(typed(DataType.DATA_TYPE_UINT8, [1], int_values=[300])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside the range of uint8",
    ),
    "failed model": (request_with(raw(GOOD), model="broken"), grpc.StatusCode.UNAVAILABLE, "cannot load SavedModel"),
    "failed version": (
        request_with(raw(GOOD), model="broken", version="1"),
        grpc.StatusCode.UNAVAILABLE,
        "version 1 is failed: cannot load SavedModel",
    ),
    "model without versions": (request_with(raw(GOOD), model="empty"), grpc.StatusCode.UNAVAILABLE, "no version"),
}


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[inference_service_pb2_grpc.InferenceServiceStub]:
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        yield inference_service_pb2_grpc.InferenceServiceStub(channel)


def assert_still_serving(client: TensorgateClient) -> None:
    assert client.predict("mnist", GOOD).shape == (2, 10)


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_status_and_server_survives(
    case: str, stub: inference_service_pb2_grpc.InferenceServiceStub, client: TensorgateClient
) -> None:
    request, code, message = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=10)
    assert raised.value.code() == code, raised.value.details()
    assert message in raised.value.details()
    assert_still_serving(client)


def test_garbage_bytes_are_invalid_argument(server: ServerProcess, client: TensorgateClient) -> None:
    with grpc.insecure_channel(server.target) as channel:
        for method in ("/tensorgate.v1.InferenceService/Predict", "/tensorgate.v1.ModelService/GetModelMetadata"):
            call = channel.unary_unary(method)
            with pytest.raises(grpc.RpcError) as raised:
                call(b"\xff\xff\xff\xff garbage \x00\x01", timeout=5)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "request is not a valid tensorgate.v1." in raised.value.details()
    assert_still_serving(client)


def test_oversized_message_is_refused(server: ServerProcess, client: TensorgateClient) -> None:
    huge = np.zeros((24_000, 28, 28), np.float32)  # 75 MB, over the 64 MiB message limit
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 128 << 20)]) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request_with(raw(huge)), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(client)


def test_bad_stream_message_fails_alone(client: TensorgateClient) -> None:
    batches = [{"keras_tensor": GOOD}, {"keras_tensor": GOOD.astype(np.float64)}, {"keras_tensor": GOOD}]
    results = client.stream_predict_batches("mnist", batches)
    assert next(results)["output_0"].shape == (2, 10)
    with pytest.raises(StreamItemError) as raised:
        next(results)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and "float64" in str(raised.value)


def test_stream_answers_every_message_with_its_id(stub: inference_service_pb2_grpc.InferenceServiceStub) -> None:
    def requests() -> Iterator[StreamPredictRequest]:
        for i, model in enumerate(["mnist", "nope", "mnist", "broken", "mnist"]):
            request = StreamPredictRequest(id=f"r{i}", model=model)
            request.inputs["keras_tensor"].CopyFrom(raw(GOOD))
            yield request

    responses = list(stub.StreamPredict(requests(), timeout=30))
    assert [r.id for r in responses] == ["r0", "r1", "r2", "r3", "r4"]
    codes = [grpc.StatusCode.OK.value[0] if not r.HasField("error") else r.error.code for r in responses]
    assert codes == [0, grpc.StatusCode.NOT_FOUND.value[0], 0, grpc.StatusCode.UNAVAILABLE.value[0], 0]
    assert all(r.version == "1" for r in responses[::2])


def wait_for_log(server: ServerProcess, condition: Callable[[str], bool], timeout_s: float = 10) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition(log := server.log()):
            return log
        time.sleep(0.1)
    raise AssertionError(f"log condition not met; log tail:\n{server.log()[-3000:]}")


def endless_requests() -> Iterator[StreamPredictRequest]:
    x = raw(np.zeros((256, 28, 28), np.float32))
    i = 0
    while True:
        request = StreamPredictRequest(id=str(i), model="mnist")
        request.inputs["keras_tensor"].CopyFrom(x)
        yield request
        i += 1


def test_cancelled_stream_is_released(
    server: ServerProcess, stub: inference_service_pb2_grpc.InferenceServiceStub, client: TensorgateClient
) -> None:
    before = server.log().count('"outcome": "cancelled"')
    call = stub.StreamPredict(endless_requests())
    for _, _ in zip(range(5), call, strict=False):
        pass
    call.cancel()
    wait_for_log(server, lambda log: log.count('"outcome": "cancelled"') > before)
    assert_still_serving(client)


def test_expired_deadline(
    server: ServerProcess, stub: inference_service_pb2_grpc.InferenceServiceStub, client: TensorgateClient
) -> None:
    before = server.log().count('"outcome": "cancelled"')
    with pytest.raises(grpc.RpcError) as raised:
        for _ in stub.StreamPredict(endless_requests(), timeout=0.5):
            pass
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for_log(server, lambda log: log.count('"outcome": "cancelled"') > before)
    big = mnist_inputs(np.zeros((4096, 28, 28), np.uint8))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request_with(raw(big)), timeout=0.001)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_still_serving(client)


def test_unknown_metadata_and_status(client: TensorgateClient) -> None:
    for call, code in [
        (lambda: client.model_metadata("nope"), grpc.StatusCode.NOT_FOUND),
        (lambda: client.model_status("nope"), grpc.StatusCode.NOT_FOUND),
        (lambda: client.model_status("mnist", "9"), grpc.StatusCode.NOT_FOUND),
        (lambda: client.model_metadata("broken"), grpc.StatusCode.UNAVAILABLE),
    ]:
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == code
    assert_still_serving(client)


def test_mnist_fixture_sanity(mnist: MnistData) -> None:
    assert mnist.x_test.shape == (10_000, 28, 28) and mnist.x_train.shape == (60_000, 28, 28)
    assert np.bincount(mnist.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
