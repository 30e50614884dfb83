"""One trace per request, end to end: client → Envoy (gateway span) → server span → queue → batch (linked)
→ model, received by a small collector that speaks the real OTLP/gRPC protocol."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tensorgate.clients.client import TensorgateClient

from conftest import ServerProcess, free_port, start_server


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[tuple[str, str], ...]
    attributes: dict[str, object]


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext):
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            ReceivedSpan(
                                service=attributes.get("service.name", ""),
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                                attributes={a.key: a.value for a in span.attributes},
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)


@pytest.fixture(scope="module")
def traced(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Collector]]:
    collector = Collector()
    receiver = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = receiver.add_insecure_port(f"127.0.0.1:{free_port()}")
    receiver.start()
    root = tmp_path_factory.mktemp("traced-repository")
    shutil.copytree(repository / "mnist", root / "mnist")
    extra = ("--tracing-endpoint", f"127.0.0.1:{port}", "--trace-sample-ratio", "1")
    stack = start_server(root, tmp_path_factory.mktemp("traced") / "stack.log", *extra, gateway=True)
    yield stack, collector
    assert stack.stop() == 0
    receiver.stop(0)


def wait_for_trace(
    collector: Collector, server_span_filter, timeout_s: float = 30
) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The server span matching the filter, once its gateway span has arrived too (Envoy flushes every 5 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = collector.snapshot()
        for span in spans:
            if span.service == "tensorgate" and span.name == "predict" and server_span_filter(span, spans):
                has_gateway = any(s.span_id == span.parent_id and s.service == "tensorgate-gateway" for s in spans)
                has_batch = any(span.span_id in {link[1] for link in s.links} for s in spans if s.name == "batch")
                if has_gateway and has_batch:
                    return span, spans
        assert time.monotonic() < deadline, f"no complete trace; spans: {[(s.service, s.name) for s in spans]}"
        time.sleep(0.5)


def assert_server_chain(server: ReceivedSpan, spans: list[ReceivedSpan]) -> ReceivedSpan:
    """gateway → server → {validate, queue}; batch (linked to the server span) → model. Returns the gateway span."""
    in_trace = [s for s in spans if s.trace_id == server.trace_id]
    gateway = next(s for s in in_trace if s.span_id == server.parent_id)
    assert gateway.service == "tensorgate-gateway"
    children = {s.name for s in in_trace if s.parent_id == server.span_id}
    assert {"validate", "queue"} <= children, children
    batch = next(s for s in spans if s.name == "batch" and (server.trace_id, server.span_id) in s.links)
    assert any(s.name == "model" and s.parent_id == batch.span_id for s in spans)
    assert server.attributes["tensorgate.batch_size"].int_value >= 1
    assert server.attributes["tensorgate.model_version"].string_value == "1"
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
provider.shutdown()
"""


def test_grpc_client_trace_continues_through_gateway_and_server(traced: tuple[ServerProcess, Collector]) -> None:
    stack, collector = traced
    collector_endpoint = (
        next(line for line in stack.log().splitlines() if '"tracing on"' in line)
        .split('"endpoint": "')[1]
        .split('"')[0]
    )
    subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, stack.gateway_target, collector_endpoint], check=True, timeout=120
    )

    def from_client(span: ReceivedSpan, spans: list[ReceivedSpan]) -> bool:
        return any(s.service == "test-client" and s.trace_id == span.trace_id for s in spans)

    server, spans = wait_for_trace(collector, from_client)
    gateway = assert_server_chain(server, spans)
    client_span = next(s for s in spans if s.span_id == gateway.parent_id)
    assert client_span.service == "test-client" and client_span.name == "tensorgate.v1.InferenceService/Predict"


def test_log_lines_carry_the_trace_id(traced: tuple[ServerProcess, Collector]) -> None:
    stack, collector = traced
    with TensorgateClient(stack.target) as client:
        list(client.stream_predict("mnist", iter(np.zeros((3, 28, 28), np.float32)), batch_size=1))
    deadline = time.monotonic() + 30
    while True:
        streams = [s for s in collector.snapshot() if s.name == "stream_predict"]
        lines = [json.loads(line) for line in stack.log().splitlines() if '"stream closed"' in line]
        traced_lines = [line for line in lines if "trace_id" in line]
        if streams and traced_lines:
            break
        assert time.monotonic() < deadline, "no stream span or no traced log line"
        time.sleep(0.5)
    assert {line["trace_id"] for line in traced_lines} & {s.trace_id for s in streams}
    assert all(len(line["span_id"]) == 16 for line in traced_lines)
