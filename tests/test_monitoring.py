"""deploy/monitoring: promtool checks and rule tests, a dashboard that only uses exported metrics and covers every
inference method with model and instance selectors, per-model latency over every protocol, and a real Prometheus
scraping the running server and Envoy and answering every dashboard query."""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import time
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import grpc_tools.protoc  # noqa: F401  (before TensorFlow, as in test_tfserving.py)
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tensorgate.clients.client import TensorgateClient
from tensorgate.server.protocols.methods import inference_methods

from conftest import ServerProcess, free_port

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
DASHBOARD = MONITORING / "grafana" / "tensorgate-dashboard.json"
VERSION = tomllib.loads((MONITORING.parent.parent / "pyproject.toml").read_text())["project"]["version"]
# Grafana's values of the variables when "All" is selected.
ALL_VARIABLES = {"$model": ".*", "$instance": ".*"}


@pytest.mark.parametrize(
    "args",
    [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"], ["check", "config", "prometheus.yml"]],
)
def test_promtool(args: list[str]) -> None:
    assert PROMTOOL, "promtool comes with Debian's prometheus package (make system-packages)"
    result = subprocess.run([PROMTOOL, *args], cwd=MONITORING, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def exported_names(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_dashboard_and_alerts_use_only_exported_metrics(stack: ServerProcess) -> None:
    with TensorgateClient(stack.target) as client:  # make the per-request series exist, a rejection included
        client.predict("mnist", np.zeros((1, 28, 28), np.float32))
        list(client.stream_predict("mnist", iter(np.zeros((2, 28, 28), np.float32))))
        with pytest.raises(grpc.RpcError):
            client.predict("mnist", np.zeros((1, 3), np.float32))
    with TensorgateClient(stack.gateway_target) as client:  # and Envoy's upstream series
        client.predict("mnist", np.zeros((1, 28, 28), np.float32))
    exported = exported_names(stack.metrics_url) | exported_names(f"{stack.gateway_admin_url}/stats/prometheus")
    expressions = dashboard_expressions()
    expressions += re.findall(r"expr: \|?\s*(.+)", (MONITORING / "alerts.yml").read_text())
    # Metric names only: drop label matchers {...} and grouping clauses by (...) first.
    bare = [re.sub(r"\{[^}]*\}|\bby \([^)]*\)", "", expr) for expr in expressions]
    used = {name for expr in bare for name in re.findall(r"\b((?:tensorgate|envoy)_[a-z0-9_]+)", expr)}
    assert used and sorted(used - exported) == []


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_dashboard_and_alerts_cover_every_inference_method_with_model_and_instance_selectors() -> None:
    """The method filters of the latency panels and the latency alert name exactly the inference methods of
    server/protocols/methods.py, so traffic over any protocol shows; every server panel follows the model and
    instance variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["model"]["query"]["query"] == "label_values(tensorgate_model_versions, model)"
    assert variables["instance"]["query"]["query"] == 'label_values(up{job="tensorgate"}, instance)'
    assert all(variables[name]["includeAll"] and variables[name]["multi"] for name in ("model", "instance"))
    server_expressions = [e for e in dashboard_expressions() if re.search(r'(?<!")\btensorgate_', e)]
    assert all('instance=~"$instance"' in e for e in server_expressions)
    without_model = ("tensorgate_requests_rejected_total", "tensorgate_streams_in_flight", "tensorgate_build_info")
    assert all('model=~"$model"' in e for e in server_expressions if not any(m in e for m in without_model))
    alerts = (MONITORING / "alerts.yml").read_text()
    filters = re.findall(r'method=~"([^"]+)"', alerts) + [
        f for e in server_expressions for f in re.findall(r'method=~"([^"]+)"', e)
    ]
    assert len(filters) >= 5  # the alert, p50 and p99 by method, p99 by model, errors by model and method
    assert all(sorted(f.split("|")) == sorted(inference_methods()) for f in filters), filters
    assert {"predict", "stream_predict", "kserve_model_infer", "kserve_model_stream_infer", "tfserving_predict"} <= set(
        inference_methods()
    )


def latency_count(server: ServerProcess, model: str, method: str) -> float:
    return server.metric("tensorgate_request_duration_seconds_count", model=model, method=method)


def test_per_model_latency_for_every_inference_protocol(stack: ServerProcess) -> None:
    """One call of each inference method, over its own protocol's client, is timed under the model it named."""
    before = {method: latency_count(stack, "mnist", method) for method in inference_methods()}
    unknown_before = latency_count(stack, "_unknown", "tfserving_predict")
    x = np.zeros((1, 28, 28), np.float32)
    with TensorgateClient(stack.target) as client:
        client.predict("mnist", x)
        assert len(list(client.stream_predict("mnist", iter(np.zeros((2, 28, 28), np.float32))))) == 2
    with triton.InferenceServerClient(stack.target) as oip:
        tensor = triton.InferInput("keras_tensor", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        assert oip.infer("mnist", [tensor]).as_numpy("output_0").shape == (1, 10)
        answers: queue.Queue[tuple[object, object]] = queue.Queue()
        oip.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            oip.async_stream_infer("mnist", [tensor])
            result, error = answers.get(timeout=60)
            assert error is None and result is not None
        finally:
            oip.stop_stream()
    with grpc.insecure_channel(stack.target) as channel:
        tfs = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for model in ("mnist", "no-such-model"):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model
            request.inputs["keras_tensor"].CopyFrom(tf.make_tensor_proto(x))
            if model == "mnist":
                assert tfs.Predict(request, timeout=60).outputs["output_0"].tensor_shape.dim[1].size == 10
            else:
                with pytest.raises(grpc.RpcError):
                    tfs.Predict(request, timeout=60)
    for method in inference_methods():
        assert latency_count(stack, "mnist", method) == before[method] + 1, method
        assert stack.metric("tensorgate_request_duration_seconds_sum", model="mnist", method=method) > 0, method
    assert latency_count(stack, "_unknown", "tfserving_predict") == unknown_before + 1  # never the name sent


def test_build_info_and_load_durations_up_to_ten_minutes(stack: ServerProcess) -> None:
    assert stack.metric("tensorgate_build_info", version=VERSION, tensorflow=tf.__version__) == 1
    loads = stack.metric("tensorgate_model_load_duration_seconds_count", model="mnist")
    assert loads >= 1
    assert stack.metric("tensorgate_model_load_duration_seconds_bucket", model="mnist", le="600.0") == loads
    buckets = {
        float(dict(labels)["le"])
        for name, labels in stack.metrics()
        if name == "tensorgate_model_load_duration_seconds_bucket" and dict(labels)["model"] == "mnist"
    }
    assert {10.0, 60.0, 300.0, 600.0} <= buckets


def query(prometheus_url: str, expr: str) -> float:
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        result = json.loads(response.read())["data"]["result"]
    return float(result[0]["value"][1]) if result else -1.0


def test_real_prometheus_scrapes_server_and_envoy(stack: ServerProcess, tmp_path: Path) -> None:
    assert PROMETHEUS, "prometheus comes with Debian's prometheus package (make system-packages)"
    metrics_target = stack.metrics_url.removeprefix("http://").removesuffix("/metrics")
    envoy_target = stack.gateway_admin_url.removeprefix("http://")
    config = (MONITORING / "prometheus.yml").read_text()
    config = config.replace("127.0.0.1:8502", metrics_target).replace("127.0.0.1:9901", envoy_target)
    config = config.replace("scrape_interval: 15s", "scrape_interval: 1s")
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(MONITORING / "alerts.yml", tmp_path / "alerts.yml")
    port = free_port()
    prometheus = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    expr = 'sum(tensorgate_requests_total{model="mnist", method="predict", code="OK"})'
    try:
        deadline = time.monotonic() + 60
        while query_or_none(url, 'min(up{job=~"tensorgate|envoy"})') != 1.0:
            assert time.monotonic() < deadline, "Prometheus never saw both targets up"
            time.sleep(0.5)
        before = query(url, expr)
        with TensorgateClient(stack.target) as client:
            for _ in range(7):
                client.predict("mnist", np.zeros((1, 28, 28), np.float32))
        while query(url, expr) < before + 7:
            assert time.monotonic() < deadline, f"counter did not move: {query(url, expr)} after {before}"
            time.sleep(0.5)
        # Every dashboard query is valid PromQL and answers; the per-model latency of each protocol is scraped.
        for dashboard_expr in dashboard_expressions():
            for variable, value in ALL_VARIABLES.items():
                dashboard_expr = dashboard_expr.replace(variable, value)
            query(url, dashboard_expr)  # an invalid query is an HTTP 400 here
        latency = 'sum(tensorgate_request_duration_seconds_count{model="mnist", method="predict"})'
        while query(url, latency) < 7:
            assert time.monotonic() < deadline, "per-model latency not scraped"
            time.sleep(0.5)
    finally:
        prometheus.terminate()
        prometheus.wait(30)


def query_or_none(url: str, expr: str) -> float | None:
    try:
        return query(url, expr)
    except OSError:
        return None


def test_request_metrics_have_bounded_labels(stack: ServerProcess) -> None:
    def count(model: str, version: str, code: str) -> float:
        return stack.metric("tensorgate_requests_total", model=model, version=version, method="predict", code=code)

    unknown_before, ok_before = count("_unknown", "", "NOT_FOUND"), count("mnist", "1", "OK")
    with TensorgateClient(stack.target) as client:
        for name in ("no-such-model", "another-made-up-name"):
            with pytest.raises(grpc.RpcError):
                client.predict_tensors(name, {"x": np.zeros((1, 1), np.float32)})
        client.predict("mnist", np.zeros((1, 28, 28), np.float32))
    assert count("_unknown", "", "NOT_FOUND") == unknown_before + 2  # user input never becomes a label
    assert count("mnist", "1", "OK") == ok_before + 1
    names = {dict(labels).get("model") for (name, labels) in stack.metrics() if name == "tensorgate_requests_total"}
    assert "no-such-model" not in names and "another-made-up-name" not in names
