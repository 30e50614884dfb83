"""The Open Inference Protocol v2 (KServe v2 / Triton) driven by the unmodified PyPI ``tritonclient[grpc]``, and its
gRPC through Envoy: the same answers as tensorgate's own client on the MNIST test set. The API-key test at the
end covers the TF Serving services too (one secured server for both).

This process never imports ``tensorgate.compat.kserve_v2``: its messages have tritonclient's names
(``inference.*``), and protobuf refuses a second definition of a name in one process.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData

from conftest import ServerProcess, add_key, mnist_inputs, start_server

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1000
SCORER_INPUTS = {
    "features": np.array([[1.5, 2, 3], [-1, 0, 0.25]]),
    "tag": np.array([b"abc", "h\u00e9llo".encode()], dtype=object),
    "counts": np.array([[1, 2], [30, 40]], dtype=np.int32),
}


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.target) as client:
        yield client


@pytest.fixture(scope="module")
def expected(server: ServerProcess, mnist: MnistData) -> np.ndarray:
    """tensorgate's own client's answers on the 10,000 test images."""
    x = mnist_inputs(mnist.x_test)
    with TensorgateClient(server.target) as client:
        return np.concatenate([client.predict("mnist", x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def infer_input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def assert_same_answers(got: np.ndarray, expected: np.ndarray, labels: np.ndarray, path: str) -> None:
    assert got.shape == expected.shape == (10_000, 10)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    equal = int((got.argmax(1) == expected.argmax(1)).sum())
    difference = float(np.abs(got - expected).max())
    accuracy = float((got.argmax(1) == labels).mean())
    print(f"{path}: argmax equal on {equal}/10000, max |difference| {difference:.2e}, accuracy {accuracy:.4f}")


def test_vendored_protocol_is_tritons_on_the_wire() -> None:
    """Every message, field number and type, and every method of our copy (from the descriptor set Envoy reads)
    is the same in tritonclient's own descriptors; our model_config.proto is all of Triton's."""
    ours = descriptor_pb2.FileDescriptorSet.FromString((ROOT / "gateway" / "tensorgate.binpb").read_bytes())
    [vendored] = [f for f in ours.file if f.name == "tensorgate/compat/kserve_v2/grpc_service.proto"]
    upstream = descriptor_pb2.FileDescriptorProto.FromString(service_pb2.DESCRIPTOR.serialized_pb)
    assert vendored.package == upstream.package == "inference"
    upstream_messages = {m.name: m for m in upstream.message_type}
    for message in vendored.message_type:
        assert_same_message(message, upstream_messages[message.name])
    [service], [upstream_service] = vendored.service, upstream.service
    assert service.name == upstream_service.name == "GRPCInferenceService"
    upstream_methods = {m.name: m for m in upstream_service.method}
    for method in service.method:
        theirs = upstream_methods[method.name]
        assert (method.input_type, method.output_type) == (theirs.input_type, theirs.output_type)
        assert (method.client_streaming, method.server_streaming) == (theirs.client_streaming, theirs.server_streaming)
    assert {m.name for m in service.method} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }
    [config] = [f for f in ours.file if f.name == "tensorgate/compat/kserve_v2/model_config.proto"]
    upstream_config = descriptor_pb2.FileDescriptorProto.FromString(model_config_pb2.DESCRIPTOR.serialized_pb)
    assert config.package == upstream_config.package
    assert [m.name for m in config.message_type] == [m.name for m in upstream_config.message_type]
    for message, theirs in zip(config.message_type, upstream_config.message_type, strict=True):
        assert_same_message(message, theirs)
    assert [enum_values(e) for e in config.enum_type] == [enum_values(e) for e in upstream_config.enum_type]


def assert_same_message(ours: descriptor_pb2.DescriptorProto, theirs: descriptor_pb2.DescriptorProto) -> None:
    def fields(message: descriptor_pb2.DescriptorProto) -> set[tuple[object, ...]]:
        return {(f.name, f.number, f.type, f.label, f.type_name, f.HasField("oneof_index")) for f in message.field}

    assert fields(ours) == fields(theirs), ours.name
    assert [enum_values(e) for e in ours.enum_type] == [enum_values(e) for e in theirs.enum_type], ours.name
    assert [m.name for m in ours.nested_type] == [m.name for m in theirs.nested_type], ours.name
    for message, nested in zip(ours.nested_type, theirs.nested_type, strict=True):
        assert_same_message(message, nested)


def enum_values(enum: descriptor_pb2.EnumDescriptorProto) -> tuple[str, list[tuple[str, int]]]:
    return enum.name, [(value.name, value.number) for value in enum.value]


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mnist")
    assert client.is_model_ready("mnist", "1")
    assert not client.is_model_ready("mnist", "9")
    assert not client.is_model_ready("broken")  # its only version failed to load
    assert not client.is_model_ready("nope")
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "tensorgate" and metadata["version"]


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    mnist = client.get_model_metadata("mnist", as_json=True)
    assert (mnist["name"], mnist["versions"], mnist["platform"]) == ("mnist", ["1"], "tensorflow_savedmodel")
    assert mnist["inputs"] == [{"name": "keras_tensor", "datatype": "FP32", "shape": ["-1", "28", "28"]}]
    assert mnist["outputs"] == [{"name": "output_0", "datatype": "FP32", "shape": ["-1", "10"]}]
    scorer = client.get_model_metadata("scorer", "1", as_json=True)
    assert {i["name"]: i["datatype"] for i in scorer["inputs"]} == {
        "counts": "INT32",
        "features": "FP64",
        "tag": "BYTES",
    }
    outputs = {o["name"]: o["datatype"] for o in scorer["outputs"]}
    assert outputs == {"positive": "BOOL", "scaled": "FP64", "tag_length": "INT32", "total": "INT64"}


def test_mnist_test_set_raw_contents_equal_tensorgate_client(
    client: triton.InferenceServerClient, mnist: MnistData, expected: np.ndarray
) -> None:
    """tritonclient sends raw_input_contents and reads raw_output_contents."""
    x = mnist_inputs(mnist.x_test)
    answers = []
    for i in range(0, len(x), BATCH):
        result = client.infer("mnist", [infer_input("keras_tensor", x[i : i + BATCH], "FP32")], request_id=str(i))
        response = result.get_response()
        assert (response.model_name, response.model_version, response.id) == ("mnist", "1", str(i))
        assert len(response.raw_output_contents) == 1
        answers.append(result.as_numpy("output_0"))
    assert_same_answers(np.concatenate(answers), expected, mnist.y_test, "tritonclient ModelInfer (raw)")


def test_mnist_test_set_typed_contents_equal_tensorgate_client(
    server: ServerProcess, mnist: MnistData, expected: np.ndarray
) -> None:
    """The typed path (InferTensorContents), through tritonclient's own generated stubs: outputs come back typed."""
    x = mnist_inputs(mnist.x_test)
    answers = []
    with grpc.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for i in range(0, len(x), BATCH):
            request = service_pb2.ModelInferRequest(model_name="mnist")
            tensor = request.inputs.add(name="keras_tensor", datatype="FP32", shape=x[i : i + BATCH].shape)
            tensor.contents.fp32_contents.extend(x[i : i + BATCH].ravel().tolist())
            request.outputs.add(name="output_0")
            response = stub.ModelInfer(request, timeout=60)
            assert not response.raw_output_contents
            [output] = response.outputs
            assert (output.name, output.datatype, list(output.shape)) == ("output_0", "FP32", [BATCH, 10])
            answers.append(np.array(output.contents.fp32_contents, np.float32).reshape(BATCH, 10))
    assert_same_answers(np.concatenate(answers), expected, mnist.y_test, "ModelInfer (typed contents)")


