"""The TensorFlow Serving API driven by the unmodified PyPI ``tensorflow-serving-api`` stubs with
``tf.make_tensor_proto`` inputs: the same answers as tensorgate's own client on the MNIST test set.

This process never imports ``tensorgate.compat.tfserving``: its messages have TF Serving's names
(``tensorflow.serving.*``), and protobuf refuses a second definition of a name in one process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import grpc
import grpc_tools.protoc  # noqa: F401  (see below)
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData

from conftest import ServerProcess, mnist_inputs

# grpc_tools.protoc is imported above, before TensorFlow, on purpose: protoc.main() run in a process that loaded
# TensorFlow's protobuf library first crashes (test_contracts.py runs it in-process), whatever the order of test files.
BATCH = 1000
VENDORED = (
    "model",
    "predict",
    "get_model_metadata",
    "get_model_status",
    "status",
    "prediction_service",
    "model_service",
)
# Prints the descriptors of our vendored copies, from a process of their own (see the module docstring).
DUMP_VENDORED = f"""
import sys
from google.protobuf import descriptor_pb2
from tensorgate.compat.tfserving import {", ".join(f"{name}_pb2" for name in VENDORED)}
files = [descriptor_pb2.FileDescriptorProto.FromString(m.DESCRIPTOR.serialized_pb) for m in ({
    ", ".join(f"{name}_pb2" for name in VENDORED)
},)]
sys.stdout.buffer.write(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
"""


@pytest.fixture()
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as channel:
        yield channel


@pytest.fixture()
def predictions(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(
    model: str, inputs: dict[str, tensor_pb2.TensorProto], version: int = 0, signature_name: str = ""
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version:
        request.model_spec.version.value = version
    for name, tensor in inputs.items():
        request.inputs[name].CopyFrom(tensor)
    return request


def test_vendored_protos_are_tf_servings_on_the_wire() -> None:
    dumped = subprocess.run([sys.executable, "-c", DUMP_VENDORED], capture_output=True, check=True, timeout=120)
    ours = {f.name.rsplit("/", 1)[1]: f for f in descriptor_pb2.FileDescriptorSet.FromString(dumped.stdout).file}
    for name in VENDORED:
        module = __import__(f"tensorflow_serving.apis.{name}_pb2", fromlist=["DESCRIPTOR"])
        theirs = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        vendored = ours[f"{name}.proto"]
        assert vendored.package == theirs.package == "tensorflow.serving"
        assert [m.SerializeToString() for m in vendored.message_type] == [
            m.SerializeToString() for m in theirs.message_type
        ], name
        assert [e.SerializeToString() for e in vendored.enum_type] == [e.SerializeToString() for e in theirs.enum_type]
        upstream_methods = {(s.name, m.name): m for s in theirs.service for m in s.method}
        for service in vendored.service:
            for method in service.method:
                assert method == upstream_methods[service.name, method.name]


def test_mnist_test_set_equals_tensorgate_client(
    predictions: prediction_service_pb2_grpc.PredictionServiceStub, server: ServerProcess, mnist: MnistData
) -> None:
    """tf.make_tensor_proto inputs (tensor_content), the signature named, tf.make_ndarray on the answer."""
    x = mnist_inputs(mnist.x_test)
    answers = []
    for i in range(0, len(x), BATCH):
        request = predict_request(
            "mnist", {"keras_tensor": tf.make_tensor_proto(x[i : i + BATCH])}, signature_name="serving_default"
        )
        response = predictions.Predict(request, timeout=60)
        assert (response.model_spec.name, response.model_spec.version.value) == ("mnist", 1)
        assert response.model_spec.signature_name == "serving_default"
        output = response.outputs["output_0"]
        assert output.dtype == types_pb2.DT_FLOAT and len(output.float_val) == BATCH * 10  # typed, as TF Serving
        answers.append(tf.make_ndarray(output))
    got = np.concatenate(answers)
    with TensorgateClient(server.target) as own:
        expected = np.concatenate([own.predict("mnist", x[i : i + BATCH]) for i in range(0, len(x), BATCH)])
    assert got.shape == expected.shape == (10_000, 10)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    accuracy = float((got.argmax(1) == mnist.y_test).mean())
    print(
        f"TF Serving Predict: argmax equal on {int((got.argmax(1) == expected.argmax(1)).sum())}/10000, "
        f"max |difference| {float(np.abs(got - expected).max()):.2e}, accuracy {accuracy:.4f}"
    )


def test_typed_values_version_and_broadcast(
    predictions: prediction_service_pb2_grpc.PredictionServiceStub, server: ServerProcess, mnist: MnistData
) -> None:
    """Inputs in float_val (hand-built TensorProto), a version number, and TF's rule that fewer values than
    elements repeat the last one (tf.make_tensor_proto(0.0, shape=...))."""
    x = mnist_inputs(mnist.x_test[:100])
    typed = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=x.ravel().tolist())
    for size in x.shape:
        typed.tensor_shape.dim.add(size=size)
    response = predictions.Predict(predict_request("mnist", {"keras_tensor": typed}, version=1), timeout=30)
    zeros = tf.make_tensor_proto(0.0, shape=[2, 28, 28])
    assert len(zeros.float_val) == 1
    broadcast = predictions.Predict(predict_request("mnist", {"keras_tensor": zeros}), timeout=30)
    with TensorgateClient(server.target) as own:
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["output_0"]), own.predict("mnist", x), rtol=1e-6)
        expected_zeros = own.predict("mnist", np.zeros((2, 28, 28), np.float32))
    np.testing.assert_allclose(tf.make_ndarray(broadcast.outputs["output_0"]), expected_zeros, rtol=1e-6)


def test_scorer_multi_input_dtypes(
    predictions: prediction_service_pb2_grpc.PredictionServiceStub, server: ServerProcess
) -> None:
    inputs = {
        "features": np.array([[1.5, 2, 3], [-1, 0, 0.25]]),
        "tag": np.array([b"abc", "h\u00e9llo".encode()], dtype=object),
        "counts": np.array([[1, 2], [30, 40]], dtype=np.int32),
    }
    request = predict_request("scorer", {name: tf.make_tensor_proto(value) for name, value in inputs.items()})
    request.output_filter.extend(["total", "positive", "tag_length", "scaled"])
    response = predictions.Predict(request, timeout=30)
    with TensorgateClient(server.target) as own:
        expected = own.predict_tensors("scorer", inputs)
    assert sorted(response.outputs) == sorted(expected)
    for name, array in expected.items():
        got = tf.make_ndarray(response.outputs[name])
        assert got.dtype == array.dtype, name
        np.testing.assert_array_equal(got, array)
    assert list(response.outputs["total"].int64_val) == [3, 70]
    assert list(response.outputs["positive"].bool_val) == [True, False]


def test_get_model_metadata_signature_def(predictions: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "scorer"
    response = predictions.GetModelMetadata(request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("scorer", 1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    dtypes = {name: info.dtype for name, info in signature.inputs.items()}
    assert dtypes == {"features": types_pb2.DT_DOUBLE, "tag": types_pb2.DT_STRING, "counts": types_pb2.DT_INT32}
    shapes = {name: [d.size for d in info.tensor_shape.dim] for name, info in signature.inputs.items()}
    assert shapes == {"features": [-1, 3], "tag": [-1], "counts": [-1, 2]}
    assert signature.outputs["total"].dtype == types_pb2.DT_INT64
    assert signature.outputs["positive"].dtype == types_pb2.DT_BOOL

    request.model_spec.name = "mnist"
    mnist = get_model_metadata_pb2.SignatureDefMap()
    predictions.GetModelMetadata(request, timeout=10).metadata["signature_def"].Unpack(mnist)
    keras_tensor = mnist.signature_def["serving_default"].inputs["keras_tensor"]
    assert keras_tensor.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in keras_tensor.tensor_shape.dim] == [-1, 28, 28]


def test_get_model_status(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)

    def status(model: str, version: int | None = None) -> get_model_status_pb2.GetModelStatusResponse:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        return stub.GetModelStatus(request, timeout=10)

    [mnist] = status("mnist").model_version_status
    assert (mnist.version, mnist.state) == (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    assert mnist.HasField("status") and mnist.status.error_code == 0 and not mnist.status.error_message
    assert [v.version for v in status("mnist", 1).model_version_status] == [1]
    [broken] = status("broken").model_version_status
    assert broken.state == get_model_status_pb2.ModelVersionStatus.END
    assert broken.status.error_code != 0 and "cannot load SavedModel" in broken.status.error_message
    for model, version in (("nope", None), ("mnist", 9), ("empty", None)):
        with pytest.raises(grpc.RpcError) as raised:
            status(model, version)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND, (model, version)


ZEROS = np.zeros((1, 28, 28), np.float32)
ERRORS = {
    "unknown model": (predict_request("nope", {"keras_tensor": tf.make_tensor_proto(ZEROS)}), "NOT_FOUND"),
    "unknown version": (
        predict_request("mnist", {"keras_tensor": tf.make_tensor_proto(ZEROS)}, version=9),
        "NOT_FOUND",
    ),
    "wrong shape": (
        predict_request("mnist", {"keras_tensor": tf.make_tensor_proto(ZEROS[:, :, :27])}),
        "INVALID_ARGUMENT",
    ),
    "wrong dtype": (
        predict_request("mnist", {"keras_tensor": tf.make_tensor_proto(ZEROS.astype(np.float64))}),
        "INVALID_ARGUMENT",
    ),
    "unknown signature": (
        predict_request("mnist", {"keras_tensor": tf.make_tensor_proto(ZEROS)}, signature_name="classify"),
        "INVALID_ARGUMENT",
    ),
    "short tensor_content": (
        predict_request(
            "mnist",
            {"keras_tensor": tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\0" * 8)},
        ),
        "INVALID_ARGUMENT",
    ),
    "unsupported dtype": (
        predict_request("mnist", {"keras_tensor": tf.make_tensor_proto(ZEROS.astype(np.complex64))}),
        "INVALID_ARGUMENT",
    ),
    "failed model": (predict_request("broken", {"x": tf.make_tensor_proto(ZEROS)}), "UNAVAILABLE"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_predict_errors_get_their_grpc_status(
    predictions: prediction_service_pb2_grpc.PredictionServiceStub, case: str
) -> None:
    request, code = ERRORS[case]
    with pytest.raises(grpc.RpcError) as raised:
        predictions.Predict(request, timeout=10)
    assert raised.value.code() == getattr(grpc.StatusCode, code), raised.value.details()


def test_metadata_needs_the_signature_def_field(predictions: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    for fields in ([], ["signature_def", "other"]):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
        request.model_spec.name = "mnist"
        with pytest.raises(grpc.RpcError) as raised:
            predictions.GetModelMetadata(request, timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_methods_left_out_are_unimplemented(
    predictions: prediction_service_pb2_grpc.PredictionServiceStub, channel: grpc.Channel
) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "mnist"
    with pytest.raises(grpc.RpcError) as raised:
        predictions.Classify(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as raised:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(), timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
