"""Traces as an operator's collector receives them: a real OTLP/gRPC receiver (plaintext, and TLS with the
project's development certificates) and real server processes.

One trace per request, end to end: client → Envoy (gateway span) → server span → queue → batch (linked) → model.
Server spans follow OpenTelemetry's RPC conventions on every protocol (tensorgate.v1, the Open Inference Protocol,
TF Serving): named ``package.Service/Method``, with ``rpc.*``, ``server.*`` and the model, ERROR only for the
server's own failures. ``OTEL_*`` variables alone configure a server's tracing, TLS to the collector included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tensorgate.clients.client import TensorgateClient
from tensorgate.server.commands.certs import DevPki, create_dev_pki
from tensorgate.server.observability import tracing
from tensorgate.v1 import codec, inference_service_pb2_grpc
from tensorgate.v1.inference_service_pb2 import PredictRequest

from conftest import ServerProcess, free_port, start_server

UNSET, ERROR = Status.STATUS_CODE_UNSET, Status.STATUS_CODE_ERROR


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    resource: dict[str, str]
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[tuple[str, str], ...]
    attributes: dict[str, AnyValue]
    status: int
    status_message: str
    events: tuple[str, ...]

    def value(self, key: str) -> object:
        """An attribute's value, whatever its type (None when absent)."""
        if key not in self.attributes:
            return None
        any_value = self.attributes[key]
        return getattr(any_value, any_value.WhichOneof("value"))


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent, and the metadata of every export."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.metadata: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext):
        with self._lock:
            self.metadata.append({key: str(value) for key, value in context.invocation_metadata()})
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            ReceivedSpan(
                                service=resource.get("service.name", ""),
                                resource=resource,
                                name=span.name,
                                kind=span.kind,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                                attributes={a.key: a.value for a in span.attributes},
                                status=span.status.code,
                                status_message=span.status.message,
                                events=tuple(event.name for event in span.events),
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, found: Callable[[list[ReceivedSpan]], bool], what: str, timeout_s: float = 60) -> None:
        """Until ``found`` holds for the spans received (the server flushes every 0.5 s, Envoy every 5 s)."""
        deadline = time.monotonic() + timeout_s
        while not found(spans := self.snapshot()):
            assert time.monotonic() < deadline, f"{what}: not received; spans: {[(s.service, s.name) for s in spans]}"
            time.sleep(0.2)

    def server_span(self, trace_id: str, timeout_s: float = 60) -> ReceivedSpan:
        """The server span of the trace ``trace_id`` (a call made with that ``traceparent``)."""

        def server_spans() -> list[ReceivedSpan]:
            return [s for s in self.snapshot() if s.trace_id == trace_id and s.kind == Span.SPAN_KIND_SERVER]

        self.wait_for(lambda _: bool(server_spans()), f"server span of trace {trace_id}", timeout_s)
        (span,) = server_spans()
        return span


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return create_dev_pki(tmp_path_factory.mktemp("collector-pki"), ["localhost", "127.0.0.1"])


def start_receiver(pki: DevPki | None = None) -> tuple[grpc.Server, Collector, int]:
    """A collector on a free loopback port, over TLS with the development server certificate when ``pki``."""
    collector = Collector()
    receiver = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    address = f"127.0.0.1:{free_port()}"
    if pki is None:
        port = receiver.add_insecure_port(address)
    else:
        pair = (pki.server.key.read_bytes(), pki.server.cert.read_bytes())
        port = receiver.add_secure_port(address, grpc.ssl_server_credentials([pair]))
    receiver.start()
    return receiver, collector, port


def traced_repository(repository: Path, root: Path) -> Path:
    for model in ("mnist", "broken"):
        shutil.copytree(repository / model, root / model)
    return root


