"""The Open Inference Protocol's REST API on the server's v2 REST port, driven by the unmodified PyPI
``tritonclient[http]`` (binary and JSON tensors, async_infer, metadata) and by requests in the shape of the KServe
v2 protocol document, sent as curl would: the same answers as tensorgate's own client on the MNIST test set, and
the documented status with an ``{"error": ...}`` body for each kind of bad request.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData

from conftest import ServerProcess, add_key, mnist_inputs, start_server
from support.processes import wait_until as wait_for

BATCH = 1000
SCORER_INPUTS = {
    "features": np.array([[1.5, 2, 3], [-1, 0, 0.25]]),
    "tag": np.array([b"abc", "h\u00e9llo".encode()], dtype=object),
    "counts": np.array([[1, 2], [30, 40]], dtype=np.int32),
}
SCORER_DATATYPES = {"features": "FP64", "tag": "BYTES", "counts": "INT32"}


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.rest_url.removeprefix("http://"), concurrency=4)
    yield client
    client.close()


@pytest.fixture(scope="module")
def expected(server: ServerProcess, mnist: MnistData) -> np.ndarray:
    """tensorgate's own client's answers on the 10,000 test images."""
    x = mnist_inputs(mnist.x_test)
    with TensorgateClient(server.target) as client:
        return np.concatenate([client.predict("mnist", x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def http(
    url: str, method: str, body: bytes | Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One request as curl sends it: the status, the headers and the JSON body of the answer."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, answer_headers, text = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, answer_headers, text = exc.code, dict(exc.headers), exc.read()
    return status, answer_headers, json.loads(text)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist") and client.is_model_ready("mnist", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("broken")
    assert not client.is_model_ready("mnist", "7")
    server = client.get_server_metadata()
    assert server["name"] == "tensorgate" and "binary_tensor_data" in server["extensions"]
    metadata = client.get_model_metadata("mnist")
    assert metadata == {
        "name": "mnist",
        "versions": ["1"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "keras_tensor", "datatype": "FP32", "shape": [-1, 28, 28]}],
        "outputs": [{"name": "output_0", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert client.get_model_metadata("mnist", "1") == metadata


def test_mnist_test_set_binary_equals_tensorgate_client(
    client: triton.InferenceServerClient, mnist: MnistData, expected: np.ndarray
) -> None:
    """tritonclient.http's defaults: binary inputs, and every output asked binary (binary_data_output)."""
    x = mnist_inputs(mnist.x_test)
    got = np.concatenate(
        [
            client.infer("mnist", [infer_input("keras_tensor", x[i : i + BATCH], "FP32")]).as_numpy("output_0")
            for i in range(0, len(x), BATCH)
        ]
    )
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    print(f"v2 REST binary: accuracy {float((got.argmax(1) == mnist.y_test).mean()):.4f}")


def test_mnist_json_in_and_out_with_async_infer(
    client: triton.InferenceServerClient, mnist: MnistData, expected: np.ndarray
) -> None:
    x = mnist_inputs(mnist.x_test[:2000])
    outputs = [triton.InferRequestedOutput("output_0", binary_data=False)]
    pending = [
        client.async_infer(
            "mnist", [infer_input("keras_tensor", x[i : i + 500], "FP32", binary=False)], outputs=outputs
        )
        for i in range(0, len(x), 500)
    ]
    results = [request.get_result() for request in pending]
    assert "data" in results[0].get_output("output_0")
    got = np.concatenate([result.as_numpy("output_0") for result in results])
    np.testing.assert_array_equal(got.argmax(1), expected[:2000].argmax(1))
    np.testing.assert_allclose(got, expected[:2000], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_scorer_multi_input_dtypes(client: triton.InferenceServerClient, server: ServerProcess, binary: bool) -> None:
    inputs = [infer_input(name, array, SCORER_DATATYPES[name], binary) for name, array in SCORER_INPUTS.items()]
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary) for name in ("scaled", "tag_length", "total", "positive")
    ]
    result = client.infer("scorer", inputs, outputs=outputs, request_id="7")
    assert result.get_response()["id"] == "7"
    with TensorgateClient(server.target) as own:
        expected = own.predict_tensors("scorer", SCORER_INPUTS)
    for name, array in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == array.dtype, name
        np.testing.assert_array_equal(got, array)
    only = client.infer("scorer", inputs, outputs=[triton.InferRequestedOutput("positive", binary_data=False)])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["positive"]
    assert only.as_numpy("positive").tolist() == [True, False]


