"""gRPC servicers for tensorgate.v1: protobuf in, DataPlane call, protobuf out.

Requests arrive as raw bytes and are parsed here, so that undecodable bytes
get INVALID_ARGUMENT (grpcio's own deserializer would answer INTERNAL). Domain
errors become gRPC status codes in one place: ``rpc_method`` for unary calls, and
a per-message ``error`` in StreamPredict responses.

The servicers of the other protocols on the same port (``kserve_v2``,
``tfserving``) share this module's machinery: ``rpc_method`` (span,
authorization, status mapping, metrics), ``serve_stream`` (a bidirectional
stream's window and time limit), ``parse_request``, ``select_model``, ``current_caller``,
``label_version``, ``record_request``, ``CallLimits`` and ``unary_handlers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import Counter, Histogram

from tensorgate.server.errors import (
    InvalidArgumentError,
    RateLimitedError,
    ResourceExhaustedError,
    ServingError,
    quote,
)
from tensorgate.server.models.manager import ModelManager
from tensorgate.server.models.registry import ModelRegistry, ModelVersion, VersionState
from tensorgate.server.observability import metrics
from tensorgate.server.observability.tracing import start_server_span
from tensorgate.server.runtimes.signature import TensorInfo
from tensorgate.server.security.auth import Authenticator
from tensorgate.server.security.principal import Principal
from tensorgate.server.serving.dataplane import DataPlane, Prediction
from tensorgate.v1 import codec, inference_service_pb2, model_service_pb2, tensor_pb2
from tensorgate.v1.inference_service_pb2 import (
    PredictRequest,
    PredictResponse,
    StreamPredictRequest,
    StreamPredictResponse,
)
from tensorgate.v1.model_service_pb2 import (
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    GetModelStatusRequest,
    GetModelStatusResponse,
    ListModelsRequest,
    ListModelsResponse,
    LoadModelRequest,
    LoadModelResponse,
    ModelVersionState,
    ReloadModelRequest,
    ReloadModelResponse,
    SetModelLabelsRequest,
    SetModelLabelsResponse,
    UnloadModelRequest,
    UnloadModelResponse,
)

log = logging.getLogger(__name__)

INFERENCE_SERVICE = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name

M = TypeVar("M", bound=Message)
R = TypeVar("R")
S = TypeVar("S")  # the servicer a handler is a method of
Handler = Callable[[S, bytes, grpc.aio.ServicerContext], Awaitable[Message]]
BoundHandler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]

_STATES = {
    VersionState.LOADING: ModelVersionState.MODEL_VERSION_STATE_LOADING,
    VersionState.AVAILABLE: ModelVersionState.MODEL_VERSION_STATE_AVAILABLE,
    VersionState.FAILED: ModelVersionState.MODEL_VERSION_STATE_FAILED,
    VersionState.UNLOADING: ModelVersionState.MODEL_VERSION_STATE_UNLOADING,
}


def parse_request(message_type: type[M], data: bytes) -> M:
    """The request message in ``data``; INVALID_ARGUMENT when the bytes do not parse."""
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise InvalidArgumentError(f"request is not a valid {message_type.DESCRIPTOR.full_name}: {exc}") from None


def _unary(handler: Handler[S]) -> Handler[S]:
    """``rpc_method`` for tensorgate.v1: named after the handler; admin methods need the admin scope."""
    return _wrap(handler, handler.__name__, "admin" if handler.__name__ in ADMIN_METHODS else "predict")


def rpc_method(method: str, scope: str | None = "predict") -> Callable[[Handler[S]], Handler[S]]:
    """Decorator of a unary handler of any service on the port: a server span and the request metrics under
    ``method``, the caller authorized for ``scope`` (None: a public method, such as a health check)."""
    return functools.partial(_wrap, method=method, scope=scope)


def _wrap(handler: Handler[S], method: str, scope: str | None) -> Handler[S]:
    """Turn ServingError into its gRPC status and anything unexpected into INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: S, request: bytes, context: grpc.aio.ServicerContext) -> Message:
        span = start_server_span(method, context.invocation_metadata)
        if span is None:
            return await _answer(handler, self, request, context, method, scope, None)
        with trace.use_span(span, end_on_exit=True):
            return await _answer(handler, self, request, context, method, scope, span)

    return wrapper


