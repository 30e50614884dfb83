"""OpenTelemetry tracing of the serving path, exported over OTLP/gRPC.

Off unless ``tracing_endpoint`` is set: a request then pays for one flag test.
When on, each sampled RPC gets a server span continuing the caller's W3C trace
context (from Envoy or a client), with children for validation and for the
time queued; each merged batch is one span linked to every request it served,
with the model call as its child.

The sampling decision is taken here, before any OpenTelemetry object exists
(``start_server_span``): a caller's ``traceparent`` flag is followed, and a new
trace is sampled at ``sample_ratio``. An unsampled request (most of them at a
10% ratio) creates no span, attaches no context and reads no more than its
``traceparent`` header; the SDK's own sampler then only has to keep what was
chosen (parent-based, always on).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

log = logging.getLogger(__name__)

tracer = trace.get_tracer("tensorgate.server")
Metadata = Iterable[tuple[str, str | bytes]]


class _Sampling:
    """Whether tracing is on, and the share of new traces it keeps (set once by ``setup_tracing``)."""

    enabled = False
    ratio = 0.0


def start_server_span(name: str, metadata: Callable[[], Metadata | None]) -> trace.Span | None:
    """The server span of a sampled RPC, or None (no span at all) when tracing is off or the call is not sampled.

    ``metadata`` (the call's invocation metadata) is read only when tracing is on.
    """
    if not _Sampling.enabled:
        return None
    headers = metadata() or ()
    traceparent = next((value for key, value in headers if key == "traceparent"), None)
    if isinstance(traceparent, str) and len(traceparent) >= 2:
        if not _sampled_flag(traceparent):
            return None
    elif random.random() >= _Sampling.ratio:
        return None
    return tracer.start_span(name, context=incoming_context(headers), kind=SpanKind.SERVER)


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


def setup_tracing(endpoint: str, service_name: str, sample_ratio: float) -> None:
    """Install the SDK tracer provider exporting to an OTLP/gRPC collector at ``endpoint`` (host:port)."""
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    # start_server_span samples server spans; below them, children follow their parent.
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True), schedule_delay_millis=500)
    )
    trace.set_tracer_provider(provider)
    _Sampling.enabled, _Sampling.ratio = True, sample_ratio
    log.info("tracing on", extra={"fields": {"endpoint": endpoint, "sample_ratio": sample_ratio}})


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