def test_protocol_document_requests_verbatim(server: ServerProcess, mnist: MnistData) -> None:
    """JSON as the KServe v2 document writes it: nested row-major data, an id, named outputs without parameters."""
    x = mnist_inputs(mnist.x_test[:3])
    body: dict[str, Any] = {
        "id": "42",
        "inputs": [{"name": "keras_tensor", "shape": [3, 28, 28], "datatype": "FP32", "data": x.tolist()}],
        "outputs": [{"name": "output_0"}],
    }
    status, headers, answer = http(f"{server.rest_url}/v2/models/mnist/infer", "POST", body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("42", "mnist", "1")
    [output] = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("output_0", "FP32", [3, 10])
    with TensorgateClient(server.target) as own:
        np.testing.assert_allclose(np.array(output["data"]).reshape(3, 10), own.predict("mnist", x), rtol=1e-5)
    body["inputs"][0]["data"] = x.ravel().tolist()  # flat, as tritonclient sends it
    assert http(f"{server.rest_url}/v2/models/mnist/versions/1/infer", "POST", body)[2]["outputs"] == answer["outputs"]
    status, _, ready = http(f"{server.rest_url}/v2/health/ready", "GET")
    assert (status, ready) == (200, {"ready": True})


def mnist_body(**changes: Any) -> dict[str, Any]:
    tensor = {"name": "keras_tensor", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
    return {"inputs": [{**tensor, **changes}]}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/mnist/infer", b"{not json", 400, "not valid JSON"),
        ("/v2/models/mnist/infer", b"[1, 2]", 400, "JSON object"),
        ("/v2/models/mnist/infer", {"outputs": []}, 400, "'inputs' is required"),
        ("/v2/models/mnist/infer", mnist_body(datatype="FP64"), 400, "dtype"),
        ("/v2/models/mnist/infer", mnist_body(datatype="BF16"), 400, "not supported"),
        ("/v2/models/mnist/infer", mnist_body(data=[0.0] * 783), 400, "needs 784 values, got 783"),
        ("/v2/models/mnist/infer", mnist_body(data=["a"] * 784), 400, "float32 takes numbers, got strings"),
        ("/v2/models/mnist/infer", mnist_body(data=[[0.0] * 28, [0.0]]), 400, "rectangular"),
        ("/v2/models/mnist/infer", mnist_body(shape=[1, 28, 27], data=[0.0] * 756), 400, "shape"),
        ("/v2/models/mnist/infer", mnist_body(shape=["1", 28, 28]), 400, "list of integers"),
        ("/v2/models/mnist/infer", mnist_body(name="x"), 400, "signature"),
        ("/v2/models/mnist/infer", {**mnist_body(), "parameters": {"binary_data_output": 1}}, 400, "true or false"),
        ("/v2/models/mnist/infer", {**mnist_body(), "parameters": [1]}, 400, "'parameters' must be an object"),
        ("/v2/models/mnist/infer", {**mnist_body(), "outputs": [{"name": "nope"}]}, 400, "nope"),
        ("/v2/models/nope/infer", mnist_body(), 404, "not found"),
        ("/v2/models/mnist/versions/7/infer", mnist_body(), 404, "no version 7"),
        ("/v2/models/mnist/versions/stable/infer", mnist_body(), 404, "label"),
        ("/v2/models/broken/infer", mnist_body(), 503, "failed"),
        ("/v2/models/nope", None, 404, "not found"),
        ("/v2/nowhere", None, 404, "Not Found"),
    ],
)
def test_bad_requests_get_their_status_and_an_error_body(
    server: ServerProcess, path: str, body: bytes | Any, status: int, message: str
) -> None:
    got, _, answer = http(f"{server.rest_url}{path}", "GET" if body is None else "POST", body)
    assert got == status, answer
    assert list(answer) == ["error"] and message in answer["error"], answer
    assert http(f"{server.rest_url}/v2/health/live", "GET")[0] == 200


def binary_request(raw: bytes, size: int, header_length: int | None = None) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "keras_tensor",
                    "shape": [1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    length = len(header) if header_length is None else header_length
    return header + raw, {"Inference-Header-Content-Length": str(length)}


@pytest.mark.parametrize(
    ("raw", "size", "header_length", "message"),
    [
        (b"\0" * 3136, 3136, None, ""),
        (b"\0" * 3135, 3135, None, "needs 3136 raw bytes, got 3135"),
        (b"\0" * 3136, 4000, None, "runs past"),
        (b"\0" * 3200, 3136, None, "add up to 3136"),
        (b"\0" * 3136, 3136, 10**9, "Inference-Header-Content-Length"),
        (b"\0" * 3136, 3136, 5, "not valid JSON"),
    ],
)
def test_binary_tensor_extension_sizes(
    server: ServerProcess, raw: bytes, size: int, header_length: int | None, message: str
) -> None:
    body, headers = binary_request(raw, size, header_length)
    status, _, answer = http(f"{server.rest_url}/v2/models/mnist/infer", "POST", body, headers)
    if not message:
        assert status == 200 and answer["outputs"][0]["shape"] == [1, 10]
    else:
        assert status == 400 and message in answer["error"], answer


def test_calls_are_counted_like_grpc_ones(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    labels = {"model": "mnist", "version": "1", "method": "kserve_rest_model_infer", "code": "OK"}
    before = server.metric("tensorgate_requests_total", **labels)
    client.infer("mnist", [infer_input("keras_tensor", np.zeros((2, 28, 28), np.float32), "FP32")])
    assert server.metric("tensorgate_requests_total", **labels) == before + 1
    invalid = {"model": "mnist", "version": "", "method": "kserve_rest_model_infer", "code": "INVALID_ARGUMENT"}
    before = server.metric("tensorgate_requests_total", **invalid)
    http(f"{server.rest_url}/v2/models/mnist/infer", "POST", b"{")
    assert server.metric("tensorgate_requests_total", **invalid) == before + 1


def test_model_config_and_statistics_as_tritons_http_api(client: triton.InferenceServerClient) -> None:
    """The ModelConfig itself and the statistics response, with the proto field names and 64-bit counts as
    numbers (what perf_analyzer and model-analyzer read)."""
    config = client.get_model_config("mnist")
    assert (config["name"], config["platform"], config["max_batch_size"]) == ("mnist", "tensorflow_savedmodel", 256)
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("keras_tensor", "TYPE_FP32", [28, 28])
    ]
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 1024
    assert client.get_model_config("mnist", "1") == config

    def mnist_statistics() -> dict[str, Any]:
        [model] = client.get_inference_statistics("mnist", "1")["model_stats"]
        return model

    before = mnist_statistics()
    client.infer("mnist", [infer_input("keras_tensor", np.zeros((3, 28, 28), np.float32), "FP32")])
    after = mnist_statistics()
    assert (after["name"], after["version"]) == ("mnist", "1")
    assert after["inference_count"] - before["inference_count"] == 3
    success = after["inference_stats"]["success"]
    assert success["count"] - before["inference_stats"]["success"]["count"] == 1 and isinstance(success["ns"], int)
    every = client.get_inference_statistics()["model_stats"]
    assert sorted((s["name"], s["version"]) for s in every) == [("mnist", "1"), ("scorer", "1")]
    assert [s["name"] for s in client.get_inference_statistics("scorer")["model_stats"]] == ["scorer"]


def test_repository_index_unload_and_load(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    index = client.get_model_repository_index()
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        ("broken", "1", "UNAVAILABLE"),
        ("empty", "", "UNAVAILABLE"),
        ("mnist", "1", "READY"),
        ("scorer", "1", "READY"),
    ]
    assert "SavedModel" in index[0]["reason"] and index[1]["reason"] == "unloaded"
    status, _, ready = http(f"{server.rest_url}/v2/repository/index", "POST", {"ready": True})
    assert status == 200 and [(m["name"], m["state"]) for m in ready] == [("mnist", "READY"), ("scorer", "READY")]
    client.unload_model("scorer", unload_dependents=True)
    assert not client.is_model_ready("scorer")
    with pytest.raises(InferenceServerException) as raised:
        client.infer("scorer", [infer_input(n, a, SCORER_DATATYPES[n]) for n, a in SCORER_INPUTS.items()])
    assert raised.value.status() in ("404", "503")
    client.load_model("scorer")
    assert client.is_model_ready("scorer")
    assert client.infer("scorer", [infer_input(n, a, SCORER_DATATYPES[n]) for n, a in SCORER_INPUTS.items()])
    for call, status_wanted in (
        (lambda: client.load_model("scorer", config="{}"), "400"),
        (lambda: client.load_model("nope"), "404"),
        (lambda: client.unload_model("nope"), "404"),
        (lambda: client.get_model_config("nope"), "404"),
        (lambda: client.get_model_config("mnist", "9"), "404"),
        (lambda: client.get_inference_statistics("nope"), "404"),
    ):
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == status_wanted, raised.value
    status, _, error = http(f"{server.rest_url}/v2/repository/models/scorer/load", "POST", b"{")
    assert status == 400 and "not valid JSON" in error["error"]
    assert client.is_model_ready("scorer") and client.is_server_live()


def test_the_gateway_port_speaks_v2_rest(stack: ServerProcess, mnist: MnistData) -> None:
    """Envoy passes /v2 to the REST ports as it is: tritonclient.http and the document's JSON work on the gateway
    port, errors keep their v2 body, the access log records the calls, and tensorgate.v1's REST is still there."""
    x = mnist_inputs(mnist.x_test[:200])
    with TensorgateClient(stack.target) as own:
        expected = own.predict("mnist", x)
    client = triton.InferenceServerClient(stack.gateway_url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mnist")
    assert client.get_model_metadata("mnist")["inputs"][0]["shape"] == [-1, 28, 28]
    got = client.infer("mnist", [infer_input("keras_tensor", x, "FP32")]).as_numpy("output_0")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    client.close()
    body = {
        "id": "g",
        "inputs": [{"name": "keras_tensor", "shape": [2, 28, 28], "datatype": "FP32", "data": x[:2].tolist()}],
    }
    status, _, answer = http(f"{stack.gateway_url}/v2/models/mnist/versions/1/infer", "POST", body)
    assert status == 200 and answer["id"] == "g", answer
    np.testing.assert_allclose(np.array(answer["outputs"][0]["data"]).reshape(2, 10), expected[:2], rtol=1e-5)
    status, _, error = http(f"{stack.gateway_url}/v2/models/nope/infer", "POST", body)
    assert status == 404 and list(error) == ["error"], error
    assert http(f"{stack.gateway_url}/v1/models/mnist", "GET")[0] == 200
    wait_for(lambda: '"path":"/v2/models/mnist/versions/1/infer"' in stack.log(), stack.process, 60, "the access log")


def test_same_authentication_as_grpc(repository: Path, tmp_path: Path) -> None:
    """API keys guard the REST APIs as they guard gRPC (scopes, models); health stays open."""
    shutil.copytree(repository / "mnist", tmp_path / "models" / "mnist")
    keys_file = tmp_path / "keys.toml"
    key = add_key(keys_file, "batch-job", "predict")
    other_model_key = add_key(keys_file, "scorer-reader", "predict", models="scorer")
    secured = start_server(tmp_path / "models", tmp_path / "server.log", "--api-keys-file", str(keys_file))
    try:
        client = triton.InferenceServerClient(secured.rest_url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready()
        x = [infer_input("keras_tensor", np.zeros((1, 28, 28), np.float32), "FP32")]
        for headers, wanted in (
            (None, "401"),
            ({"x-api-key": other_model_key}, "403"),
            ({"x-api-key": "wrong"}, "401"),
        ):
            with pytest.raises(InferenceServerException) as raised:
                client.infer("mnist", x, headers=headers)
            assert raised.value.status() == wanted
        assert client.infer("mnist", x, headers={"x-api-key": key}).as_numpy("output_0").shape == (1, 10)
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException) as raised:
                call("mnist", headers={"x-api-key": key})
            assert raised.value.status() == "403" and "admin" in str(raised.value)
        assert client.is_model_ready("mnist", headers={"x-api-key": key})
        assert http(f"{secured.rest_url}/v2/models/mnist", "GET")[0] == 401
        tfs = f"{secured.tfserving_rest_url}/v1/models/mnist:predict"
        status, _, answer = http(tfs, "POST", {"instances": [[[0.0] * 28] * 28]})
        assert status == 401 and "credentials" in answer["error"]
        assert http(tfs, "POST", {"instances": [[[0.0] * 28] * 28]}, {"Authorization": f"Bearer {key}"})[0] == 200
        client.close()
    finally:
        assert secured.stop() == 0, secured.log()[-3000:]