async def _answer(
    handler: Handler[S],
    servicer: S,
    request: bytes,
    context: grpc.aio.ServicerContext,
    method: str,
    scope: str | None,
    span: trace.Span | None,
) -> Message:
    """Run one unary call: authorize, handle, map errors to statuses, count it (and mark its span, if traced)."""
    started, code, rejection = time.perf_counter(), grpc.StatusCode.OK, ""
    try:
        if scope is not None:
            _authorize(servicer, context, scope)
        return await handler(servicer, request, context)
    except ServingError as exc:
        code, rejection = exc.code, rejection_reason(exc)
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
        # The full status (with details such as RetryInfo) travels as grpc-status-details-bin,
        # where grpcio-status clients and Envoy's convert_grpc_status read it.
        await context.abort(exc.code, str(exc), trailing_metadata=_error_metadata(exc))
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    except Exception:
        code = grpc.StatusCode.INTERNAL
        log.exception("unexpected error in %s", method)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
    finally:
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
        record_request(method, code, started, rejection)
    raise AssertionError("context.abort always raises")


# The model a request names, as a metric label: set by each handler once it has parsed the request. Every RPC
# runs in its own task with its own copy of the context, so concurrent calls do not see each other's value.
_MODEL_LABEL: ContextVar[str] = ContextVar("tensorgate_model_label", default="")
_VERSION_LABEL: ContextVar[str] = ContextVar("tensorgate_version_label", default="")  # the version that answered
_REJECTION_REASONS = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overload",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.PERMISSION_DENIED: "unauthorized",
}


def rejection_reason(exc: ServingError) -> str:
    """The tensorgate_requests_rejected_total reason of an error ("" when it is not a refusal)."""
    return "rate_limited" if isinstance(exc, RateLimitedError) else _REJECTION_REASONS.get(exc.code, "")


ADMIN_METHODS = frozenset({"load_model", "unload_model", "reload_model", "set_model_labels"})


# The authenticated caller of the current RPC (None when authentication is off), for per-model checks.
_PRINCIPAL: ContextVar[Principal | None] = ContextVar("tensorgate_principal", default=None)


def _authorize(servicer: object, context: grpc.aio.ServicerContext, scope: str, cost: int = 1) -> None:
    """Authorize the caller for ``scope`` and charge ``cost`` to its rate (0: credentials and scope only)."""
    authenticator: Authenticator | None = getattr(servicer, "authenticator", None)
    if authenticator is not None:
        principal = authenticator.authorize(context.invocation_metadata(), scope, context.peer(), cost)
        _PRINCIPAL.set(principal)


def current_caller() -> str | None:
    """The name of the current RPC's authenticated caller (None when authentication is off)."""
    principal = _PRINCIPAL.get()
    return None if principal is None else principal.name


def select_model(registry: ModelRegistry, model: str) -> None:
    """Label the request's metrics with ``model`` and check that the caller may use it."""
    _MODEL_LABEL.set(model if registry.knows(model) else metrics.UNKNOWN_MODEL)
    if (principal := _PRINCIPAL.get()) is not None:
        principal.check_model(model)


def _error_metadata(exc: ServingError) -> tuple[tuple[str, str | bytes], ...]:
    """Trailers of a failed call: the full google.rpc.Status, and Retry-After (seconds) for overload.

    grpcio-status clients and Envoy's convert_grpc_status read grpc-status-details-bin; Envoy passes
    retry-after on to REST callers as the HTTP header.
    """
    metadata: tuple[tuple[str, str | bytes], ...] = (("grpc-status-details-bin", _status(exc).SerializeToString()),)
    if isinstance(exc, ResourceExhaustedError):
        metadata += (("retry-after", str(max(1, math.ceil(exc.retry_after_s)))),)
    return metadata