def test_mnist_test_set_over_model_stream_infer(
    client: triton.InferenceServerClient, mnist: MnistData, expected: np.ndarray
) -> None:
    """tritonclient's start_stream/async_stream_infer; a bad request in the middle gets its error_message and the
    stream goes on."""
    x = mnist_inputs(mnist.x_test)
    results: queue.Queue[tuple[triton.InferResult | None, InferenceServerException | None]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(0, len(x), 500):
            client.async_stream_infer("mnist", [infer_input("keras_tensor", x[i : i + 500], "FP32")], request_id=str(i))
            if i == 5000:
                bad = infer_input("keras_tensor", x[:2, :, :20].copy(), "FP32")
                client.async_stream_infer("mnist", [bad], request_id="bad")
    finally:
        client.stop_stream()
    answers, errors = {}, []
    while not results.empty():
        result, error = results.get_nowait()
        if error is not None:
            errors.append(error.message())
        else:
            assert result is not None
            answers[int(result.get_response().id)] = result.as_numpy("output_0")
    assert errors == ["input 'keras_tensor': expected shape [-1, 28, 28], got [2, 28, 20]"]
    assert sorted(answers) == list(range(0, 10_000, 500))
    streamed = np.concatenate([answers[i] for i in sorted(answers)])
    assert_same_answers(streamed, expected, mnist.y_test, "tritonclient ModelStreamInfer")


def test_scorer_multi_input_dtypes(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    inputs = [
        infer_input("features", SCORER_INPUTS["features"], "FP64"),
        infer_input("tag", SCORER_INPUTS["tag"], "BYTES"),
        infer_input("counts", SCORER_INPUTS["counts"], "INT32"),
    ]
    result = client.infer("scorer", inputs)
    with TensorgateClient(server.target) as own:
        expected = own.predict_tensors("scorer", SCORER_INPUTS)
    for name, array in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == array.dtype, name
        np.testing.assert_array_equal(got, array)
    assert result.as_numpy("total").tolist() == [3, 70] and result.as_numpy("tag_length").tolist() == [3, 6]
    only = client.infer("scorer", inputs, outputs=[triton.InferRequestedOutput("positive")])
    assert [o.name for o in only.get_response().outputs] == ["positive"]
    assert only.as_numpy("positive").tolist() == [True, False]


@pytest.mark.parametrize(
    ("model", "inputs", "code", "message"),
    [
        ("nope", [("keras_tensor", np.zeros((1, 28, 28), np.float32), "FP32")], "NOT_FOUND", "not found"),
        ("mnist", [("keras_tensor", np.zeros((1, 28, 27), np.float32), "FP32")], "INVALID_ARGUMENT", "shape"),
        ("mnist", [("keras_tensor", np.zeros((1, 28, 28), np.float64), "FP64")], "INVALID_ARGUMENT", "dtype"),
        ("mnist", [("x", np.zeros((1, 28, 28), np.float32), "FP32")], "INVALID_ARGUMENT", "signature"),
        ("broken", [("x", np.zeros((1, 4), np.float32), "FP32")], "UNAVAILABLE", "failed"),
    ],
)
def test_errors_get_their_grpc_status(
    client: triton.InferenceServerClient, model: str, inputs: list[tuple[str, np.ndarray, str]], code: str, message: str
) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer(model, [infer_input(*spec) for spec in inputs])
    assert raised.value.status() == f"StatusCode.{code}"
    assert message in raised.value.message()


def test_malformed_requests_are_invalid_argument(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        cases = []
        raw_count = service_pb2.ModelInferRequest(model_name="mnist", raw_input_contents=[b"", b""])
        raw_count.inputs.add(name="keras_tensor", datatype="FP32", shape=[1, 28, 28])
        cases.append(raw_count)
        short = service_pb2.ModelInferRequest(model_name="mnist", raw_input_contents=[b"\0" * 12])
        short.inputs.add(name="keras_tensor", datatype="FP32", shape=[1, 28, 28])
        cases.append(short)
        bf16 = service_pb2.ModelInferRequest(model_name="mnist", raw_input_contents=[b"\0" * 2 * 784])
        bf16.inputs.add(name="keras_tensor", datatype="BF16", shape=[1, 28, 28])
        cases.append(bf16)
        wrong_field = service_pb2.ModelInferRequest(model_name="mnist")
        wrong_field.inputs.add(name="keras_tensor", datatype="FP32", shape=[1, 1]).contents.int_contents.append(1)
        cases.append(wrong_field)
        for request in cases:
            with pytest.raises(grpc.RpcError) as raised:
                stub.ModelInfer(request, timeout=10)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        undecodable = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as raised:
            undecodable(b"\xff\xff\xff", timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_tritons_other_methods_are_unimplemented(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.get_system_shared_memory_status()
    assert raised.value.status() == "StatusCode.UNIMPLEMENTED"


def test_model_config_of_the_default_configuration(client: triton.InferenceServerClient) -> None:
    """Batched models show dims without the batch dimension (BYTES as Triton's TYPE_STRING, a per-example scalar
    as no dims); the server's default batching; the default version policy."""
    mnist = client.get_model_config("mnist").config
    assert (mnist.name, mnist.platform, mnist.backend, mnist.max_batch_size) == (
        "mnist",
        "tensorflow_savedmodel",
        "tensorflow",
        256,
    )
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in mnist.input] == [
        ("keras_tensor", "TYPE_FP32", [28, 28])
    ]
    assert [(o.name, model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in mnist.output] == [
        ("output_0", "TYPE_FP32", [10])
    ]
    batching = mnist.dynamic_batching
    assert (list(batching.preferred_batch_size), batching.max_queue_delay_microseconds) == ([], 0)
    assert batching.default_queue_policy.max_queue_size == 1024
    assert mnist.version_policy.latest.num_versions == 1
    scorer = client.get_model_config("scorer", "1").config
    types = {i.name: (model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in scorer.input}
    assert types == {"features": ("TYPE_FP64", [3]), "tag": ("TYPE_STRING", []), "counts": ("TYPE_INT32", [2])}


def statistics(client: triton.InferenceServerClient, model: str, version: str = "") -> service_pb2.ModelStatistics:
    [model_statistics] = client.get_inference_statistics(model, version).model_stats
    return model_statistics


def test_model_statistics_count_exactly_the_requests_sent(client: triton.InferenceServerClient) -> None:
    """Sequential requests of 1, 3 and 5 images: three model calls of those batch sizes, nine inferences; a
    request the signature refuses counts as failed."""
    before, sent_ms = statistics(client, "mnist"), time.time_ns() // 1_000_000
    for size in (1, 3, 5):
        client.infer("mnist", [infer_input("keras_tensor", np.zeros((size, 28, 28), np.float32), "FP32")])
    with pytest.raises(InferenceServerException):
        client.infer("mnist", [infer_input("keras_tensor", np.zeros((1, 28, 27), np.float32), "FP32")])
    after = statistics(client, "mnist", "1")
    assert (after.name, after.version) == ("mnist", "1")
    assert after.inference_count - before.inference_count == 9
    assert after.execution_count - before.execution_count == 3
    assert after.last_inference >= sent_ms
    stats_before, stats_after = before.inference_stats, after.inference_stats
    for kind, grown in (("success", 3), ("fail", 1), ("queue", 3), ("compute_input", 3), ("compute_infer", 3)):
        was, now = getattr(stats_before, kind), getattr(stats_after, kind)
        assert (now.count - was.count, now.ns > was.ns) == (grown, True), kind
    assert stats_after.compute_output.count - stats_before.compute_output.count == 3
    calls_before = {b.batch_size: b.compute_infer.count for b in before.batch_stats}
    calls_after = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
    assert {size: calls_after[size] - calls_before.get(size, 0) for size in (1, 3, 5)} == {1: 1, 3: 1, 5: 1}
    every_model = client.get_inference_statistics().model_stats
    assert sorted((s.name, s.version) for s in every_model) == [("mnist", "1"), ("scorer", "1")]


def test_repository_index(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    index = client.get_model_repository_index().models
    assert [(m.name, m.version, m.state) for m in index] == [
        ("broken", "1", "UNAVAILABLE"),
        ("empty", "", "UNAVAILABLE"),
        ("mnist", "1", "READY"),
        ("scorer", "1", "READY"),
    ]
    assert "SavedModel" in index[0].reason and index[1].reason == "unloaded"
    with grpc.insecure_channel(server.target) as channel:  # tritonclient cannot ask for the ready ones only
        ready = service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            service_pb2.RepositoryIndexRequest(ready=True), timeout=10
        )
    assert [(m.name, m.state) for m in ready.models] == [("mnist", "READY"), ("scorer", "READY")]


@pytest.mark.parametrize(
    "call",
    [
        lambda client: client.get_model_config("nope"),
        lambda client: client.get_model_config("mnist", "9"),
        lambda client: client.get_inference_statistics("nope"),
        lambda client: client.get_inference_statistics("mnist", "9"),
        lambda client: client.load_model("nope"),
        lambda client: client.unload_model("nope"),
    ],
)
def test_unknown_models_are_not_found(client: triton.InferenceServerClient, call: Any) -> None:
    with pytest.raises(InferenceServerException) as raised:
        call(client)
    assert raised.value.status() == "StatusCode.NOT_FOUND"


def test_calls_are_counted_like_tensorgates_own(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    labels = {"model": "mnist", "version": "1", "method": "kserve_model_infer", "code": "OK"}
    before = server.metric("tensorgate_requests_total", **labels)
    client.infer("mnist", [infer_input("keras_tensor", np.zeros((2, 28, 28), np.float32), "FP32")])
    assert server.metric("tensorgate_requests_total", **labels) == before + 1
    assert server.metric("tensorgate_model_examples_total", model="mnist", version="1") > 0


def test_tritonclient_through_envoy(stack: ServerProcess, mnist: MnistData) -> None:
    x = mnist_inputs(mnist.x_test[:100])
    with triton.InferenceServerClient(stack.gateway_target) as client:
        assert client.is_server_ready() and client.is_model_ready("mnist")
        got = client.infer("mnist", [infer_input("keras_tensor", x, "FP32")]).as_numpy("output_0")
        assert client.get_model_config("mnist").config.max_batch_size == 256
        assert statistics(client, "mnist").inference_count >= 100
        assert ("mnist", "1", "READY") in [
            (m.name, m.version, m.state) for m in client.get_model_repository_index().models
        ]
    with TensorgateClient(stack.target) as own:
        np.testing.assert_array_equal(got, own.predict("mnist", x))


def test_same_authentication_as_tensorgates_own(repository: Path, tmp_path: Path) -> None:
    """API keys guard the v2 and TF Serving methods as they guard tensorgate.v1's; the v2 health checks stay open."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    shutil.copytree(repository / "mnist", tmp_path / "models" / "mnist")
    keys_file = tmp_path / "keys.toml"
    key = add_key(keys_file, "batch-job", "predict")
    other_model_key = add_key(keys_file, "scorer-reader", "predict", models="scorer")
    secured = start_server(tmp_path / "models", tmp_path / "server.log", "--api-keys-file", str(keys_file))
    x = np.zeros((1, 28, 28), np.float32)
    try:
        with triton.InferenceServerClient(secured.target) as client:
            assert client.is_server_live() and client.is_server_ready()
            for headers, code in ((None, "UNAUTHENTICATED"), ({"x-api-key": other_model_key}, "PERMISSION_DENIED")):
                with pytest.raises(InferenceServerException) as raised:
                    client.infer("mnist", [infer_input("keras_tensor", x, "FP32")], headers=headers)
                assert raised.value.status() == f"StatusCode.{code}"
            with pytest.raises(InferenceServerException) as raised:
                client.is_model_ready("mnist")
            assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
            result = client.infer("mnist", [infer_input("keras_tensor", x, "FP32")], headers={"x-api-key": key})
            assert result.as_numpy("output_0").shape == (1, 10)
            errors: queue.Queue[InferenceServerException | None] = queue.Queue()
            client.start_stream(callback=lambda result, error: errors.put(error))
            with contextlib.suppress(InferenceServerException):  # the server may have refused the stream already
                client.async_stream_infer("mnist", [infer_input("keras_tensor", x, "FP32")])
            client.stop_stream()
            error = errors.get(timeout=10)
            assert error is not None and "StatusCode.UNAUTHENTICATED" in str(error.status())
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mnist"
        request.inputs["keras_tensor"].CopyFrom(tf.make_tensor_proto(x))
        with grpc.insecure_channel(secured.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as denied:
                stub.Predict(request, timeout=10)
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stub.Predict(request, timeout=10, metadata=[("x-api-key", key)]).outputs["output_0"].float_val
    finally:
        assert secured.stop() == 0, secured.log()[-3000:]
    assert key not in secured.log() and other_model_key not in secured.log()
