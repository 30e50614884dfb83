"""End to end through the generated stubs: MNIST accuracy on both RPCs, health, reflection, status, metadata."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData
from tensorgate.v1 import codec, inference_service_pb2_grpc
from tensorgate.v1.inference_service_pb2 import PredictRequest, StreamPredictRequest
from tensorgate.v1.model_service_pb2 import ModelVersionState
from tensorgate.v1.tensor_pb2 import DataType

from conftest import ServerProcess, mnist_inputs


def test_mnist_test_set_same_answers_on_predict_and_stream(client: TensorgateClient, mnist: MnistData) -> None:
    x = mnist_inputs(mnist.x_test)
    unary = np.concatenate([client.predict("mnist", x[i : i + 500]) for i in range(0, len(x), 500)])
    streamed = np.stack(list(client.stream_predict("mnist", iter(x), batch_size=128)))
    assert unary.shape == streamed.shape == (10_000, 10)
    np.testing.assert_array_equal(unary.argmax(1), streamed.argmax(1))
    np.testing.assert_allclose(unary, streamed, rtol=1e-5, atol=1e-6)
    accuracy = float((unary.argmax(1) == mnist.y_test).mean())
    print(f"MNIST test accuracy through the server: {accuracy:.4f}")
    assert accuracy >= 0.97


def test_typed_json_style_values_give_typed_outputs(server: ServerProcess, mnist: MnistData) -> None:
    """REST callers send typed repeated fields; they get typed fields back, equal to the raw path."""
    x = mnist_inputs(mnist.x_test[:4])
    request = PredictRequest(model="mnist")
    request.inputs["keras_tensor"].dtype = DataType.DATA_TYPE_FLOAT32
    request.inputs["keras_tensor"].shape.extend(x.shape)
    request.inputs["keras_tensor"].float_values.extend(x.ravel().tolist())
    with grpc.insecure_channel(server.target) as channel:
        response = inference_service_pb2_grpc.InferenceServiceStub(channel).Predict(request, timeout=10)
    output = response.outputs["output_0"]
    assert not output.raw_contents and len(output.float_values) == 40
    assert response.version == "1"
    with TensorgateClient(server.target) as client:
        np.testing.assert_allclose(codec.decode(output), client.predict("mnist", x), rtol=1e-6)


def test_health_overall_and_per_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tensorgate.v1.InferenceService", "tensorgate.v1.ModelService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        try:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
            raise AssertionError("unknown service must be NOT_FOUND")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_services(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "tensorgate.v1.InferenceService",
        "tensorgate.v1.ModelService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


def test_list_models_and_status(client: TensorgateClient) -> None:
    models = {m.name: m for m in client.list_models()}
    assert sorted(models) == ["broken", "empty", "mnist", "scorer"]
    mnist = client.model_status("mnist")
    assert [(v.version, v.state) for v in mnist.versions] == [("1", ModelVersionState.MODEL_VERSION_STATE_AVAILABLE)]
    assert mnist.versions[0].device.endswith(":0")
    broken = client.model_status("broken", "1").versions[0]
    assert broken.state == ModelVersionState.MODEL_VERSION_STATE_FAILED
    assert "cannot load SavedModel" in broken.error
    assert client.model_status("empty").versions == []


def test_status_and_metrics_show_the_runtime(server: ServerProcess, client: TensorgateClient) -> None:
    """Under the default runtime "auto", MNIST on a CPU converts to TFLite (a GPU always runs TensorFlow); the
    scorer's strings and float64 keep it on TensorFlow."""
    [mnist] = client.model_status("mnist").versions
    expected = "tflite" if mnist.device.startswith("CPU") else "tensorflow"
    assert mnist.runtime == expected
    assert client.model_status("scorer").versions[0].runtime == "tensorflow"
    assert client.model_status("broken").versions[0].runtime == ""
    assert server.metric("tensorgate_model_runtime_info", model="mnist", version="1", runtime=expected) == 1


def test_metadata_describes_the_signature(client: TensorgateClient) -> None:
    metadata = client.model_metadata("mnist")
    assert (metadata.model, metadata.version, metadata.signature_name) == ("mnist", "1", "serving_default")
    [spec] = metadata.inputs
    assert (spec.name, spec.dtype, list(spec.shape)) == ("keras_tensor", DataType.DATA_TYPE_FLOAT32, [-1, 28, 28])
    [out] = metadata.outputs
    assert (out.name, out.dtype, list(out.shape)) == ("output_0", DataType.DATA_TYPE_FLOAT32, [-1, 10])


def test_second_model_serves_through_the_same_code(client: TensorgateClient) -> None:
    metadata = client.model_metadata("scorer")
    specs = {s.name: (codec.dtype_name(s.dtype), list(s.shape)) for s in metadata.inputs}
    assert specs == {"features": ("float64", [-1, 3]), "tag": ("string", [-1]), "counts": ("int32", [-1, 2])}
    inputs = {
        "features": np.array([[1.5, 2, 3], [-1, 0, 0.25]]),
        "tag": np.array([b"abc", "h\u00e9llo".encode()], dtype=object),
        "counts": np.array([[1, 2], [30, 40]], dtype=np.int32),
    }
    outputs = client.predict_tensors("scorer", inputs)
    np.testing.assert_array_equal(outputs["scaled"], inputs["features"] * 2)
    np.testing.assert_array_equal(outputs["tag_length"], [3, 6])
    assert outputs["total"].dtype == np.int64 and outputs["total"].tolist() == [3, 70]
    assert outputs["positive"].tolist() == [True, False]
    filtered = client.predict_tensors("scorer", inputs, output_filter=["total"])
    assert list(filtered) == ["total"]
    streamed = list(client.stream_predict_batches("scorer", [inputs, inputs]))
    assert [s["total"].tolist() for s in streamed] == [[3, 70], [3, 70]]


def test_stream_back_pressure_bounds_what_the_server_reads(server: ServerProcess) -> None:
    """A client that sends without reading answers is held back: the server stops reading at its window."""
    request = StreamPredictRequest(model="mnist")
    request.inputs["keras_tensor"].CopyFrom(codec.encode(np.zeros((256, 28, 28), np.float32)))
    pulled = 0

    def requests() -> Iterator[StreamPredictRequest]:
        nonlocal pulled
        while pulled < 10_000:
            pulled += 1
            yield request

    # Without BDP probing the client's receive window stays at 64 kB, so answers cannot pile up there either.
    with grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        call = inference_service_pb2_grpc.InferenceServiceStub(channel).StreamPredict(requests(), timeout=30)
        time.sleep(3)  # never read a response
        held_back_at = pulled
        print(f"client held back after {held_back_at} requests")
        call.cancel()
    # 8 requests in the window, 8 answers waiting to be written, and what HTTP/2 windows hold (~800 kB each).
    assert held_back_at < 100, f"the client could push {held_back_at} requests of 800 kB without reading"
