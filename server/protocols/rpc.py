"""The RPC corridor: what every call of every protocol on the port goes through, in one place.

A protocol module (``v1``, ``kserve_v2``, ``tfserving``) is a thin adapter: it declares which handler answers
which method of ``methods.METHODS``, maps its messages to NumPy and back, and leaves the rest here. For each call
the corridor parses the request bytes (so that undecodable bytes get INVALID_ARGUMENT, where grpcio's own
deserializer would answer INTERNAL), authorizes the caller for the method's scope, opens the server span, gives
the handler a ``Call`` (the caller, the model it names, its deadline: the only way a handler reaches the registry
and the data plane), turns any failure into its status (``failure``, the one place where an exception becomes a
gRPC code), and counts the call under the model and version that answered it. Bidirectional streams get the same
per message, plus a window of messages in flight and a time limit.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
import numpy as np
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from tensorgate.server.errors import (
    InvalidArgumentError,
    RateLimitedError,
    ResourceExhaustedError,
    ServingError,
)
from tensorgate.server.models.registry import AvailableVersion, ModelRegistry
from tensorgate.server.observability import metrics
from tensorgate.server.observability.tracing import (
    Attributes,
    end_grpc_span,
    grpc_server_span,
    set_model,
    start_server_span,
)
from tensorgate.server.protocols.methods import METHODS, Method, method
from tensorgate.server.security.auth import Authenticator
from tensorgate.server.security.principal import Principal
from tensorgate.server.serving.dataplane import Admission, DataPlane, Prediction
from tensorgate.v1.tensors import TensorCodecError

log = logging.getLogger(__name__)

Q = TypeVar("Q", bound=Message)  # a request message
R = TypeVar("R", bound=Message)  # a response message
INTERNAL_MESSAGE = "internal error; the server log has the details"


@dataclass(frozen=True)
class CallLimits:
    """The limits every service on the port holds its calls to (from the server's configuration)."""

    stream_window: int  # requests of one stream worked on at once
    max_stream_duration_s: float  # longest a stream may stay open
    max_request_timeout_s: float  # deadline of a call that sets none, and the most one may set

    def time_left(self, remaining: float | None) -> float:
        """The caller's time left (None when it set no deadline), capped by (or defaulting to) the server's
        maximum request timeout."""
        return self.max_request_timeout_s if remaining is None else min(remaining, self.max_request_timeout_s)


@dataclass(frozen=True)
class Failure:
    """How a failed call, or a failed message of a stream, is answered and counted."""

    code: grpc.StatusCode
    message: str
    retry_after_s: float | None = None  # for overload: when to try again
    rejection: str = ""  # the tensorgate_requests_rejected_total reason ("" when it is not a refusal)

    @property
    def status(self) -> status_pb2.Status:
        """google.rpc.Status of the failure; overload carries a google.rpc.RetryInfo with the suggested delay."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.retry_after_s is not None:
            delay = Duration()
            delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return status

    @property
    def trailers(self) -> tuple[tuple[str, str | bytes], ...]:
        """Trailers of a failed call: the full google.rpc.Status, and Retry-After (seconds) for overload.

        grpcio-status clients and Envoy's convert_grpc_status read grpc-status-details-bin; Envoy passes
        retry-after on to REST callers as the HTTP header.
        """
        trailers: tuple[tuple[str, str | bytes], ...] = (("grpc-status-details-bin", self.status.SerializeToString()),)
        if self.retry_after_s is not None:
            trailers += (("retry-after", str(max(1, math.ceil(self.retry_after_s)))),)
        return trailers


_REJECTION_REASONS = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overload",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.PERMISSION_DENIED: "unauthorized",
}


def failure(exc: Exception, method: str) -> Failure:
    """The answer to an exception raised while serving ``method``: a ServingError's own status, a malformed
    tensor's INVALID_ARGUMENT, and INTERNAL (logged with its traceback) for anything unexpected."""
    if isinstance(exc, ServingError):
        reason = "rate_limited" if isinstance(exc, RateLimitedError) else _REJECTION_REASONS.get(exc.code, "")
        retry = exc.retry_after_s if isinstance(exc, ResourceExhaustedError) else None
        return Failure(exc.code, str(exc), retry, reason)
    if isinstance(exc, TensorCodecError):
        return Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc), rejection="invalid")
    log.error("unexpected error in %s", method, exc_info=exc)
    return Failure(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def parse_request(message_type: type[Q], data: bytes) -> Q:
    """The request message in ``data``; INVALID_ARGUMENT when the bytes do not parse."""
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise InvalidArgumentError(f"request is not a valid {message_type.DESCRIPTOR.full_name}: {exc}") from None


class Call:
    """One request as its handler sees it: who calls, which model it names, how long it may take.

    The handler names its model through ``select``, ``resolve`` or ``admit`` (which also check that the caller
    may use it), and runs the model through ``predict``; the corridor then counts the request under that model
    and the version that answered.
    """

    __slots__ = ("_corridor", "_expires_at", "model_label", "principal", "version_label")

    def __init__(self, corridor: Corridor, time_left_s: float, principal: Principal | None) -> None:
        """``time_left_s``: how long the call may take from now (``CallLimits.time_left`` of the caller's
        deadline): the protocol's own business, gRPC's context or an HTTP request."""
        self._corridor = corridor
        self._expires_at = time.monotonic() + time_left_s
        self.principal = principal  # None when authentication is off
        self.model_label = ""
        self.version_label = ""

    @property
    def caller(self) -> str | None:
        """The authenticated caller's name (None when authentication is off)."""
        return None if self.principal is None else self.principal.name

    def may_use(self, model: str) -> bool:
        """Whether the caller may use ``model`` (every model when authentication is off or the key is not
        restricted)."""
        return self.principal is None or not self.principal.models or model in self.principal.models

    def select(self, model: str) -> str:
        """``model``, once checked: named, and one the caller may use (INVALID_ARGUMENT, PERMISSION_DENIED)."""
        registry = self._corridor.registry
        self.model_label = model if registry.knows(model) else metrics.UNKNOWN_MODEL
        self._check(model)
        return model

    def resolve(self, model: str, version: str) -> AvailableVersion:
        """The version that serves ``model`` and ``version`` (a number, a label, or "" for the newest)."""
        self._check(model)
        try:
            found = self._corridor.registry.resolve(model, version)
        except ServingError:
            self.model_label = model if self._corridor.registry.knows(model) else metrics.UNKNOWN_MODEL
            raise
        self.model_label = model
        return found

    def admit(self, model: str, version: str) -> Admission:
        """``resolve``, then a place in that version's queue (RESOURCE_EXHAUSTED when it is full): call it before
        decoding the request's tensors, so that an overloaded model refuses before any work is spent on them."""
        return self._corridor.dataplane.admit(self.resolve(model, version), self.caller)

    async def predict(
        self, admission: Admission, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> Prediction:
        """Run an admitted request within the caller's deadline (capped by the server's request timeout)."""
        time_left = max(0.0, self._expires_at - time.monotonic())
        prediction = await self._corridor.dataplane.predict(admission, inputs, output_filter, time_left)
        self.version_label = str(prediction.version)
        return prediction

    def _check(self, model: str) -> None:
        if not model:
            raise InvalidArgumentError("model is required")
        if self.principal is not None:
            self.principal.check_model(model)


Answer = Callable[[Q, Call], Awaitable[R]]


@dataclass(frozen=True)
class Stream(Generic[Q, R]):
    """How a protocol answers the messages of a bidirectional stream.

    ``answer`` answers one request; ``error`` builds the in-stream answer of a request that failed (None when
    its bytes did not even parse); ``prepare``, when given, is called once per stream and returns a function
    applied to each parsed request in arrival order, before its work starts (for a protocol whose later messages
    inherit fields of earlier ones).
    """

    request_type: type[Q]
    answer: Answer[Q, R]
    error: Callable[[Q | None, Failure], R]
    prepare: Callable[[], Callable[[Q], None]] | None = None


class Corridor:
    """The registry, data plane, limits and authenticator that every servicer on the port works through."""

    def __init__(
        self,
        registry: ModelRegistry,
        dataplane: DataPlane,
        limits: CallLimits,
        authenticator: Authenticator | None,
    ) -> None:
        self.registry = registry
        self.dataplane = dataplane
        self.limits = limits
        self._authenticator = authenticator
        self.listening_on("", 0)

    def listening_on(self, host: str, port: int) -> None:
        """The address the server's port is bound to (known once it is bound), for the spans' ``server.address``
        and ``server.port``: each method's span name and attributes are made here, once."""
        self._spans: dict[Method, tuple[str, Attributes]] = {
            m: grpc_server_span(m.service, m.rpc, host, port) for m in METHODS
        }

    def _start_span(self, method: Method, context: grpc.aio.ServicerContext) -> trace.Span | None:
        """The call's server span, named and attributed by OpenTelemetry's RPC conventions (None: not traced)."""
        name, attributes = self._spans[method]
        return start_server_span(name, context.invocation_metadata, attributes)

    def service(
        self,
        service: str,
        unary: Mapping[str, tuple[type[Message], Answer]],
        streams: Mapping[str, Stream] | None = None,
    ) -> grpc.GenericRpcHandler:
        """The gRPC handler of one service: its ``unary`` and ``streams`` methods by gRPC name, each served under
        its entry in ``methods.METHODS`` (KeyError for a method that is not in the table)."""
        handlers = {
            rpc: self._unary_handler(method(service, rpc), request, answer) for rpc, (request, answer) in unary.items()
        }
        for rpc, stream in (streams or {}).items():
            handlers[rpc] = grpc.stream_stream_rpc_method_handler(
                functools.partial(self._serve_stream, method(service, rpc), stream), response_serializer=_serialize
            )
        return grpc.method_handlers_generic_handler(service, handlers)

    def authorize(
        self, metadata: Sequence[tuple[str, str | bytes]] | None, peer: str, scope: str | None, cost: int
    ) -> Principal | None:
        """The caller, authorized for ``scope`` and charged ``cost`` requests of its rate (0: credentials only).

        ``metadata`` are the call's headers (lowercase names), ``peer`` its address as gRPC writes it
        (``ipv4:10.0.0.1:5000``)."""
        if self._authenticator is None or scope is None:
            return None
        return self._authenticator.authorize(metadata, scope, peer, cost)

    def call(self, context: grpc.aio.ServicerContext, principal: Principal | None) -> Call:
        """A ``Call`` for a gRPC request, with the time its deadline leaves."""
        return Call(self, self.limits.time_left(context.time_remaining()), principal)

    def _authorize(self, context: grpc.aio.ServicerContext, scope: str | None, cost: int) -> Principal | None:
        return self.authorize(context.invocation_metadata(), context.peer(), scope, cost)

    def _unary_handler(self, method: Method, request_type: type[Q], answer: Answer[Q, R]) -> grpc.RpcMethodHandler:
        async def handle(data: bytes, context: grpc.aio.ServicerContext) -> Message:
            span = self._start_span(method, context)
            if span is None:
                return await self._unary(method, request_type, answer, data, context, None)
            # The status is the corridor's (end_grpc_span), not the SDK's reading of context.abort's exception.
            with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
                return await self._unary(method, request_type, answer, data, context, span)

        return grpc.unary_unary_rpc_method_handler(handle, response_serializer=_serialize)

    async def _unary(
        self,
        method: Method,
        request_type: type[Q],
        answer: Answer[Q, R],
        data: bytes,
        context: grpc.aio.ServicerContext,
        span: trace.Span | None,
    ) -> R:
        started, code, rejection, message = time.perf_counter(), grpc.StatusCode.OK, "", ""
        call = self.call(context, None)
        try:
            call.principal = self._authorize(context, method.scope, 1)
            return await answer(parse_request(request_type, data), call)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            failed = failure(exc, method.name)
            code, rejection, message = failed.code, failed.rejection, failed.message
            await context.abort(failed.code, failed.message, trailing_metadata=failed.trailers)
        finally:
            if span is not None:
                set_model(span, call.model_label, call.version_label)
                end_grpc_span(span, code, message)
            record(call, method.name, code, started, rejection)
        raise AssertionError("context.abort always raises")

    async def _serve_stream(
        self, method: Method, stream: Stream[Q, R], requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[R]:
        """The answers of a bidirectional stream, in arrival order, with at most ``stream_window`` in flight.

        A reader task takes messages while a slot is free and starts the work of each; this generator yields
        the answers in order and frees a slot only once its answer is written. When the model or the client's
        reading falls behind, the reader stops and HTTP/2 flow control slows the sender. A stream open longer
        than ``max_stream_duration_s`` ends with DEADLINE_EXCEEDED.

        The caller needs the method's scope when the stream opens and again at every message, each of which
        costs a request of its rate: a message over the rate is refused (RESOURCE_EXHAUSTED with a retry delay,
        as its own answer) and the stream goes on; a key revoked or a token expired meanwhile ends the stream at
        its next message, after the answers already under way.

        One span covers the whole stream (when sampled): the stream's status, its messages received and sent,
        and an event per message that failed; each message's queue wait and batch show as its children and
        links, since the reader task, which starts every message's work, runs in the span's context.
        """
        span = self._start_span(method, context)
        slots = asyncio.Semaphore(self.limits.stream_window)
        started: asyncio.Queue[asyncio.Future[R] | None] = asyncio.Queue()
        denied: ServingError | None = None  # why the caller may no longer send
        prepare = None if stream.prepare is None else stream.prepare()
        received = answered = 0
        ended = Failure(grpc.StatusCode.OK, "")  # how the stream itself ends
        outcome = "completed"

        async def read_requests() -> None:
            nonlocal denied, received
            try:
                async for data in requests:
                    await slots.acquire()
                    received += 1
                    refusal: ServingError | None = None
                    principal: Principal | None = None
                    try:
                        principal = self._authorize(context, method.scope, 1)
                    except RateLimitedError as exc:
                        refusal = exc
                    except ServingError as exc:
                        denied = exc
                        return
                    call = self.call(context, principal)
                    started.put_nowait(self._start_message(method, stream, prepare, call, data, refusal))
            finally:
                started.put_nowait(None)

        reader_context = contextvars.copy_context()
        if span is not None:
            reader_context.run(otel_context.attach, trace.set_span_in_context(span))
        reader: asyncio.Task[None] | None = None
        metrics.STREAMS_IN_FLIGHT.inc()
        closes_at = asyncio.get_running_loop().time() + self.limits.max_stream_duration_s
        try:
            try:
                self._authorize(context, method.scope, 0)
            except ServingError as exc:
                denied = exc
            else:
                reader = asyncio.create_task(read_requests(), context=reader_context)
            while reader is not None:
                try:
                    # Only the waits are timed, never the yield: the write below belongs to grpc's task.
                    async with asyncio.timeout_at(closes_at):
                        if (task := await started.get()) is None:
                            break
                        response = await task
                except TimeoutError:
                    outcome = "expired"
                    limit = self.limits.max_stream_duration_s
                    ended = Failure(
                        grpc.StatusCode.DEADLINE_EXCEEDED, f"stream open longer than the server's limit of {limit:g} s"
                    )
                    await context.abort(ended.code, ended.message)
                yield response
                answered += 1
                slots.release()
            if reader is not None:
                await reader
            if denied is not None:
                outcome = "denied"
                ended = failure(denied, method.name)
                record(self.call(context, None), method.name, ended.code, time.perf_counter(), ended.rejection)
                await context.abort(ended.code, ended.message, trailing_metadata=ended.trailers)
        except (asyncio.CancelledError, GeneratorExit):
            # grpc cancels the handler or closes this generator when the client cancels, its deadline
            # passes, or the server stops: the finally clause below releases the stream's work.
            outcome, ended = "cancelled", Failure(grpc.StatusCode.CANCELLED, "")
            raise
        finally:
            metrics.STREAMS_IN_FLIGHT.dec()
            if reader is not None:
                reader.cancel()
            while not started.empty():
                if (task := started.get_nowait()) is not None:
                    task.cancel()
            fields = {"method": method.rpc, "received": received, "answered": answered, "outcome": outcome}
            if span is None:
                log.info("stream closed", extra={"fields": fields})
            else:
                span.set_attribute("tensorgate.stream.messages_received", received)
                span.set_attribute("tensorgate.stream.messages_sent", answered)
                span.set_attribute("tensorgate.stream.outcome", outcome)
                end_grpc_span(span, ended.code, ended.message)
                span.end()
                with trace.use_span(span):  # the log line carries the stream's trace id
                    log.info("stream closed", extra={"fields": fields})

    def _start_message(
        self,
        method: Method,
        stream: Stream[Q, R],
        prepare: Callable[[Q], None] | None,
        call: Call,
        data: bytes,
        refusal: ServingError | None,
    ) -> asyncio.Future[R]:
        """Parse one message (in arrival order) and start its work; never raises: a message that fails, or comes
        with a ``refusal``, is answered by the stream's own kind of error message."""
        started = time.perf_counter()
        try:
            request = parse_request(stream.request_type, data)
        except ServingError as exc:
            return _answered(self._failed(method, stream, None, call, exc, started))
        if prepare is not None:
            prepare(request)
        if refusal is not None:
            return _answered(self._failed(method, stream, request, call, refusal, started))
        return asyncio.ensure_future(self._answer_message(method, stream, request, call, started))

    async def _answer_message(self, method: Method, stream: Stream[Q, R], request: Q, call: Call, started: float) -> R:
        try:
            response = await stream.answer(request, call)
        except Exception as exc:
            return self._failed(method, stream, request, call, exc, started)
        record(call, method.name, grpc.StatusCode.OK, started, "")
        set_model(trace.get_current_span(), call.model_label, call.version_label)  # the stream's span, if traced
        return response

    @staticmethod
    def _failed(
        method: Method, stream: Stream[Q, R], request: Q | None, call: Call, exc: Exception, started: float
    ) -> R:
        failed = failure(exc, method.name)
        record(call, method.name, failed.code, started, failed.rejection)
        # The stream's span is current here (the reader's context); a no-op when the stream is not traced.
        trace.get_current_span().add_event(
            "message failed", {"rpc.grpc.status_code": failed.code.value[0], "exception.message": failed.message}
        )
        return stream.error(request, failed)


def _answered(response: R) -> asyncio.Future[R]:
    """An already answered slot of a stream."""
    future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
    future.set_result(response)
    return future


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def record(call: Call, method: str, code: grpc.StatusCode, started: float, rejection: str) -> None:
    """Count one finished request (or stream message) of ``method`` with its outcome and duration."""
    _requests_counter(call.model_label, call.version_label, method, code.name).inc()
    _duration_histogram(call.model_label, method).observe(time.perf_counter() - started)
    if rejection:
        _rejected_counter(rejection).inc()


# Metric children, resolved once per label set instead of by ``.labels()`` on every request. Every label is
# bounded (repository models and versions, methods, status codes, reasons), and so are these caches.
@functools.cache
def _requests_counter(model: str, version: str, method: str, code: str) -> Counter:
    return metrics.REQUESTS.labels(model=model, version=version, method=method, code=code)


@functools.cache
def _duration_histogram(model: str, method: str) -> Histogram:
    return metrics.REQUEST_SECONDS.labels(model=model, method=method)


@functools.cache
def _rejected_counter(reason: str) -> Counter:
    return metrics.REJECTED.labels(reason=reason)