@pytest.fixture(scope="module")
def traced(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Collector]]:
    """The whole stack (Envoy too) tracing every request to a plaintext collector, set by flags."""
    receiver, collector, port = start_receiver()
    root = traced_repository(repository, tmp_path_factory.mktemp("traced-repository"))
    extra = ("--tracing-endpoint", f"127.0.0.1:{port}", "--trace-sample-ratio", "1")
    stack = start_server(root, tmp_path_factory.mktemp("traced") / "stack.log", *extra, gateway=True)
    yield stack, collector
    assert stack.stop() == 0
    receiver.stop(0)


def new_traceparent(sampled: bool = True) -> tuple[str, str]:
    """A W3C ``traceparent`` starting a trace of our own, and its trace id."""
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-{'01' if sampled else '00'}", trace_id


def wait_for_trace(
    collector: Collector, server_span_filter, timeout_s: float = 60
) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The Predict server span matching the filter, once its gateway span and its batch have arrived too."""
    complete: list[tuple[ReceivedSpan, list[ReceivedSpan]]] = []

    def arrived(spans: list[ReceivedSpan]) -> bool:
        for span in spans:
            if span.service == "tensorgate" and span.name == PREDICT and server_span_filter(span, spans):
                has_gateway = any(s.span_id == span.parent_id and s.service == "tensorgate-gateway" for s in spans)
                has_batch = any(span.span_id in {link[1] for link in s.links} for s in spans if s.name == "batch")
                if has_gateway and has_batch:
                    complete.append((span, spans))
                    return True
        return False

    collector.wait_for(arrived, "a complete trace", timeout_s)
    return complete[0]


PREDICT = "tensorgate.v1.InferenceService/Predict"


def assert_rpc_conventions(span: ReceivedSpan, service: str, rpc: str, port: int, code: grpc.StatusCode) -> None:
    """OpenTelemetry's RPC conventions on a server span: name, rpc.*, server.*, the gRPC status, and ERROR only
    for the server's own failures."""
    assert span.name == f"{service}/{rpc}"
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.value("rpc.system") == "grpc"
    assert span.value("rpc.service") == service
    assert span.value("rpc.method") == rpc
    assert span.value("server.address") == "127.0.0.1"
    assert span.value("server.port") == port
    assert span.value("rpc.grpc.status_code") == code.value[0]
    if code in tracing.SERVER_ERROR_CODES:
        assert (span.status, bool(span.status_message)) == (ERROR, True), (span.status, span.status_message)
    else:
        assert span.status == UNSET, (code, span.status, span.status_message)


def assert_server_chain(server: ReceivedSpan, spans: list[ReceivedSpan]) -> ReceivedSpan:
    """gateway → server → {validate, queue}; batch (linked to the server span) → model. Returns the gateway span."""
    in_trace = [s for s in spans if s.trace_id == server.trace_id]
    gateway = next(s for s in in_trace if s.span_id == server.parent_id)
    assert gateway.service == "tensorgate-gateway"
    children = {s.name for s in in_trace if s.parent_id == server.span_id}
    assert {"validate", "queue"} <= children, children
    batch = next(s for s in spans if s.name == "batch" and (server.trace_id, server.span_id) in s.links)
    assert any(s.name == "model" and s.parent_id == batch.span_id for s in spans)
    assert server.value("tensorgate.batch_size") >= 1
    assert (server.value("tensorgate.model.name"), server.value("tensorgate.model.version")) == ("mnist", "1")
    return gateway


