"""TensorFlow Serving's REST API on the server's TF Serving REST port, driven as TF Serving's REST API document
drives it (curl-equivalent requests): model status, metadata, the row and columnar predict formats with named and
single inputs and ``b64`` bytes; the MNIST test set gives tensorgate's own client's classes; bad requests get
TF Serving's statuses with an ``{"error": ...}`` body.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import grpc
import numpy as np
import pytest

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData
from tensorgate.v1 import model_service_pb2_grpc
from tensorgate.v1.model_service_pb2 import SetModelLabelsRequest

from conftest import ServerProcess, mnist_inputs

BATCH = 1000


def http(url: str, method: str = "GET", body: bytes | Any = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_model_status(server: ServerProcess) -> None:
    url = f"{server.tfserving_rest_url}/v1/models"
    available = {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert http(f"{url}/mnist") == (200, {"model_version_status": [available]})
    assert http(f"{url}/mnist/versions/1") == (200, {"model_version_status": [available]})
    status, broken = http(f"{url}/broken")
    [version] = broken["model_version_status"]
    assert status == 200 and version["state"] == "END" and version["status"]["error_code"] == "UNKNOWN"
    assert version["status"]["error_message"]
    for path, message in (
        ("nope", "not found"),
        ("mnist/versions/7", "no version 7"),
        ("mnist/labels/stable", "label"),
    ):
        status, error = http(f"{url}/{path}")
        assert status == 404 and list(error) == ["error"] and message in error["error"], error


def test_model_metadata_as_tf_serving_prints_it(server: ServerProcess) -> None:
    status, metadata = http(f"{server.tfserving_rest_url}/v1/models/scorer/metadata")
    assert status == 200
    assert metadata["model_spec"] == {"name": "scorer", "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["features"] == {
        "dtype": "DT_DOUBLE",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}], "unknown_rank": False},
        "name": "features",
    }
    assert signature["inputs"]["tag"]["dtype"] == "DT_STRING" and signature["outputs"]["positive"]["dtype"] == "DT_BOOL"
    assert http(f"{server.tfserving_rest_url}/v1/models/scorer/versions/1/metadata")[1] == metadata


@pytest.mark.parametrize("columnar", [False, True])
def test_mnist_test_set_equals_tensorgate_client(server: ServerProcess, mnist: MnistData, columnar: bool) -> None:
    x = mnist_inputs(mnist.x_test)
    with TensorgateClient(server.target) as own:
        expected = np.concatenate([own.predict("mnist", x[i : i + BATCH]) for i in range(0, len(x), BATCH)])
    answers = []
    for i in range(0, len(x), BATCH):
        rows = x[i : i + BATCH].tolist()
        body = {"inputs": rows} if columnar else {"signature_name": "serving_default", "instances": rows}
        status, answer = http(f"{server.tfserving_rest_url}/v1/models/mnist:predict", "POST", body)
        assert status == 200, answer
        answers.append(np.array(answer["outputs" if columnar else "predictions"], np.float32))
    got = np.concatenate(answers)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    print(
        f"TF Serving REST ({'columnar' if columnar else 'row'}): accuracy {(got.argmax(1) == mnist.y_test).mean():.4f}"
    )


def test_named_inputs_b64_and_versions(server: ServerProcess) -> None:
    url = f"{server.tfserving_rest_url}/v1/models/scorer/versions/1:predict"
    tag = base64.b64encode("h\u00e9llo".encode()).decode()
    instances = [
        {"features": [1.5, 2, 3], "tag": "abc", "counts": [1, 2]},
        {"features": [-1, 0, 0.25], "tag": {"b64": tag}, "counts": [30, 40]},
    ]
    status, rows = http(url, "POST", {"instances": instances})
    assert status == 200, rows
    assert rows["predictions"] == [
        {"scaled": [3.0, 4.0, 6.0], "tag_length": 3, "total": 3, "positive": True},
        {"scaled": [-2.0, 0.0, 0.5], "tag_length": 6, "total": 70, "positive": False},
    ]
    columns = {"features": [[1.5, 2, 3], [-1, 0, 0.25]], "tag": ["abc", {"b64": tag}], "counts": [[1, 2], [30, 40]]}
    status, answer = http(url, "POST", {"inputs": columns})
    assert status == 200
    assert answer["outputs"] == {
        "scaled": [[3.0, 4.0, 6.0], [-2.0, 0.0, 0.5]],
        "tag_length": [3, 6],
        "total": [3, 70],
        "positive": [True, False],
    }


def test_labels_name_a_version(server: ServerProcess) -> None:
    """A label set with the admin API names its version in the path, as in TF Serving."""
    url = f"{server.tfserving_rest_url}/v1/models/scorer/labels/stable"
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        stub.SetModelLabels(SetModelLabelsRequest(model="scorer", labels={"stable": 1}), timeout=30)
        try:
            status, answer = http(url)
            assert status == 200 and [v["version"] for v in answer["model_version_status"]] == ["1"], answer
            assert http(f"{url}/metadata")[1]["model_spec"]["version"] == "1"
            body = {"inputs": {"features": [[1.5, 2, 3]], "tag": ["abc"], "counts": [[1, 2]]}}
            status, answer = http(f"{url}:predict", "POST", body)
            assert status == 200 and answer["outputs"]["total"] == [3], answer
        finally:
            stub.SetModelLabels(SetModelLabelsRequest(model="scorer", labels={}), timeout=30)
    assert http(url)[0] == 404


def mnist_row() -> list[list[float]]:
    return [[0.0] * 28] * 28


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("mnist:predict", b"{", 400, "not valid JSON"),
        ("mnist:predict", {"instances": [mnist_row()], "inputs": [mnist_row()]}, 400, "exactly one"),
        ("mnist:predict", {"signature_name": "other", "instances": [mnist_row()]}, 400, "no signature 'other'"),
        ("mnist:predict", {"instances": [[["a"] * 28] * 28]}, 400, "float32 takes numbers, got strings"),
        ("mnist:predict", {"instances": [[[0.0] * 27] * 28]}, 400, "shape"),
        ("mnist:predict", {"instances": [mnist_row(), [[0.0]]]}, 400, "rectangular"),
        ("mnist:predict", {"instances": [{"x": mnist_row()}]}, 400, "not in the signature"),
        ("scorer:predict", {"inputs": [[1.0, 2.0, 3.0]]}, 400, "name each input"),
        (
            "scorer:predict",
            {"inputs": {"features": [[1, 2, 3]], "tag": [{"b64": "!!"}], "counts": [[1, 2]]}},
            400,
            "base64",
        ),
        ("scorer:predict", {"inputs": {"features": [[1, 2, 3]], "tag": ["a"], "counts": [[1, 2**40]]}}, 400, "range"),
        ("nope:predict", {"instances": [1]}, 404, "not found"),
        ("mnist/versions/7:predict", {"instances": [mnist_row()]}, 404, "no version 7"),
        ("mnist/labels/canary:predict", {"instances": [mnist_row()]}, 404, "label"),
        ("mnist:classify", {"examples": [{}]}, 501, "not supported"),
        ("mnist:regress", {"examples": [{}]}, 501, "not supported"),
        ("broken:predict", {"instances": [1]}, 503, "failed"),
    ],
)
def test_bad_requests_get_tf_servings_status(
    server: ServerProcess, path: str, body: bytes | Any, status: int, message: str
) -> None:
    got, answer = http(f"{server.tfserving_rest_url}/v1/models/{path}", "POST", body)
    assert got == status, answer
    assert list(answer) == ["error"] and message in answer["error"], answer
    assert http(f"{server.tfserving_rest_url}/v1/models/mnist")[0] == 200


def test_calls_are_counted_like_grpc_ones(server: ServerProcess) -> None:
    labels = {"model": "mnist", "version": "1", "method": "tfserving_rest_predict", "code": "OK"}
    before = server.metric("tensorgate_requests_total", **labels)
    http(f"{server.tfserving_rest_url}/v1/models/mnist:predict", "POST", {"instances": [mnist_row()]})
    assert server.metric("tensorgate_requests_total", **labels) == before + 1