def label_version(version: int | str) -> None:
    """Label the request's metrics with the version that answered it."""
    _VERSION_LABEL.set(str(version))


def record_request(method: str, code: grpc.StatusCode, started: float, rejection: str) -> None:
    """Count one finished request (or stream message) of ``method`` with its outcome and duration."""
    _requests_counter(_MODEL_LABEL.get(), _VERSION_LABEL.get(), method, code.name).inc()
    _duration_histogram(method).observe(time.perf_counter() - started)
    if rejection:
        _rejected_counter(rejection).inc()


# Metric children, resolved once per label set instead of by ``.labels()`` on every request. Every label is
# bounded (repository models and versions, methods, status codes, reasons), and so are these caches.
@functools.cache
def _requests_counter(model: str, version: str, method: str, code: str) -> Counter:
    return metrics.REQUESTS.labels(model=model, version=version, method=method, code=code)


@functools.cache
def _duration_histogram(method: str) -> Histogram:
    return metrics.REQUEST_SECONDS.labels(method=method)


@functools.cache
def _rejected_counter(reason: str) -> Counter:
    return metrics.REJECTED.labels(reason=reason)


@dataclass(frozen=True)
class CallLimits:
    """The limits every service on the port holds its calls to (from the server's configuration)."""

    stream_window: int  # requests of one stream worked on at once
    max_stream_duration_s: float  # longest a stream may stay open
    max_request_timeout_s: float  # deadline of a call that sets none, and the most one may set

    def time_left(self, context: grpc.aio.ServicerContext) -> float:
        """The caller's deadline, capped by (or defaulting to) the server's maximum request timeout."""
        remaining = context.time_remaining()
        return self.max_request_timeout_s if remaining is None else min(remaining, self.max_request_timeout_s)


async def serve_stream(
    servicer: object,
    requests: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext,
    start: Callable[[bytes, ServingError | None], asyncio.Future[R]],
    *,
    method: str,
    rpc: str,
    limits: CallLimits,
) -> AsyncGenerator[R, None]:
    """The answers of a bidirectional stream, in arrival order, with at most ``limits.stream_window`` in flight.

    ``start(data, refusal)`` begins the work of one message and returns its future answer (it never raises: a
    message that fails, or comes with a ``refusal``, is answered by an error message of the stream's own kind). A
    reader task takes messages while a slot is free and starts each one; this generator yields the answers in
    order and frees a slot only once its answer is written. When the model or the client's reading falls behind,
    the reader stops and HTTP/2 flow control slows the sender. A stream open longer than
    ``limits.max_stream_duration_s`` ends with DEADLINE_EXCEEDED. ``method`` names the stream's span and its
    metrics, ``rpc`` its log line.

    The caller needs the predict scope of ``servicer``'s authenticator when the stream opens and again at every
    message, each of which costs a request of its rate: a message over the rate is refused (RESOURCE_EXHAUSTED
    with a retry delay, as its own answer) and the stream goes on; a key revoked or a token expired meanwhile
    ends the stream at its next message, after the answers already under way.
    """
    try:
        _authorize(servicer, context, "predict", cost=0)
    except ServingError as exc:
        record_request(method, exc.code, time.perf_counter(), rejection_reason(exc))
        await context.abort(exc.code, str(exc), trailing_metadata=_error_metadata(exc))
    slots = asyncio.Semaphore(limits.stream_window)
    started: asyncio.Queue[asyncio.Future[R] | None] = asyncio.Queue()
    denied: ServingError | None = None  # why the caller may no longer send

    async def read_requests() -> None:
        nonlocal denied
        try:
            async for data in requests:
                await slots.acquire()
                refusal: ServingError | None = None
                try:
                    _authorize(servicer, context, "predict")
                except RateLimitedError as exc:
                    refusal = exc
                except ServingError as exc:
                    denied = exc
                    return
                started.put_nowait(start(data, refusal))
        finally:
            started.put_nowait(None)

    # One span for the whole stream (when sampled); each message's queue wait and batch show as its children
    # and links: the reader task runs in the span's context.
    span = start_server_span(method, context.invocation_metadata)
    reader_context = contextvars.copy_context()
    if span is not None:
        reader_context.run(otel_context.attach, trace.set_span_in_context(span))
    reader = asyncio.create_task(read_requests(), context=reader_context)
    answered, outcome = 0, "completed"
    metrics.STREAMS_IN_FLIGHT.inc()
    closes_at = asyncio.get_running_loop().time() + limits.max_stream_duration_s
    try:
        while True:
            try:
                # Only the waits are timed, never the yield: the write below belongs to grpc's task.
                async with asyncio.timeout_at(closes_at):
                    if (task := await started.get()) is None:
                        break
                    response = await task
            except TimeoutError:
                outcome = "expired"
                message = f"stream open longer than the server's limit of {limits.max_stream_duration_s:g} s"
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, message)
            yield response
            answered += 1
            slots.release()
        await reader
        if denied is not None:
            outcome = "denied"
            record_request(method, denied.code, time.perf_counter(), rejection_reason(denied))
            await context.abort(denied.code, str(denied), trailing_metadata=_error_metadata(denied))
    except (asyncio.CancelledError, GeneratorExit):
        # grpc cancels the handler or closes this generator when the client cancels, its deadline
        # passes, or the server stops: the finally clause below releases the stream's work.
        outcome = "cancelled"
        raise
    finally:
        metrics.STREAMS_IN_FLIGHT.dec()
        reader.cancel()
        while not started.empty():
            if (task := started.get_nowait()) is not None:
                task.cancel()
        fields = {"method": rpc, "answered": answered, "outcome": outcome}
        if span is None:
            log.info("stream closed", extra={"fields": fields})
        else:
            span.set_attribute("tensorgate.stream.answered", answered)
            span.set_attribute("tensorgate.stream.outcome", outcome)
            span.end()
            with trace.use_span(span):  # the log line carries the stream's trace id
                log.info("stream closed", extra={"fields": fields})