def test_rest_request_is_one_trace_from_gateway_to_model(traced: tuple[ServerProcess, Collector]) -> None:
    stack, collector = traced
    body = json.dumps(
        {"inputs": {"keras_tensor": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 28, 28], "floatValues": [0] * 784}}}
    ).encode()
    request = urllib.request.Request(f"{stack.gateway_url}/v1/models/mnist:predict", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    server, spans = wait_for_trace(collector, lambda span, spans: True)
    gateway = assert_server_chain(server, spans)
    assert gateway.parent_id == ""  # the gateway started this trace


def test_v2_rest_spans_follow_the_http_conventions(traced: tuple[ServerProcess, Collector]) -> None:
    """A v2 REST call through Envoy: Envoy's span, then the REST port's server span by the HTTP conventions
    (``METHOD route``, the status, the model that answered; ERROR only for a 5xx), its validate and queue, the batch
    linked to it."""
    stack, collector = traced
    traceparent, trace_id = new_traceparent()
    body = {"inputs": [{"name": "keras_tensor", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    request = urllib.request.Request(
        f"{stack.gateway_url}/v2/models/mnist/infer",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"traceparent": traceparent},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    server = collector.server_span(trace_id)
    assert server.service == "tensorgate" and server.name == "POST /v2/models/{model}{version}/infer"
    assert server.value("http.request.method") == "POST" and server.value("http.response.status_code") == 200
    assert server.value("http.route") == "/v2/models/{model}{version}/infer" and server.status == UNSET
    collector.wait_for(
        lambda spans: (
            any(s.name == "batch" and (trace_id, server.span_id) in s.links for s in spans)
            and any(s.span_id == server.parent_id and s.service == "tensorgate-gateway" for s in spans)
        ),
        "the batch and the gateway's span",
    )
    assert_server_chain(server, collector.snapshot())
    traceparent, trace_id = new_traceparent()
    missing = urllib.request.Request(
        f"{stack.rest_url}/v2/models/nope/infer", data=b"{}", method="POST", headers={"traceparent": traceparent}
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(missing, timeout=30)
    assert raised.value.code == 404
    failed = collector.server_span(trace_id)
    assert failed.value("http.response.status_code") == 404 and failed.status == UNSET


CLIENT_SCRIPT = """
import sys, numpy as np
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from tensorgate.clients.client import TensorgateClient
provider = TracerProvider(resource=Resource.create({"service.name": "test-client"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[2], insecure=True)))
trace.set_tracer_provider(provider)
with TensorgateClient(sys.argv[1]) as client:
    client.predict("mnist", np.zeros((1, 28, 28), np.float32))
    try:
        client.predict_tensors("mnist", {"keras_tensor": np.zeros((1, 28, 28), np.float32)}, version="9")
    except Exception:
        pass
    list(client.stream_predict("mnist", iter(np.zeros((2, 28, 28), np.float32)), batch_size=1))
provider.shutdown()
"""


def test_grpc_client_trace_continues_through_gateway_and_server(traced: tuple[ServerProcess, Collector]) -> None:
    stack, collector = traced
    endpoint = log_lines(stack, "tracing on")[0]["endpoint"]
    subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, stack.gateway_target, endpoint], check=True, timeout=120)

    def from_client(span: ReceivedSpan, spans: list[ReceivedSpan]) -> bool:
        return any(s.service == "test-client" and s.trace_id == span.trace_id for s in spans)

    server, spans = wait_for_trace(collector, from_client)
    gateway = assert_server_chain(server, spans)
    client_span = next(s for s in spans if s.span_id == gateway.parent_id)
    assert client_span.service == "test-client" and client_span.kind == Span.SPAN_KIND_CLIENT
    gateway_port = int(stack.gateway_target.rsplit(":", 1)[1])
    assert (client_span.name, client_span.value("rpc.system"), client_span.value("rpc.method")) == (
        PREDICT,
        "grpc",
        "Predict",
    )
    assert (client_span.value("server.port"), client_span.value("tensorgate.model.name")) == (gateway_port, "mnist")
    assert (client_span.value("rpc.grpc.status_code"), client_span.status) == (0, UNSET)
    # On a client every status but OK is an error: the version that does not exist.
    collector.wait_for(
        lambda spans: any(s.service == "test-client" and s.status == ERROR for s in spans), "the failed client span"
    )
    failed = next(s for s in collector.snapshot() if s.service == "test-client" and s.status == ERROR)
    assert (failed.name, failed.value("rpc.grpc.status_code")) == (PREDICT, grpc.StatusCode.NOT_FOUND.value[0])
    # A stream's client span covers the whole stream and counts its messages.
    stream = next(s for s in collector.snapshot() if s.service == "test-client" and s.name == f"{V1}/StreamPredict")
    assert (stream.value("rpc.grpc.status_code"), stream.status) == (0, UNSET)
    assert stream.value("tensorgate.stream.messages_sent") == stream.value("tensorgate.stream.messages_received") == 2
    collector.wait_for(
        lambda spans: any(
            s.trace_id == stream.trace_id and s.name == stream.name and s.service == "tensorgate" for s in spans
        ),
        "the server's span of the client's stream",
    )
    server_stream = next(
        s
        for s in collector.snapshot()
        if s.trace_id == stream.trace_id and s.name == stream.name and s.service == "tensorgate"
    )
    assert server_stream.value("tensorgate.stream.messages_received") == 2


def v1_predict(target: str, traceparent: str, model: str, x: np.ndarray) -> grpc.StatusCode:
    """A tensorgate.v1 Predict with our ``traceparent``; its status."""
    request = PredictRequest(model=model)
    codec.encode_into(x, request.inputs["keras_tensor"])
    with grpc.insecure_channel(target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        try:
            stub.Predict(request, metadata=(("traceparent", traceparent),), timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def oip_model_infer(target: str, traceparent: str, model: str) -> grpc.StatusCode:
    """An Open Inference Protocol ModelInfer (tritonclient's messages) with our ``traceparent``; its status."""
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="keras_tensor", datatype="FP32", shape=[1, 28, 28])
    tensor.contents.fp32_contents.extend([0.0] * 784)
    with grpc.insecure_channel(target) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request, metadata=(("traceparent", traceparent),), timeout=30
            )
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def tfserving_model_status(target: str, traceparent: str, model: str) -> grpc.StatusCode:
    """A TF Serving GetModelStatus with our ``traceparent``; its status. The request is written as protobuf bytes
    (GetModelStatusRequest{model_spec: ModelSpec{name}}, field 1 in both): TF Serving's Python messages would
    import TensorFlow into this process."""

    def field_1(payload: bytes) -> bytes:
        return b"\x0a" + bytes([len(payload)]) + payload

    request = field_1(field_1(model.encode()))
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/tensorflow.serving.ModelService/GetModelStatus")
        try:
            call(request, metadata=(("traceparent", traceparent),), timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


V1, OIP, TFS = "tensorgate.v1.InferenceService", "inference.GRPCInferenceService", "tensorflow.serving.ModelService"
IMAGE = np.zeros((1, 28, 28), np.float32)
CALLS = [
    # protocol service, rpc, the call, the model it names, the status it gets, the model and version on the span
    (V1, "Predict", lambda t, tp: v1_predict(t, tp, "mnist", IMAGE), grpc.StatusCode.OK, ("mnist", "1")),
    (V1, "Predict", lambda t, tp: v1_predict(t, tp, "mnist", IMAGE[:, :5]), grpc.StatusCode.INVALID_ARGUMENT, None),
    (V1, "Predict", lambda t, tp: v1_predict(t, tp, "nothere", IMAGE), grpc.StatusCode.NOT_FOUND, ("_unknown", "")),
    (V1, "Predict", lambda t, tp: v1_predict(t, tp, "broken", IMAGE), grpc.StatusCode.UNAVAILABLE, ("broken", "")),
    (OIP, "ModelInfer", lambda t, tp: oip_model_infer(t, tp, "mnist"), grpc.StatusCode.OK, ("mnist", "1")),
    (OIP, "ModelInfer", lambda t, tp: oip_model_infer(t, tp, "broken"), grpc.StatusCode.UNAVAILABLE, None),
    (OIP, "ModelInfer", lambda t, tp: oip_model_infer(t, tp, "nothere"), grpc.StatusCode.NOT_FOUND, None),
    (TFS, "GetModelStatus", lambda t, tp: tfserving_model_status(t, tp, "mnist"), grpc.StatusCode.OK, None),
    (TFS, "GetModelStatus", lambda t, tp: tfserving_model_status(t, tp, "nothere"), grpc.StatusCode.NOT_FOUND, None),
]


@pytest.mark.parametrize(
    ("service", "rpc", "call", "code", "model"),
    CALLS,
    ids=[f"{service.split('.')[-1]}-{rpc}-{code.name}" for service, rpc, _, code, _ in CALLS],
)
def test_server_spans_follow_the_rpc_conventions(
    traced: tuple[ServerProcess, Collector],
    service: str,
    rpc: str,
    call: Callable[[str, str], grpc.StatusCode],
    code: grpc.StatusCode,
    model: tuple[str, str] | None,
) -> None:
    stack, collector = traced
    traceparent, trace_id = new_traceparent()
    assert call(stack.target, traceparent) == code
    span = collector.server_span(trace_id)
    assert_rpc_conventions(span, service, rpc, int(stack.target.rsplit(":", 1)[1]), code)
    if model is not None:
        assert (span.value("tensorgate.model.name"), span.value("tensorgate.model.version") or "") == model


def test_stream_span_has_its_status_and_message_counts(traced: tuple[ServerProcess, Collector]) -> None:
    """One span per stream, with the stream's status and its messages received and sent; the log line of the
    stream carries its trace id."""
    stack, collector = traced
    with TensorgateClient(stack.target) as client:
        list(client.stream_predict("mnist", iter(np.zeros((3, 28, 28), np.float32)), batch_size=1))

    def stream_spans() -> list[ReceivedSpan]:
        # This stream's server span: the test traces nothing itself, so the server's span starts the trace.
        return [
            s
            for s in collector.snapshot()
            if s.name == f"{V1}/StreamPredict" and s.service == "tensorgate" and not s.parent_id
        ]

    collector.wait_for(lambda _: bool(stream_spans()), "the stream's span")
    (stream,) = stream_spans()
    assert_rpc_conventions(stream, V1, "StreamPredict", int(stack.target.rsplit(":", 1)[1]), grpc.StatusCode.OK)
    assert stream.value("tensorgate.stream.messages_received") == 3
    assert stream.value("tensorgate.stream.messages_sent") == 3
    assert stream.value("tensorgate.model.name") == "mnist"
    deadline = time.monotonic() + 30
    while not (
        lines := [line for line in log_lines(stack, "stream closed") if line.get("trace_id") == stream.trace_id]
    ):
        assert time.monotonic() < deadline, "no stream closed log line with the stream's trace id"
        time.sleep(0.2)
    (line,) = lines
    assert len(line["span_id"]) == 16 and line["received"] == line["answered"] == 3


def log_lines(server: ServerProcess, message: str) -> list[dict[str, object]]:
    """The server's JSON log lines (its stderr is a file: ``--log-format auto`` writes JSON) with ``message``."""
    return [json.loads(line) for line in server.log().splitlines() if f'"message": "{message}"' in line]


def test_a_failed_stream_message_is_an_event_and_the_stream_stays_ok(traced: tuple[ServerProcess, Collector]) -> None:
    stack, collector = traced
    traceparent, trace_id = new_traceparent()
    requests = [service_pb2.ModelInferRequest(model_name=name) for name in ("nothere", "mnist")]
    for request in requests:
        tensor = request.inputs.add(name="keras_tensor", datatype="FP32", shape=[1, 28, 28])
        tensor.contents.fp32_contents.extend([0.0] * 784)
    with grpc.insecure_channel(stack.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answers = list(stub.ModelStreamInfer(iter(requests), metadata=(("traceparent", traceparent),), timeout=30))
    assert [bool(answer.error_message) for answer in answers] == [True, False]
    span = collector.server_span(trace_id)
    assert_rpc_conventions(span, OIP, "ModelStreamInfer", int(stack.target.rsplit(":", 1)[1]), grpc.StatusCode.OK)
    assert span.events == ("message failed",)
    assert (span.value("tensorgate.stream.messages_received"), span.value("tensorgate.stream.messages_sent")) == (2, 2)


# --- configured by OTEL_* alone, TLS to the collector ------------------------------------------------------------


@pytest.fixture(scope="module")
def env_traced(
    repository: Path, pki: DevPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Collector]]:
    """A server without a tracing flag, configured by OpenTelemetry's variables: a TLS collector verified against
    the development CA, a header for it, the service name and resource, and the SDK's sampler (``traceidratio``
    ignores the caller's sampled flag, which tensorgate's own sampling would follow)."""
    receiver, collector, port = start_receiver(pki)
    environment = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca),
        "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-tenant=tensorgate-tests",
        "OTEL_SERVICE_NAME": "tensorgate-from-env",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.namespace=inference",
        "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "1",
    }
    root = traced_repository(repository, tmp_path_factory.mktemp("env-traced-repository"))
    with pytest.MonkeyPatch.context() as patch:  # the server process inherits this environment
        for name, value in environment.items():
            patch.setenv(name, value)
        server = start_server(root, tmp_path_factory.mktemp("env-traced") / "server.log")
    yield server, collector
    assert server.stop() == 0
    receiver.stop(0)


def test_otel_variables_alone_configure_tracing_over_tls(env_traced: tuple[ServerProcess, Collector]) -> None:
    server, collector = env_traced
    traceparent, trace_id = new_traceparent(sampled=False)
    assert v1_predict(server.target, traceparent, "mnist", IMAGE) == grpc.StatusCode.OK
    span = collector.server_span(trace_id)  # sampled by OTEL_TRACES_SAMPLER, although the caller did not sample it
    assert_rpc_conventions(span, V1, "Predict", int(server.target.rsplit(":", 1)[1]), grpc.StatusCode.OK)
    assert span.service == "tensorgate-from-env"
    assert span.resource["deployment.environment"] == "test"
    assert span.resource["service.namespace"] == "inference"
    assert all(export.get("x-collector-tenant") == "tensorgate-tests" for export in collector.metadata)


# --- what the settings override -----------------------------------------------------------------------------------


@pytest.fixture
def otel_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable of the test run's own environment leaks in."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def provider_of(service_name: str, ratio: float | None = None) -> tuple[str, str]:
    """The service name and sampler of the tracer provider the server would build with these settings."""
    provider = tracing.build_tracer_provider("127.0.0.1:4317", service_name, ratio)
    try:
        return str(provider.resource.attributes["service.name"]), provider.sampler.get_description()
    finally:
        provider.shutdown()


def test_settings_override_the_environment_only_where_set(otel_environment: pytest.MonkeyPatch) -> None:
    assert provider_of("")[0] == "tensorgate"
    otel_environment.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-resource")
    assert provider_of("")[0] == "from-resource"
    otel_environment.setenv("OTEL_SERVICE_NAME", "from-env")
    assert provider_of("")[0] == "from-env"
    assert provider_of("from-flag")[0] == "from-flag"

    otel_environment.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    otel_environment.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert provider_of("")[1].startswith("ParentBased{root:TraceIdRatioBased{0.25}")
    # A sample ratio in the settings: tensorgate samples server spans, and the SDK keeps their children.
    assert provider_of("", ratio=0.5)[1].startswith("ParentBased{root:AlwaysOnSampler")


def test_tracing_turns_on_from_an_endpoint_in_the_settings_or_the_environment() -> None:
    assert not tracing.tracing_wanted("", {})
    assert tracing.tracing_wanted("collector:4317", {})
    assert tracing.tracing_wanted("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317"})
    assert tracing.tracing_wanted("", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"})
    assert not tracing.tracing_wanted("collector:4317", {"OTEL_SDK_DISABLED": "true"})
