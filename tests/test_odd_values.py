"""Oversized and odd names, versions and labels on every RPC and REST route: a precise 400/404-class answer
with a short message, never INTERNAL, RESOURCE_EXHAUSTED or a 5xx, and the server keeps serving."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterator

import grpc
import grpc_tools.protoc  # noqa: F401  (before TensorFlow: see test_tfserving.py)
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf.message import Message
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2
from test_gateway import rest
from tritonclient.grpc import service_pb2 as oip

from tensorgate.clients.client import TensorgateClient
from tensorgate.v1 import codec
from tensorgate.v1 import inference_service_pb2 as v1
from tensorgate.v1 import model_service_pb2 as v1_models

from conftest import ServerProcess

IMAGE = np.full((1, 28, 28), 0.5, np.float32)
BAD = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
CODES = {code.value[0]: code for code in grpc.StatusCode}
# A status message repeats at most a few hundred characters of what the caller sent.
MAX_MESSAGE = 2000

ODD_VERSIONS = {
    "4301 digits": "9" * 4301,
    "20 digits": "1" * 20,
    "19 digits over int64": "9" * 19,
    "zero padded to zero": "000",
    "negative": "-1",
    "superscript digit": "\u00b2",
    "8 KiB label": "l" * 8192,
    "label with NUL": "stable\x00",
    "label with newline": "stable\nx",
    "spaces": " 1 ",
}
ODD_MODELS = {
    "8 KiB name": "m" * 8192,
    "path traversal": "../../etc/passwd",
    "NUL": "mnist\x00",
    "non-ASCII": "\u00e9" * 300,
}
CASES = [("version", name, "mnist", value) for name, value in ODD_VERSIONS.items()] + [
    ("model", name, value, "") for name, value in ODD_MODELS.items()
]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _v1_predict(model: str, version: str) -> Message:
    request = v1.PredictRequest(model=model, version=version)
    request.inputs["keras_tensor"].CopyFrom(codec.encode(IMAGE))
    return request


def _oip_infer(model: str, version: str) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add(name="keras_tensor", datatype="FP32", shape=[1, 28, 28])
    tensor.contents.fp32_contents.extend(IMAGE.ravel().tolist())
    return request


def _spec(model: str, version: str) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=model)
    if version:
        spec.version_label = version
    return spec


def _tfs_predict(model: str, version: str) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=_spec(model, version))
    request.inputs["keras_tensor"].CopyFrom(tf.make_tensor_proto(IMAGE))
    return request


# Every unary RPC that takes a model and a version (or label): method path, request builder, response type.
UNARY: dict[str, tuple[str, Callable[[str, str], Message], type[Message]]] = {
    "v1 Predict": ("/tensorgate.v1.InferenceService/Predict", _v1_predict, v1.PredictResponse),
    "v1 GetModelStatus": (
        "/tensorgate.v1.ModelService/GetModelStatus",
        lambda m, v: v1_models.GetModelStatusRequest(model=m, version=v),
        v1_models.GetModelStatusResponse,
    ),
    "v1 GetModelMetadata": (
        "/tensorgate.v1.ModelService/GetModelMetadata",
        lambda m, v: v1_models.GetModelMetadataRequest(model=m, version=v),
        v1_models.GetModelMetadataResponse,
    ),
    "v1 LoadModel": (
        "/tensorgate.v1.ModelService/LoadModel",
        lambda m, v: v1_models.LoadModelRequest(model=m, version=v or "99"),
        v1_models.LoadModelResponse,
    ),
    "v1 UnloadModel": (
        "/tensorgate.v1.ModelService/UnloadModel",
        lambda m, v: v1_models.UnloadModelRequest(model=m, version=v or "99"),
        v1_models.UnloadModelResponse,
    ),
    "v1 ReloadModel": (
        "/tensorgate.v1.ModelService/ReloadModel",
        lambda m, v: v1_models.ReloadModelRequest(model=m, version=v or "99"),
        v1_models.ReloadModelResponse,
    ),
    "v1 SetModelLabels": (
        "/tensorgate.v1.ModelService/SetModelLabels",
        lambda m, v: v1_models.SetModelLabelsRequest(model=m, labels={v or "stable": 99}),
        v1_models.SetModelLabelsResponse,
    ),
    "OIP ModelInfer": ("/inference.GRPCInferenceService/ModelInfer", _oip_infer, oip.ModelInferResponse),
    "OIP ModelMetadata": (
        "/inference.GRPCInferenceService/ModelMetadata",
        lambda m, v: oip.ModelMetadataRequest(name=m, version=v),
        oip.ModelMetadataResponse,
    ),
    "TF Serving Predict": ("/tensorflow.serving.PredictionService/Predict", _tfs_predict, predict_pb2.PredictResponse),
    "TF Serving GetModelMetadata": (
        "/tensorflow.serving.PredictionService/GetModelMetadata",
        lambda m, v: get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=_spec(m, v), metadata_field=["signature_def"]
        ),
        get_model_metadata_pb2.GetModelMetadataResponse,
    ),
    "TF Serving GetModelStatus": (
        "/tensorflow.serving.ModelService/GetModelStatus",
        lambda m, v: get_model_status_pb2.GetModelStatusRequest(model_spec=_spec(m, v)),
        get_model_status_pb2.GetModelStatusResponse,
    ),
}


@pytest.fixture(scope="module")
def channel(stack: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.target) as channel:
        yield channel


def _assert_refused(code: grpc.StatusCode, message: str, what: str) -> None:
    assert code in BAD, f"{what}: {code} {message[:300]}"
    assert len(message) < MAX_MESSAGE, f"{what}: a message of {len(message)} characters"


@pytest.mark.parametrize(("rpc"), sorted(UNARY))
def test_unary_rpcs_refuse_odd_values_precisely(channel: grpc.Channel, rpc: str) -> None:
    method, build, response = UNARY[rpc]
    call = channel.unary_unary(method, request_serializer=_serialize, response_deserializer=response.FromString)
    for _, case, model, version in CASES:
        with pytest.raises(grpc.RpcError) as caught:
            call(build(model, version), timeout=30)
        _assert_refused(caught.value.code(), caught.value.details() or "", f"{rpc}, {case}")


def test_model_ready_is_false_or_refused(channel: grpc.Channel) -> None:
    """ModelReady answers false for what it cannot find; a version it cannot parse is INVALID_ARGUMENT."""
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelReady",
        request_serializer=_serialize,
        response_deserializer=oip.ModelReadyResponse.FromString,
    )
    for _, case, model, version in CASES:
        try:
            assert not call(oip.ModelReadyRequest(name=model, version=version), timeout=30).ready, case
        except grpc.RpcError as exc:
            _assert_refused(exc.code(), exc.details() or "", f"ModelReady, {case}")


def test_streams_answer_odd_values_in_the_stream(channel: grpc.Channel) -> None:
    """Each odd message of a stream gets its own error; the stream goes on and answers the good one after it."""
    v1_stream = channel.stream_stream(
        "/tensorgate.v1.InferenceService/StreamPredict",
        request_serializer=_serialize,
        response_deserializer=v1.StreamPredictResponse.FromString,
    )
    messages = []
    for i, (_, _, model, version) in enumerate(CASES):
        message = v1.StreamPredictRequest(id=str(i), model=model, version=version)
        message.inputs["keras_tensor"].CopyFrom(codec.encode(IMAGE))
        messages.append(message)
    good = v1.StreamPredictRequest(id="good", model="mnist")
    good.inputs["keras_tensor"].CopyFrom(codec.encode(IMAGE))
    answers = list(v1_stream(iter([*messages, good]), timeout=60))
    assert [a.id for a in answers] == [m.id for m in messages] + ["good"]
    for (_, case, _, _), answer in zip(CASES, answers, strict=False):
        _assert_refused(CODES[answer.error.code], answer.error.message, f"StreamPredict, {case}")
    assert not answers[-1].HasField("error") and answers[-1].outputs

    oip_stream = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=_serialize,
        response_deserializer=oip.ModelStreamInferResponse.FromString,
    )
    requests = [_oip_infer(model, version) for _, _, model, version in CASES] + [_oip_infer("mnist", "")]
    answers_oip = list(oip_stream(iter(requests), timeout=60))
    assert len(answers_oip) == len(requests)
    for (_, case, _, _), answer in zip(CASES, answers_oip, strict=False):
        assert answer.error_message and len(answer.error_message) < MAX_MESSAGE, case
    assert not answers_oip[-1].error_message


REST_ROUTES: dict[str, tuple[str, Callable[[str, str], str], Callable[[str, str], object]]] = {
    "v1 status": ("GET", lambda m, v: f"/v1/models/{m}/versions/{v}", lambda m, v: None),
    "v1 metadata": ("GET", lambda m, v: f"/v1/models/{m}/versions/{v}/metadata", lambda m, v: None),
    "v1 predict": (
        "POST",
        lambda m, v: f"/v1/models/{m}/versions/{v}:predict",
        lambda m, v: {"inputs": {"keras_tensor": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 1], "floatValues": [0]}}},
    ),
    "v1 load": ("POST", lambda m, v: f"/v1/models/{m}:load", lambda m, v: {"version": v}),
    "v1 unload": ("POST", lambda m, v: f"/v1/models/{m}:unload", lambda m, v: {"version": v}),
    "v1 reload": ("POST", lambda m, v: f"/v1/models/{m}:reload", lambda m, v: {"version": v}),
    "v1 set labels": ("POST", lambda m, v: f"/v1/models/{m}:setLabels", lambda m, v: {"labels": {v: "99"}}),
    "v2 metadata": ("GET", lambda m, v: f"/v2/models/{m}/versions/{v}", lambda m, v: None),
    "v2 infer": ("POST", lambda m, v: f"/v2/models/{m}/versions/{v}/infer", lambda m, v: {"inputs": []}),
}


def _segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")


@pytest.mark.parametrize("route", sorted(REST_ROUTES))
def test_rest_routes_refuse_odd_values_precisely(stack: ServerProcess, route: str) -> None:
    method, path, body = REST_ROUTES[route]
    for _, case, model, version in CASES:
        version = version or "1"
        status, text = rest(stack, method, path(_segment(model), _segment(version)), body(model, version))
        assert status in (400, 404), f"{route}, {case}: {status} {text[:300]}"
        assert len(text) < MAX_MESSAGE, f"{route}, {case}: {len(text)} characters"


def test_rest_stream_answers_odd_values_in_the_stream(stack: ServerProcess) -> None:
    tensor = {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 28, 28], "floatValues": IMAGE.ravel().tolist()}
    messages = [
        {"id": str(i), "model": model, "version": version, "inputs": {"keras_tensor": tensor}}
        for i, (_, _, model, version) in enumerate(CASES)
    ]
    status, text = rest(stack, "POST", "/v1/models:streamPredict", messages)
    assert status == 200, text[:300]
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert [line["id"] for line in lines] == [m["id"] for m in messages]
    assert all(line["error"]["code"] in (3, 5) for line in lines), [line["error"] for line in lines]


def test_no_odd_value_reached_internal_and_the_server_serves(stack: ServerProcess) -> None:
    internal = sum(
        value
        for (name, labels), value in stack.metrics().items()
        if name == "tensorgate_requests_total" and ("code", "INTERNAL") in labels
    )
    assert internal == 0
    assert "Traceback" not in stack.log()
    with TensorgateClient(stack.target) as client:
        assert client.predict("mnist", IMAGE).shape == (1, 10)
