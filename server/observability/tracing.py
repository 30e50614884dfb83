"""OpenTelemetry tracing of the serving path, exported over OTLP/gRPC, named and attributed by OpenTelemetry's
semantic conventions so that a trace backend filters it like any other service's.

Configuration is OpenTelemetry's own: the SDK reads ``OTEL_EXPORTER_OTLP_*`` (endpoint, TLS certificate, headers,
insecure), ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_TRACES_SAMPLER(_ARG)`` itself; tracing
is on when an endpoint is set there or by ``tracing_endpoint``, and the server's settings (``tracing_endpoint``,
``service_name``, ``trace_sample_ratio``) override the environment only where they are set.

Off, a request pays for one flag test. On, each sampled RPC gets a server span (``start_server_span``)
continuing the caller's W3C trace context (from Envoy or a client), with children for validation and for the time
queued; each merged batch is one span linked to every request it served, with the model call as its child.

With a ``trace_sample_ratio`` (the default unless ``OTEL_TRACES_SAMPLER`` is set) the sampling decision is taken
here, before any OpenTelemetry object exists: a caller's ``traceparent`` flag is followed, and a new trace is
sampled at the ratio. An unsampled request (most of them at a 10% ratio) creates no span, attaches no context
and reads no more than its ``traceparent`` header; the SDK's own sampler then only has to keep what was chosen
(parent-based, always on). With ``OTEL_TRACES_SAMPLER`` alone, the SDK's sampler decides every span.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from tensorgate.server.config import DEFAULT_TRACE_SAMPLE_RATIO

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

tracer = trace.get_tracer("tensorgate.server")
Metadata = Iterable[tuple[str, str | bytes]]
Attributes = Mapping[str, AttributeValue]
DEFAULT_SERVICE_NAME = "tensorgate"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SAMPLER_VARIABLE = "OTEL_TRACES_SAMPLER"

# The gRPC codes that make a server span an error (OpenTelemetry's gRPC conventions): the server's own failures.
# The caller's mistakes and refusals (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, RESOURCE_EXHAUSTED, ...) and
# cancellations leave the span's status unset.
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
MODEL_NAME = "tensorgate.model.name"
MODEL_VERSION = "tensorgate.model.version"


class _Sampling:
    """Whether tracing is on, and who samples new traces (set once by ``setup_tracing``): ``ratio`` here, or,
    when ``delegated``, the SDK's sampler from ``OTEL_TRACES_SAMPLER``."""

    enabled = False
    delegated = False
    ratio = 0.0


def start_server_span(
    name: str, metadata: Callable[[], Metadata | None], attributes: Attributes | None = None
) -> trace.Span | None:
    """The server span of a sampled request, or None (no span at all) when tracing is off or the request is not
    sampled: the one place where a protocol opens its server span.

    ``name`` and ``attributes`` follow the protocol's conventions (``grpc_server_span`` for an RPC,
    ``http_server_span`` for a REST route). ``metadata`` (the request's headers, whence the caller's
    ``traceparent``) is read only when tracing is on.
    """
    if not _Sampling.enabled:
        return None
    headers = metadata() or ()
    if not _Sampling.delegated:
        traceparent = next((value for key, value in headers if key == "traceparent"), None)
        if isinstance(traceparent, str) and len(traceparent) >= 2:
            if not _sampled_flag(traceparent):
                return None
        elif random.random() >= _Sampling.ratio:
            return None
    return tracer.start_span(name, context=incoming_context(headers), kind=SpanKind.SERVER, attributes=attributes)


def grpc_server_span(service: str, rpc: str, address: str, port: int) -> tuple[str, dict[str, AttributeValue]]:
    """Name and attributes of the server span of RPC ``/{service}/{rpc}`` served at ``address:port`` (OpenTelemetry's
    RPC conventions: ``package.Service/Method``, ``rpc.system`` grpc, ``rpc.service``, ``rpc.method``)."""
    attributes: dict[str, AttributeValue] = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": rpc,
        "server.address": address,
        "server.port": port,
    }
    return f"{service}/{rpc}", attributes


def end_grpc_span(span: trace.Span, code: grpc.StatusCode, message: str = "") -> None:
    """Record the call's gRPC status on its server span: ``rpc.grpc.status_code`` always, and ERROR with
    ``message`` only for the codes the conventions count as the server's failures (``SERVER_ERROR_CODES``)."""
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, message or code.name))


def http_server_span(method: str, route: str, address: str, port: int) -> tuple[str, dict[str, AttributeValue]]:
    """Name and attributes of the server span of an HTTP request to ``route`` (a template such as
    ``/v1/models/{model}:predict``) served at ``address:port`` (OpenTelemetry's HTTP conventions: "METHOD route")."""
    attributes: dict[str, AttributeValue] = {
        "http.request.method": method,
        "http.route": route,
        "server.address": address,
        "server.port": port,
    }
    return f"{method} {route}", attributes


