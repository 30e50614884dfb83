"""REST/JSON through the real Envoy transcoder, and gRPC through the same listener."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData

from conftest import ServerProcess, mnist_inputs, start_server


def rest(
    stack: ServerProcess, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{stack.gateway_url}{path}", data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def json_tensor(x: np.ndarray) -> dict[str, Any]:
    return {"dtype": "DATA_TYPE_FLOAT32", "shape": list(x.shape), "floatValues": x.ravel().tolist()}


def test_every_mnist_test_image_over_rest_equals_grpc(stack: ServerProcess, mnist: MnistData) -> None:
    x = mnist_inputs(mnist.x_test)
    with TensorgateClient(stack.target) as client:
        grpc_answers = np.concatenate([client.predict("mnist", x[i : i + 1000]) for i in range(0, len(x), 1000)])
    rest_answers = []
    for i in range(0, len(x), 1000):
        status, text = rest(
            stack, "POST", "/v1/models/mnist:predict", {"inputs": {"keras_tensor": json_tensor(x[i : i + 1000])}}
        )
        assert status == 200, text
        output = json.loads(text)["outputs"]["output_0"]
        rest_answers.append(np.array(output["floatValues"], np.float32).reshape([int(d) for d in output["shape"]]))
    rest_all = np.concatenate(rest_answers)
    np.testing.assert_array_equal(rest_all.argmax(1), grpc_answers.argmax(1))
    np.testing.assert_allclose(rest_all, grpc_answers, rtol=1e-6)
    assert (rest_all.argmax(1) == mnist.y_test).mean() >= 0.97


def test_bulk_stream_over_rest_is_newline_delimited_json(stack: ServerProcess, mnist: MnistData) -> None:
    x = mnist_inputs(mnist.x_test[:640])
    messages = [{"id": str(i), "inputs": {"keras_tensor": json_tensor(x[i : i + 64])}} for i in range(0, 640, 64)]
    messages.insert(3, {"id": "bad", "inputs": {"keras_tensor": json_tensor(x[:2, :5])}})
    messages[0]["model"] = "mnist"  # later messages inherit it
    status, text = rest(stack, "POST", "/v1/models:streamPredict", messages)
    assert status == 200
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert [line["id"] for line in lines] == [m["id"] for m in messages]
    bad = lines.pop(3)
    assert bad["error"]["code"] == 3 and "expected shape [-1, 28, 28]" in bad["error"]["message"]
    with TensorgateClient(stack.target) as client:
        expected = client.predict("mnist", x)
    got = np.concatenate([np.array(line["outputs"]["output_0"]["floatValues"]).reshape(-1, 10) for line in lines])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert all(line["model"] == "mnist" and line["version"] == "1" for line in lines)


def test_every_model_service_rpc_over_rest(stack: ServerProcess) -> None:
    status, text = rest(stack, "GET", "/v1/models")
    assert status == 200 and [m["name"] for m in json.loads(text)["models"]] == ["broken", "mnist", "scorer", "slow"]
    status, text = rest(stack, "GET", "/v1/models/mnist")
    assert status == 200 and json.loads(text)["model"]["versions"][0]["state"] == "MODEL_VERSION_STATE_AVAILABLE"
    status, text = rest(stack, "GET", "/v1/models/broken/versions/1")
    assert status == 200 and json.loads(text)["model"]["versions"][0]["state"] == "MODEL_VERSION_STATE_FAILED"
    for path in ("/v1/models/scorer/metadata", "/v1/models/scorer/versions/1/metadata"):
        status, text = rest(stack, "GET", path)
        assert status == 200, text
        assert [i["name"] for i in json.loads(text)["inputs"]] == ["counts", "features", "tag"]
    body = {"inputs": {"x": json_tensor(np.ones((1, 4), np.float32))}}
    status, text = rest(stack, "POST", "/v1/models/slow/versions/1:predict", body)
    assert status == 200 and json.loads(text)["outputs"]["y"]["floatValues"] == [2, 2, 2, 2]


def test_string_and_integer_tensors_over_rest(stack: ServerProcess) -> None:
    body = {
        "inputs": {
            "features": {"dtype": "DATA_TYPE_FLOAT64", "shape": [1, 3], "doubleValues": [1, 2, 3]},
            "tag": {"dtype": "DATA_TYPE_STRING", "shape": [1], "stringValues": ["h\u00e9llo"]},
            "counts": {"dtype": "DATA_TYPE_INT32", "shape": [1, 2], "intValues": [4, 5]},
        }
    }
    status, text = rest(stack, "POST", "/v1/models/scorer:predict", body)
    assert status == 200, text
    outputs = json.loads(text)["outputs"]
    # Map keys (output names) keep their spelling; only message fields become camelCase in JSON.
    assert outputs["total"]["int64Values"] == ["9"]
    assert outputs["tag_length"]["intValues"] == [6]
    assert outputs["scaled"]["doubleValues"] == [2, 4, 6]
    assert outputs["positive"]["boolValues"] == [True]


ERRORS = {
    "invalid argument": (
        "POST",
        "/v1/models/mnist:predict",
        {"inputs": {"keras_tensor": json_tensor(np.zeros((1, 3), np.float32))}},
        400,
        3,
    ),
    "not found": ("POST", "/v1/models/nope:predict", {"inputs": {}}, 404, 5),
    "unknown version": ("GET", "/v1/models/mnist/versions/9", None, 404, 5),
    "unavailable": ("POST", "/v1/models/broken:predict", {"inputs": {}}, 503, 14),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_grpc_errors_map_to_http_status_with_json_body(stack: ServerProcess, case: str) -> None:
    method, path, body, http_status, grpc_code = ERRORS[case]
    status, text = rest(stack, method, path, body)
    assert status == http_status, text
    error = json.loads(text)
    assert error["code"] == grpc_code and error["message"]


def test_overload_is_429_and_expired_deadline_is_504(stack: ServerProcess) -> None:
    body = {"inputs": {"x": json_tensor(np.ones((1, 4), np.float32))}}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: rest(stack, "POST", "/v1/models/slow:predict", body), range(8)))
    statuses = sorted(status for status, _ in results)
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}, statuses
    refused = json.loads(next(text for status, text in results if status == 429))
    assert refused["code"] == 8 and "retry in" in refused["message"]
    assert refused["details"][0]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"

    started = time.monotonic()
    assert rest(stack, "POST", "/v1/models/slow:predict", body)[0] == 200
    call_s = time.monotonic() - started
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(rest, stack, "POST", "/v1/models/slow:predict", body)
        time.sleep(call_s / 3)  # busy holds the only worker; the queue is empty again
        late = pool.submit(rest, stack, "POST", "/v1/models/slow:predict", body, {"grpc-timeout": "20m"})
        status, text = late.result()
        assert busy.result()[0] == 200
    assert status == 504, text


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "allow"),
    [
        ("GET", "/v1/nothing", None, 404, 5, None),
        ("GET", "/v1/models?colour=blue", None, 400, 3, None),
        ("POST", "/v1/models/mnist:predict", b"{not json", 400, 3, None),
        ("POST", "/v1/models/mnist:predict", b'{"inputs": {"keras_tensor": {"dtype": "NOPE"}}}', 400, 3, None),
        ("POST", "/v1/models/mnist:load", b'{"version": {}}', 400, 3, None),
        ("GET", "/v1/models/mnist:predict", None, 405, 12, "POST"),
        ("DELETE", "/v1/models", None, 405, 12, "GET"),
        ("QUERY", "/v1/models/mnist/metadata", None, 405, 12, "GET"),  # a method Envoy's codec does not know
    ],
)
def test_the_gateways_own_refusals_are_the_documented_json_error(
    stack: ServerProcess, method: str, path: str, body: bytes | None, status: int, code: int, allow: str | None
) -> None:
    """Envoy's own answers (unknown path, field or parameter, malformed JSON, undeclared method) carry the
    documented error body, as application/json, with the gRPC code of their status."""
    connection = http.client.HTTPConnection("127.0.0.1", urlsplit(stack.gateway_url).port, timeout=60)
    try:
        connection.request(method, path, body=body, headers={"content-type": "application/json"} if body else {})
        response = connection.getresponse()
        error = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == status
    assert response.getheader("content-type") == "application/json"
    assert error["code"] == code and error["message"], error
    assert response.getheader("allow") == allow


def test_a_rest_stream_is_labelled_newline_delimited_json(stack: ServerProcess) -> None:
    request = urllib.request.Request(f"{stack.gateway_url}/v1/models:streamPredict", data=b"[]", method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "application/x-ndjson"


def test_grpc_passes_through_the_gateway(stack: ServerProcess, mnist: MnistData) -> None:
    x = mnist_inputs(mnist.x_test[:100])
    with TensorgateClient(stack.gateway_target) as through_envoy, TensorgateClient(stack.target) as direct:
        np.testing.assert_array_equal(through_envoy.predict("mnist", x), direct.predict("mnist", x))
        assert len(list(through_envoy.stream_predict("mnist", iter(x), batch_size=16))) == 100
    deadline = time.monotonic() + 10
    while '"path":"/tensorgate.v1.InferenceService/Predict"' not in stack.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert '"path":"/tensorgate.v1.InferenceService/Predict"' in stack.log()  # Envoy's JSON access log


def test_supervisor_exits_non_zero_when_envoy_dies(repository: Path, tmp_path: Path) -> None:
    stack = start_server(repository, tmp_path / "stack.log", gateway=True)
    try:
        pids = json.loads(next(line for line in stack.log().splitlines() if "stack started" in line))["pids"]
        os.kill(pids["envoy"], signal.SIGKILL)
        assert stack.process.wait(60) == 1
        assert "envoy exited on its own" in stack.log()
    finally:
        if stack.process.poll() is None:
            stack.process.kill()


def test_openapi_document_is_served_and_valid(stack: ServerProcess) -> None:
    from openapi_spec_validator import validate

    status, text = rest(stack, "GET", "/openapi.json")
    assert status == 200
    spec = json.loads(text)
    validate(spec)
    assert spec == json.loads((Path(__file__).resolve().parent.parent / "gateway" / "openapi.json").read_text())
    predict = spec["paths"]["/v1/models/{model}:predict"]["post"]["responses"]
    assert {"200", "400", "404", "429", "503", "504"} <= set(predict)
    stream = spec["paths"]["/v1/models:streamPredict"]["post"]
    assert "application/x-ndjson" in stream["responses"]["200"]["content"]
    assert stream["requestBody"]["content"]["application/json"]["schema"]["type"] == "array"
    status, page = rest(stack, "GET", "/docs")
    assert status == 200 and "swagger-ui-bundle.js" in page


def test_swagger_page_try_it_out_predicts(stack: ServerProcess, mnist: MnistData, tmp_path: Path) -> None:
    """Headless Chromium (Debian's) opens /docs, runs "Try it out" on predict, reads the class off the page."""
    from playwright.sync_api import sync_playwright

    image = mnist_inputs(mnist.x_test[:1])
    body = json.dumps({"inputs": {"keras_tensor": json_tensor(image)}})
    chromium_flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=chromium_flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"{stack.gateway_url}/docs")
            operation = page.locator("#operations-InferenceService-Predict")
            operation.locator(".opblock-summary").first.click()
            operation.locator(".try-out__btn").click()
            operation.locator("input[placeholder='model']").fill("mnist")
            operation.locator("textarea.body-param__text").fill(body)
            operation.locator("button.execute").click()
            live = operation.locator(".live-responses-table")
            live.locator(".response-col_description pre").first.wait_for(timeout=30_000)
            shown = live.locator(".response-col_description pre").first.inner_text()
            status = live.locator("tr.response td.response-col_status").first.inner_text()
            operation.screenshot(path=str(tmp_path / "docs-try-it-out.png"))
        finally:
            browser.close()
    print(f"screenshot: {tmp_path / 'docs-try-it-out.png'}")
    probabilities = json.loads(shown)["outputs"]["output_0"]["floatValues"]
    assert status.strip() == "200"
    assert int(np.argmax(probabilities)) == mnist.y_test[0]


def test_admin_rpcs_over_rest(stack: ServerProcess) -> None:
    status, text = rest(stack, "POST", "/v1/models/mnist:setLabels", {"labels": {"stable": 1}})
    assert status == 200, text
    assert json.loads(text)["model"]["labels"] == {"stable": "1"}
    body = {"inputs": {"keras_tensor": json_tensor(np.zeros((1, 28, 28), np.float32))}}
    status, text = rest(stack, "POST", "/v1/models/mnist/versions/stable:predict", body)
    assert status == 200 and json.loads(text)["version"] == "1"
    status, text = rest(stack, "POST", "/v1/models/mnist:setLabels", {"labels": {"stable": 5}})
    assert status == 400 and "not available" in json.loads(text)["message"]
    status, text = rest(stack, "POST", "/v1/models/mnist:reload", {})
    assert status == 200 and json.loads(text)["model"]["versions"][0]["state"] == "MODEL_VERSION_STATE_AVAILABLE"
    status, text = rest(stack, "POST", "/v1/models/mnist:load", {"version": "3"})
    assert status == 404