def _decode_inputs(tensors: Mapping[str, tensor_pb2.Tensor]) -> tuple[dict[str, np.ndarray], bool]:
    """Decoded inputs, and whether every one arrived as raw bytes (then outputs go back raw too)."""
    try:
        inputs = {name: codec.decode(tensor, f"input {quote(name)}") for name, tensor in tensors.items()}
    except codec.TensorCodecError as exc:
        raise InvalidArgumentError(str(exc)) from None
    raw = bool(tensors) and all(tensor.raw_contents for tensor in tensors.values())
    return inputs, raw


def _fill_outputs(target: Mapping[str, tensor_pb2.Tensor], prediction: Prediction, raw: bool) -> None:
    for name, array in prediction.outputs.items():
        codec.encode_into(array, target[name], raw)


def _status(exc: ServingError) -> status_pb2.Status:
    """google.rpc.Status of an error; overload carries a google.rpc.RetryInfo with the suggested delay."""
    status = status_pb2.Status(code=exc.code.value[0], message=str(exc))
    if isinstance(exc, ResourceExhaustedError):
        delay = Duration()
        delay.FromNanoseconds(int(exc.retry_after_s * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


class InferenceServicer:
    """tensorgate.v1.InferenceService."""

    def __init__(
        self,
        dataplane: DataPlane,
        registry: ModelRegistry,
        limits: CallLimits,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._dataplane = dataplane
        self._registry = registry
        self._limits = limits
        self.authenticator = authenticator

    @_unary
    async def predict(self, data: bytes, context: grpc.aio.ServicerContext) -> PredictResponse:
        request = parse_request(PredictRequest, data)
        select_model(self._registry, request.model)
        admission = self._dataplane.admit(request.model, request.version, current_caller())
        inputs, raw = _decode_inputs(request.inputs)
        prediction = await self._dataplane.predict(
            admission, inputs, request.output_filter, self._limits.time_left(context)
        )
        response = PredictResponse(model=prediction.model, version=str(prediction.version))
        label_version(response.version)
        _fill_outputs(response.outputs, prediction, raw)
        return response

    async def stream_predict(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[StreamPredictResponse]:
        """Answer each request in arrival order, with at most ``stream_window`` in flight (``serve_stream``)."""
        previous = StreamPredictRequest()

        def start(data: bytes, refusal: ServingError | None) -> asyncio.Future[StreamPredictResponse]:
            nonlocal previous
            try:
                request = parse_request(StreamPredictRequest, data)
            except ServingError as exc:
                return _done(StreamPredictResponse(error=_status(exc)))
            if not request.model:  # a caller may name the model in the first message only
                request.model, request.version = previous.model, request.version or previous.version
            previous = request
            return asyncio.create_task(self._answer(request, context, refusal))

        stream = serve_stream(
            self,
            requests,
            context,
            start,
            method="stream_predict",
            rpc="StreamPredict",
            limits=self._limits,
        )
        async with contextlib.aclosing(stream):
            async for response in stream:
                yield response

    async def _answer(
        self, request: StreamPredictRequest, context: grpc.aio.ServicerContext, refusal: ServingError | None
    ) -> StreamPredictResponse:
        started, code, rejection = time.perf_counter(), grpc.StatusCode.OK, ""
        response = StreamPredictResponse(id=request.id, model=request.model)
        try:
            select_model(self._registry, request.model)
            if refusal is not None:
                raise refusal
            admission = self._dataplane.admit(request.model, request.version, current_caller())
            inputs, raw = _decode_inputs(request.inputs)
            prediction = await self._dataplane.predict(
                admission, inputs, request.output_filter, self._limits.time_left(context)
            )
            response.version = str(prediction.version)
            label_version(response.version)
            _fill_outputs(response.outputs, prediction, raw)
        except ServingError as exc:
            code, rejection = exc.code, rejection_reason(exc)
            response.error.CopyFrom(_status(exc))
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error in a StreamPredict request", extra={"fields": {"id": request.id}})
            response.error.CopyFrom(status_pb2.Status(code=code.value[0], message="internal error"))
        record_request("stream_predict", code, started, rejection)
        return response


def _required_model(model: str) -> str:
    if not model:
        raise InvalidArgumentError("model is required")
    return model


def _done(response: StreamPredictResponse) -> asyncio.Future[StreamPredictResponse]:
    """An already answered slot of the stream (a message that could not even be parsed)."""
    future: asyncio.Future[StreamPredictResponse] = asyncio.get_running_loop().create_future()
    future.set_result(response)
    return future


def _spec(info: TensorInfo) -> tensor_pb2.TensorSpec:
    return tensor_pb2.TensorSpec(
        name=info.name, dtype=info.dtype, shape=info.shape or (), unknown_rank=info.shape is None
    )


def _version_status(version: ModelVersion) -> model_service_pb2.ModelVersionStatus:
    return model_service_pb2.ModelVersionStatus(
        version=str(version.version),
        state=_STATES[version.state],
        error=version.error,
        device=version.servable.device if version.servable else "",
        runtime=version.servable.runtime if version.servable else "",
    )


class ModelServicer:
    """tensorgate.v1.ModelService: status and metadata from the registry, admin calls through the manager."""

    def __init__(
        self, registry: ModelRegistry, manager: ModelManager, authenticator: Authenticator | None = None
    ) -> None:
        self._registry = registry
        self._manager = manager
        self.authenticator = authenticator

    def _model(self, name: str) -> model_service_pb2.Model:
        versions = [_version_status(v) for v in self._registry.versions(name)]
        return model_service_pb2.Model(name=name, versions=versions, labels=self._registry.labels(name))

    @_unary
    async def list_models(self, data: bytes, context: grpc.aio.ServicerContext) -> ListModelsResponse:
        parse_request(ListModelsRequest, data)
        principal = _PRINCIPAL.get()
        names = [
            n
            for n in self._registry.model_names()
            if principal is None or not principal.models or n in principal.models
        ]
        return ListModelsResponse(models=[self._model(name) for name in names])

    @_unary
    async def load_model(self, data: bytes, context: grpc.aio.ServicerContext) -> LoadModelResponse:
        request = parse_request(LoadModelRequest, data)
        select_model(self._registry, request.model)
        await self._manager.load(_required_model(request.model), request.version)
        return LoadModelResponse(model=self._model(request.model))

    @_unary
    async def unload_model(self, data: bytes, context: grpc.aio.ServicerContext) -> UnloadModelResponse:
        request = parse_request(UnloadModelRequest, data)
        select_model(self._registry, request.model)
        await self._manager.unload(_required_model(request.model), request.version)
        return UnloadModelResponse(model=self._model(request.model))

    @_unary
    async def reload_model(self, data: bytes, context: grpc.aio.ServicerContext) -> ReloadModelResponse:
        request = parse_request(ReloadModelRequest, data)
        select_model(self._registry, request.model)
        await self._manager.reload(_required_model(request.model), request.version)
        return ReloadModelResponse(model=self._model(request.model))

    @_unary
    async def set_model_labels(self, data: bytes, context: grpc.aio.ServicerContext) -> SetModelLabelsResponse:
        request = parse_request(SetModelLabelsRequest, data)
        select_model(self._registry, request.model)
        await self._manager.set_labels(_required_model(request.model), dict(request.labels))
        return SetModelLabelsResponse(model=self._model(request.model))

    @_unary
    async def get_model_status(self, data: bytes, context: grpc.aio.ServicerContext) -> GetModelStatusResponse:
        request = parse_request(GetModelStatusRequest, data)
        select_model(self._registry, request.model)
        if not request.model:
            raise InvalidArgumentError("model is required")
        if request.version:
            versions = [self._registry.find(request.model, request.version)]
        else:
            versions = self._registry.versions(request.model)
        model = model_service_pb2.Model(
            name=request.model,
            versions=[_version_status(v) for v in versions],
            labels=self._registry.labels(request.model),
        )
        return GetModelStatusResponse(model=model)

    @_unary
    async def get_model_metadata(self, data: bytes, context: grpc.aio.ServicerContext) -> GetModelMetadataResponse:
        request = parse_request(GetModelMetadataRequest, data)
        select_model(self._registry, request.model)
        version = self._registry.resolve(request.model, request.version)
        assert version.servable is not None
        signature = version.servable.signature
        return GetModelMetadataResponse(
            model=version.model,
            version=str(version.version),
            signature_name=signature.name,
            inputs=[_spec(info) for info in signature.inputs.values()],
            outputs=[_spec(info) for info in signature.outputs.values()],
        )


def unary_handlers(methods: dict[str, tuple[BoundHandler, type[Message]]]) -> dict[str, grpc.RpcMethodHandler]:
    """gRPC method handlers of unary methods that take the request as bytes (the handler parses it)."""
    return {
        name: grpc.unary_unary_rpc_method_handler(handler, response_serializer=response.SerializeToString)
        for name, (handler, response) in methods.items()
    }


def generic_handlers(inference: InferenceServicer, models: ModelServicer) -> list[grpc.GenericRpcHandler]:
    """Method handlers for both services; requests stay bytes until the servicer parses them."""
    inference_methods = unary_handlers({"Predict": (inference.predict, PredictResponse)})
    inference_methods["StreamPredict"] = grpc.stream_stream_rpc_method_handler(
        inference.stream_predict, response_serializer=StreamPredictResponse.SerializeToString
    )
    model_methods = unary_handlers(
        {
            "ListModels": (models.list_models, ListModelsResponse),
            "GetModelStatus": (models.get_model_status, GetModelStatusResponse),
            "GetModelMetadata": (models.get_model_metadata, GetModelMetadataResponse),
            "LoadModel": (models.load_model, LoadModelResponse),
            "UnloadModel": (models.unload_model, UnloadModelResponse),
            "ReloadModel": (models.reload_model, ReloadModelResponse),
            "SetModelLabels": (models.set_model_labels, SetModelLabelsResponse),
        }
    )
    return [
        grpc.method_handlers_generic_handler(INFERENCE_SERVICE, inference_methods),
        grpc.method_handlers_generic_handler(MODEL_SERVICE, model_methods),
    ]