def end_http_span(span: trace.Span, status: int, message: str = "") -> None:
    """Record the response status on an HTTP server span; ERROR only for 5xx (a 4xx is the caller's mistake)."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR, message or str(status)))


def set_model(span: trace.Span, model: str, version: str) -> None:
    """The model and version that answered (or ``_unknown``), as the request's metrics count them."""
    if model:
        span.set_attribute(MODEL_NAME, model)
    if version:
        span.set_attribute(MODEL_VERSION, version)


def _sampled_flag(traceparent: str) -> bool:
    """The sampled bit of a W3C ``traceparent`` (``version-traceid-parentid-flags``); a malformed one is a new
    trace for the SDK, which the caller's sampling then decides like any other."""
    try:
        return bool(int(traceparent[-2:], 16) & 1)
    except ValueError:
        return random.random() < _Sampling.ratio


def child_span(name: str, attributes: dict[str, int] | None = None) -> AbstractContextManager[object]:
    """A child of the current span, or nothing when the current span is not sampled.

    Unsampled requests (most of them at a 10% ratio) then pay for no span at all below their server span.
    """
    if trace.get_current_span().is_recording():
        return tracer.start_as_current_span(name, attributes=attributes)
    return nullcontext()


def tracing_wanted(endpoint: str, environ: Mapping[str, str]) -> bool:
    """Whether to trace: an endpoint set by the server's settings or by OpenTelemetry's variables, and the SDK not
    disabled (``OTEL_SDK_DISABLED``)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(endpoint or any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES))


def sdk_samples(sample_ratio: float | None) -> bool:
    """Whether the SDK's sampler from ``OTEL_TRACES_SAMPLER`` decides, rather than ``trace_sample_ratio``."""
    return sample_ratio is None and bool(os.environ.get(SAMPLER_VARIABLE, "").strip())


def build_tracer_provider(endpoint: str, service_name: str, sample_ratio: float | None) -> TracerProvider:
    """The SDK tracer provider: the environment's resource, sampler and exporter, overridden by the settings given.

    ``endpoint`` (host:port) is a plaintext collector, as Envoy also uses it; without it the exporter reads
    ``OTEL_EXPORTER_OTLP_*`` (an ``https://`` endpoint with ``OTEL_EXPORTER_OTLP_CERTIFICATE`` for TLS).
    ``service_name`` overrides ``OTEL_SERVICE_NAME`` and ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``, which
    override the default, tensorgate. A ``sample_ratio``, or no ``OTEL_TRACES_SAMPLER``, means that
    ``start_server_span`` samples (and the SDK keeps every child of a kept span); otherwise the SDK's sampler does.
    """
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    resource = Resource.create()  # the SDK's detectors: OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME
    if service_name:
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    elif str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    sampler = None if sdk_samples(sample_ratio) else ParentBased(ALWAYS_ON)  # None: OTEL_TRACES_SAMPLER
    provider = TracerProvider(resource=resource, sampler=sampler)
    exporter = OTLPSpanExporter(endpoint=f"http://{endpoint}", insecure=True) if endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return provider


def setup_tracing(endpoint: str, service_name: str, sample_ratio: float | None) -> None:
    """Install the SDK tracer provider (``build_tracer_provider``) when tracing is wanted; nothing otherwise."""
    environ = os.environ
    if not tracing_wanted(endpoint, environ):
        return
    provider = build_tracer_provider(endpoint, service_name, sample_ratio)
    trace.set_tracer_provider(provider)
    _Sampling.delegated = sdk_samples(sample_ratio)
    _Sampling.ratio = DEFAULT_TRACE_SAMPLE_RATIO if sample_ratio is None else sample_ratio
    _Sampling.enabled = True
    sampler = environ[SAMPLER_VARIABLE] if _Sampling.delegated else f"ratio {_Sampling.ratio:g}"
    fields = {
        "endpoint": endpoint or next(environ[name] for name in ENDPOINT_VARIABLES if environ.get(name, "").strip()),
        "service_name": provider.resource.attributes.get("service.name"),
        "sampler": sampler,
    }
    log.info("tracing on", extra={"fields": fields})


def shutdown_tracing() -> None:
    """Flush spans still buffered (a no-op when tracing is off)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


def incoming_context(metadata: Metadata | None) -> Context:
    """The caller's trace context from gRPC metadata (``traceparent``, ``tracestate``)."""
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    return propagate.extract(carrier)
