"""OpenTelemetry tracing of the serving path, exported over OTLP/gRPC.

Off unless ``tracing_endpoint`` is set: the OpenTelemetry API is then a no-op
and a request pays only for a few function calls. When on, each RPC gets a
server span continuing the caller's W3C trace context (from Envoy or a client),
with children for validation and for the time queued; each merged batch is one
span linked to every request it served, with the model call as its child.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext

from opentelemetry import propagate, trace
from opentelemetry.context import Context

log = logging.getLogger(__name__)

tracer = trace.get_tracer("tensorgate.server")


def child_span(name: str, attributes: dict[str, int] | None = None) -> AbstractContextManager[object]:
    """A child of the current span, or nothing when the current span is not sampled.

    Unsampled requests (most of them at a 10% ratio) then pay for no span at all below their server span.
    """
    if trace.get_current_span().is_recording():
        return tracer.start_as_current_span(name, attributes=attributes)
    return nullcontext()


def setup_tracing(endpoint: str, service_name: str, sample_ratio: float) -> None:
    """Install the SDK tracer provider exporting to an OTLP/gRPC collector at ``endpoint`` (host:port)."""
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True), schedule_delay_millis=500)
    )
    trace.set_tracer_provider(provider)
    log.info("tracing on", extra={"fields": {"endpoint": endpoint, "sample_ratio": sample_ratio}})


def shutdown_tracing() -> None:
    """Flush spans still buffered (a no-op when tracing is off)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


def incoming_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The caller's trace context from gRPC metadata (``traceparent``, ``tracestate``)."""
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    return propagate.extract(carrier)
