"""Typed Python client for tensorgate over the generated gRPC stubs.

Tensors travel as raw little-endian bytes both ways: no per-element work in
Python on either side.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from tensorgate.clients import health
from tensorgate.v1 import codec, inference_service_pb2_grpc, model_service_pb2_grpc
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
    ListModelsRequest,
    LoadModelRequest,
    Model,
    ModelVersionState,
    ReloadModelRequest,
    SetModelLabelsRequest,
    UnloadModelRequest,
)

MiB = 1024 * 1024
tracer = trace.get_tracer("tensorgate.client")  # the spans of both clients (ClientBase._start_span)
INFERENCE_SERVICE = "tensorgate.v1.InferenceService"
MODEL_SERVICE = "tensorgate.v1.ModelService"

# Every unary method is idempotent (inference included), so gRPC may retry it transparently. A server that
# is stopping refuses new calls with UNAVAILABLE and resets calls it had not yet started with RST_STREAM
# CANCEL, which clients see as CANCELLED although they cancelled nothing: both are safe to retry.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "tensorgate.v1.InferenceService", "method": "Predict"},
                    {"service": "tensorgate.v1.ModelService"},
                ],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                },
            }
        ]
    }
)


@dataclass(frozen=True)
class StreamRetryPolicy:
    """How a StreamPredict stream cut short by the transport is resumed, in the style of RETRY_SERVICE_CONFIG.

    gRPC's own retry policy cannot resume a stream once an answer has arrived, so the client does it: a new stream
    carries the requests still unanswered, then the rest. ``max_attempts`` counts the streams in a row that end
    without a single answer (one that got answers starts the count again), so a long stream survives any number of
    replica failures but not a server that stays down. Before each new stream the client waits a random time up to
    the current backoff, which starts at ``initial_backoff_s`` and grows by ``backoff_multiplier`` up to
    ``max_backoff_s``. ``max_attempts`` = 1 never resumes.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    backoff_multiplier: float = 2.0


# grpc-core's details for a stream reset by its peer with RST_STREAM NO_ERROR (0) or INTERNAL_ERROR (2): what
# Envoy sends a client whose stream it can no longer finish because the upstream replica reset it or died (Envoy
# 1.37 and later: INTERNAL_ERROR). gRPC maps both codes to INTERNAL ("Stream removed (RST_STREAM (Received
# RST_STREAM with error code 2))"), but the server never answered them: a status a server sends is never worded so.
_RESET_DETAILS = re.compile(r"Received RST_STREAM with error code [02]\b")
# Envoy's answer (HTTP 507, gRPC UNKNOWN) when a stream's first upstream attempt failed before any answer (a dead
# replica not yet ejected) and the request data that arrived while it waited to retry outgrew its buffer.
_ENVOY_RETRY_OVERFLOW = "exceeded request buffer limit while retrying upstream"
# What the client itself cancels with: the caller stopped reading, or closed the client.
_OWN_CANCELLATIONS = {"Locally cancelled by application!", "Channel closed!"}


def stream_interrupted(error: grpc.RpcError) -> bool:
    """Whether a stream failed in transit rather than by the server's answer, so that its unanswered requests may
    be sent again on a new stream: UNAVAILABLE, CANCELLED that the client did not ask for, INTERNAL from a reset
    stream (``_RESET_DETAILS``) and Envoy's UNKNOWN of ``_ENVOY_RETRY_OVERFLOW``. Any other status is the server's
    (or the caller's) doing, INTERNAL with the server's own message included, and is not retried."""
    code, details = error.code(), error.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        return True
    if code is grpc.StatusCode.CANCELLED:
        return details not in _OWN_CANCELLATIONS
    if code is grpc.StatusCode.INTERNAL:
        return _RESET_DETAILS.search(details) is not None
    return code is grpc.StatusCode.UNKNOWN and details == _ENVOY_RETRY_OVERFLOW


@dataclass(frozen=True)
class ClientTls:
    """TLS towards the server or Envoy: the CA that signed its certificate, and our own pair for mTLS."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials from the PEM files."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


class StreamItemError(RuntimeError):
    """One request of a stream failed on the server; ``code`` is its gRPC status code."""

    def __init__(self, request_id: str, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"request {request_id}: {code.name}: {message}")
        self.request_id = request_id
        self.code = code


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Outbox:
    """The requests of one StreamPredict call that were taken from the caller's iterable and are not answered yet.

    Each stream of the call reads them through its own ``requests()``: first the unanswered ones again, then new ones
    from ``source``. Only these are kept, so memory stays bounded by what the server and the transport hold in
    flight. gRPC consumes a stream's requests on a thread of its own, which may still be inside ``source`` when its
    stream has failed and the next one starts: ``_pull_lock`` makes the two take each request from ``source`` once,
    and one taken by the failed stream's thread joins the unanswered ones, which the next stream sends.

    A stream sends its first request alone and the rest once that is answered. Until a replica answers, Envoy
    keeps the request data to retry it elsewhere (a replica that died and is not ejected yet refuses the
    connection), and gives up the stream when that data outgrows its buffer: one request fits.
    """

    def __init__(self, source: Iterator[StreamPredictRequest]) -> None:
        self._source = source
        self._unanswered: deque[StreamPredictRequest] = deque()
        self._answered = 0  # requests answered so far: the position of _unanswered[0] in the call
        self._stream = 0  # the stream now sending; an older stream's thread stops at its next request
        self._first_answer = threading.Event()  # set once the stream now sending has an answer, or is over
        self._lock = threading.Lock()  # guards the fields above
        self._pull_lock = threading.Lock()  # held while taking a request from source, which may block

    @property
    def answered(self) -> int:
        return self._answered

    def requests(self) -> Iterator[StreamPredictRequest]:
        """The requests of a new stream, which takes over from any earlier one (``close`` that one first)."""
        with self._lock:
            self._stream += 1
            self._first_answer = threading.Event()
            return self._send(self._stream, self._answered, self._first_answer)

    def answer(self, response: StreamPredictResponse) -> None:
        """Forget the request ``response`` answers: the oldest unanswered one, as the server answers in order."""
        with self._lock:
            request = self._unanswered.popleft()
            self._answered += 1
            self._first_answer.set()
        if response.id and response.id != request.id:  # a message the server could not parse comes back without id
            raise RuntimeError(f"the server answered request {response.id!r} where {request.id!r} was due")

    def close(self) -> None:
        """The stream now sending is over: its thread, if waiting for the first answer, stops without taking more."""
        with self._lock:
            self._stream += 1
            self._first_answer.set()

    def _send(self, stream: int, position: int, first_answer: threading.Event) -> Iterator[StreamPredictRequest]:
        while (request := self._take(stream, position)) is not None:
            yield request
            first_answer.wait()
            position += 1

    def _take(self, stream: int, position: int) -> StreamPredictRequest | None:
        """Request ``position`` of the call for ``stream``; None once ``source`` is exhausted or a newer stream took
        over."""
        current, request = self._queued(stream, position)
        if not current or request is not None:
            return request
        with self._pull_lock:
            # Another stream's thread may have taken a request from source while this one waited for the lock.
            current, request = self._queued(stream, position)
            if not current or request is not None:
                return request
            request = next(self._source, None)
            if request is not None:
                with self._lock:
                    self._unanswered.append(request)
            return request

    def _queued(self, stream: int, position: int) -> tuple[bool, StreamPredictRequest | None]:
        """Whether ``stream`` is still the one sending, and the unanswered request at ``position`` if there is one."""
        with self._lock:
            if stream != self._stream:
                return False, None
            index = position - self._answered
            return True, self._unanswered[index] if index < len(self._unanswered) else None


@dataclass(frozen=True)
class _Stubs:
    """The stubs of one channel (the generated stubs serve a ``grpc`` and a ``grpc.aio`` channel alike)."""

    inference: inference_service_pb2_grpc.InferenceServiceStub
    models: model_service_pb2_grpc.ModelServiceStub
    health: Any  # a unary-unary callable of grpc.health.v1.Health/Check, bytes in and out


Metadata = Sequence[tuple[str, str]]
Channel = TypeVar("Channel")


class ClientBase(ABC, Generic[Channel]):
    """What the synchronous and the asyncio client share: channels, credentials, per-call options, round-robin."""

    def __init__(
        self,
        target: str,
        timeout_s: float = 30.0,
        max_message_bytes: int = 64 * MiB,
        api_key: str | None = None,
        token: str | None = None,
        tls: ClientTls | None = None,
        channels: int = 1,
        stream_retry: StreamRetryPolicy = StreamRetryPolicy(),
    ) -> None:
        """``timeout_s`` is every call's deadline unless the call names its own; ``api_key`` travels as
        ``x-api-key``, a JWT ``token`` as ``authorization: Bearer``; ``tls`` = None is plaintext (loopback
        development).

        A channel is one HTTP/2 connection, which stays on one server process. ``channels`` > 1 opens that many
        connections, each in a subchannel pool of its own (otherwise gRPC would share one connection between
        them), and spreads calls over them round-robin, one stream per channel: that is how one client reaches
        every worker of a server started with ``--workers``.

        ``stream_retry`` says how a StreamPredict stream cut short in transit is resumed (``stream_predict_batches``).
        """
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        if stream_retry.max_attempts < 1:
            raise ValueError(f"stream_retry.max_attempts must be at least 1, got {stream_retry.max_attempts}")
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.service_config", RETRY_SERVICE_CONFIG),
        ]
        if channels > 1:
            options.append(("grpc.use_local_subchannel_pool", 1))
        credentials = None if tls is None else tls.credentials()
        self._channels = [self._open_channel(target, credentials, options) for _ in range(channels)]
        self._stubs = [
            _Stubs(
                inference_service_pb2_grpc.InferenceServiceStub(channel),
                model_service_pb2_grpc.ModelServiceStub(channel),
                channel.unary_unary(health.CHECK),  # type: ignore[attr-defined]
            )
            for channel in self._channels
        ]
        self._next_stubs = itertools.cycle(self._stubs)
        self._timeout_s = timeout_s
        self._stream_retry = stream_retry
        self._input_names: dict[tuple[str, str], str] = {}
        self._credentials = ((("x-api-key", api_key),) if api_key else ()) + (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        host, port = host_and_port(target)
        self._span_attributes: dict[str, AttributeValue] = {
            "rpc.system": "grpc",
            "server.address": host,
            "server.port": port,
        }

    @abstractmethod
    def _open_channel(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> Channel:
        """One channel to ``target`` (TLS with ``credentials``, plaintext without)."""

    def _pick(self) -> _Stubs:
        """The next channel's stubs, round-robin (``next`` on a cycle is atomic under the GIL: thread-safe)."""
        return next(self._next_stubs)

    def _options(self, timeout_s: float | None, metadata: Metadata) -> dict[str, Any]:
        """The keyword arguments of one unary call: its deadline (the client's unless given) and metadata."""
        return {"timeout": self._timeout_s if timeout_s is None else timeout_s, "metadata": self._metadata(metadata)}

    def _stream_options(
        self, timeout_s: float | None, metadata: Metadata, context: otel_context.Context
    ) -> dict[str, Any]:
        """The keyword arguments of one stream: its deadline (None: none) and metadata, with ``context``'s trace."""
        return {"timeout": timeout_s, "metadata": self._metadata(metadata, context)}

    def _metadata(self, metadata: Metadata, context: otel_context.Context | None = None) -> tuple[tuple[str, str], ...]:
        """The credentials, the caller's metadata and the W3C trace context of ``context`` (default: the current
        one)."""
        return self._credentials + tuple(metadata) + _trace_metadata(context)

    def _start_span(self, service: str, rpc: str, model: str) -> trace.Span:
        """The client span of one call, by OpenTelemetry's RPC conventions (a no-op span when the application
        traces nothing)."""
        attributes = {**self._span_attributes, "rpc.service": service, "rpc.method": rpc}
        if model:
            attributes["tensorgate.model.name"] = model
        return tracer.start_span(f"{service}/{rpc}", kind=SpanKind.CLIENT, attributes=attributes)

    @contextmanager
    def _span(self, service: str, rpc: str, model: str) -> Iterator[trace.Span]:
        """``_start_span`` as the current span around a unary call (sync or async), ended with the call's status."""
        span = self._start_span(service, rpc, model)
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                yield span
            except grpc.RpcError as exc:
                end_span(span, exc.code(), exc.details())
                raise
            end_span(span, grpc.StatusCode.OK)

    def _stream_span(self, model: str) -> tuple[trace.Span, otel_context.Context]:
        """The client span of one StreamPredict stream and the context its metadata carries. Never made current:
        the stream's generator yields to the caller's code in between."""
        span = self._start_span(INFERENCE_SERVICE, "StreamPredict", model)
        return span, trace.set_span_in_context(span)


class TensorgateClient(ClientBase[grpc.Channel]):
    """A connection to one tensorgate server (or to Envoy in front of it).

    Every call takes ``timeout_s`` (seconds; the client's default when None) and ``metadata`` (extra gRPC metadata
    pairs sent with the call) as keyword arguments.
    """

    def _open_channel(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, credentials, options=options)

    def __enter__(self) -> TensorgateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels."""
        for channel in self._channels:
            channel.close()

    def server_live(self, *, timeout_s: float | None = None, metadata: Metadata = ()) -> bool:
        """Whether the server answers (its gRPC health check of the model service says SERVING)."""
        return self._health(health.LIVE_SERVICE, timeout_s, metadata)

    def server_ready(self, *, timeout_s: float | None = None, metadata: Metadata = ()) -> bool:
        """Whether the server takes inference requests (its overall gRPC health check says SERVING)."""
        return self._health("", timeout_s, metadata)

    def _health(self, service: str, timeout_s: float | None, metadata: Metadata) -> bool:
        try:
            answer = self._pick().health(health.request(service), **self._options(timeout_s, metadata))
        except grpc.RpcError as exc:
            if health_unanswered(exc):
                return False
            raise
        return health.serving(answer)

    def model_ready(
        self, model: str, version: str = "", *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> bool:
        """Whether ``model`` (or the version, a number) has a version serving requests; False for an unknown one."""
        try:
            return ready(self.model_status(model, version, timeout_s=timeout_s, metadata=metadata))
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return False
            raise

    def predict(
        self,
        model: str,
        x: np.ndarray,
        version: str = "",
        output: str | None = None,
        *,
        timeout_s: float | None = None,
        metadata: Metadata = (),
    ) -> np.ndarray:
        """Run a single-input model on the batch ``x``; returns its output (or the named one)."""
        name = self._input_name(model, version, timeout_s, metadata)
        outputs = self.predict_tensors(
            model, {name: x}, version, [output] if output else (), timeout_s=timeout_s, metadata=metadata
        )
        return single_output(outputs, output)

    def predict_tensors(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        version: str = "",
        output_filter: Sequence[str] = (),
        *,
        timeout_s: float | None = None,
        metadata: Metadata = (),
    ) -> dict[str, np.ndarray]:
        """Run a model on named inputs; returns its outputs by name."""
        request = predict_request(model, inputs, version, output_filter)
        with self._span(INFERENCE_SERVICE, "Predict", model):
            response = self._pick().inference.Predict(request, **self._options(timeout_s, metadata))
        return outputs_of(response)

    def stream_predict(
        self,
        model: str,
        examples: Iterable[np.ndarray],
        batch_size: int = 256,
        version: str = "",
        output: str | None = None,
        timeout_s: float | None = None,
        *,
        metadata: Metadata = (),
    ) -> Iterator[np.ndarray]:
        """Stream single examples through StreamPredict; yields one result per example, in order.

        Examples are grouped into requests of ``batch_size``. Requests are
        produced lazily as the server reads them, so an endless iterable is
        fine: memory stays bounded by the server's stream window. A request
        that fails raises StreamItemError. ``timeout_s`` bounds the whole stream (None: no bound).
        """
        input_name = self._input_name(model, version, None, metadata)
        responses = self.stream_predict_batches(
            model,
            ({input_name: batch} for batch in batches_of(examples, batch_size)),
            version,
            timeout_s,
            metadata=metadata,
        )
        for response in responses:
            yield from single_output(response, output)

    def stream_predict_batches(
        self,
        model: str,
        batches: Iterable[Mapping[str, np.ndarray]],
        version: str = "",
        timeout_s: float | None = None,
        *,
        metadata: Metadata = (),
    ) -> Iterator[dict[str, np.ndarray]]:
        """Stream batches of named inputs; yields each batch's outputs by name, in order.

        A stream cut short in transit (``stream_interrupted``: a replica that died, a server that stopped) is
        resumed on a new stream as ``StreamRetryPolicy`` allows: the answers already yielded stay, the requests not
        answered yet are sent again with their ids, so every batch is answered exactly once and in order. Any
        other failure, or the last attempt's, raises its ``grpc.RpcError``. ``timeout_s`` bounds the whole call,
        resumed streams included (None: no bound).
        """
        outbox = _Outbox(stream_request(str(index), model, inputs, version) for index, inputs in enumerate(batches))
        resume = Resumption(self._stream_retry, timeout_s)
        while True:
            answered_before = outbox.answered
            span, context = self._stream_span(model)
            options = self._stream_options(resume.remaining_s(), metadata, context)
            sent = 0

            def counted(requests: Iterator[StreamPredictRequest]) -> Iterator[StreamPredictRequest]:
                nonlocal sent
                for request in requests:
                    sent += 1
                    yield request

            call = self._pick().inference.StreamPredict(counted(outbox.requests()), **options)
            try:
                for response in call:
                    outbox.answer(response)
                    yield stream_outputs_of(response)
                end_span(span, grpc.StatusCode.OK)
                return
            except grpc.RpcError as exc:
                end_span(span, exc.code(), exc.details())
                time.sleep(resume.pause_s(exc, outbox.answered > answered_before))
            finally:
                call.cancel()
                outbox.close()
                end_stream_span(span, sent, outbox.answered - answered_before)

    def list_models(self, *, timeout_s: float | None = None, metadata: Metadata = ()) -> list[Model]:
        """Every model of the server with its versions' states."""
        with self._span(MODEL_SERVICE, "ListModels", ""):
            return list(
                self._pick().models.ListModels(ListModelsRequest(), **self._options(timeout_s, metadata)).models
            )

    def model_status(
        self, model: str, version: str = "", *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> Model:
        """The state of a model's versions (or of one version) and its labels."""
        request = GetModelStatusRequest(model=model, version=version)
        with self._span(MODEL_SERVICE, "GetModelStatus", model):
            return self._pick().models.GetModelStatus(request, **self._options(timeout_s, metadata)).model

    def model_metadata(
        self, model: str, version: str = "", *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> GetModelMetadataResponse:
        """The serving signature of a model version."""
        request = GetModelMetadataRequest(model=model, version=version)
        with self._span(MODEL_SERVICE, "GetModelMetadata", model):
            return self._pick().models.GetModelMetadata(request, **self._options(timeout_s, metadata))

    def load_model(
        self, model: str, version: str = "", *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> Model:
        """Serve a version even where the version policy would not (or all the policy wants); the model after.
        Needs the admin scope."""
        request = LoadModelRequest(model=model, version=version)
        with self._span(MODEL_SERVICE, "LoadModel", model):
            return self._pick().models.LoadModel(request, **self._options(timeout_s, metadata)).model

    def unload_model(
        self, model: str, version: str = "", *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> Model:
        """Stop serving a version (or the model) until the next reload; the model after. Needs the admin scope."""
        request = UnloadModelRequest(model=model, version=version)
        with self._span(MODEL_SERVICE, "UnloadModel", model):
            return self._pick().models.UnloadModel(request, **self._options(timeout_s, metadata)).model

    def reload_model(
        self, model: str, version: str = "", *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> Model:
        """Re-read the model's configuration and load fresh copies of its versions (or of one); the model after.
        Needs the admin scope."""
        request = ReloadModelRequest(model=model, version=version)
        with self._span(MODEL_SERVICE, "ReloadModel", model):
            return self._pick().models.ReloadModel(request, **self._options(timeout_s, metadata)).model

    def set_model_labels(
        self, model: str, labels: Mapping[str, int], *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> Model:
        """Replace the model's labels (name to version number; empty removes them all); the model after. Needs the
        admin scope."""
        request = SetModelLabelsRequest(model=model, labels=dict(labels))
        with self._span(MODEL_SERVICE, "SetModelLabels", model):
            return self._pick().models.SetModelLabels(request, **self._options(timeout_s, metadata)).model

    def _input_name(self, model: str, version: str, timeout_s: float | None, metadata: Metadata) -> str:
        key = (model, version)
        if key not in self._input_names:
            self._input_names[key] = single_input(
                self.model_metadata(model, version, timeout_s=timeout_s, metadata=metadata)
            )
        return self._input_names[key]


class Resumption:
    """The bookkeeping of StreamRetryPolicy over one call: streams in a row without an answer, the backoff, the
    call's deadline."""

    def __init__(self, policy: StreamRetryPolicy, timeout_s: float | None) -> None:
        self._policy = policy
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._failures = 0
        self._backoff_s = policy.initial_backoff_s

    def remaining_s(self) -> float | None:
        """What is left of the call's deadline (None: no deadline)."""
        return None if self._deadline is None else self._deadline - time.monotonic()

    def pause_s(self, error: grpc.RpcError, answered: bool) -> float:
        """How long to wait before a new stream resumes the call that ``error`` interrupted (``answered``: the
        failed stream got answers); re-raises ``error`` when the call must not be resumed."""
        policy = self._policy
        if answered:
            self._failures, self._backoff_s = 0, policy.initial_backoff_s
        self._failures += 1
        if not stream_interrupted(error) or self._failures >= policy.max_attempts:
            raise error
        pause_s = random.uniform(0, self._backoff_s)
        if self._deadline is not None and time.monotonic() + pause_s >= self._deadline:
            raise error
        self._backoff_s = min(self._backoff_s * policy.backoff_multiplier, policy.max_backoff_s)
        return pause_s


def health_unanswered(error: grpc.RpcError) -> bool:
    """Whether a health check failed because nothing answered it (the server is down or unreachable), which makes
    the answer "no" rather than an error."""
    return error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def ready(model: Model) -> bool:
    """Whether one of the model's versions is AVAILABLE."""
    return any(version.state == ModelVersionState.MODEL_VERSION_STATE_AVAILABLE for version in model.versions)


def single_input(metadata: GetModelMetadataResponse) -> str:
    """The name of a model's one input; ValueError for a model with several."""
    if len(metadata.inputs) != 1:
        names = [spec.name for spec in metadata.inputs]
        raise ValueError(f"model {metadata.model!r} takes {len(metadata.inputs)} inputs {names}; use predict_tensors")
    return str(metadata.inputs[0].name)


def predict_request(
    model: str, inputs: Mapping[str, np.ndarray], version: str, output_filter: Sequence[str]
) -> PredictRequest:
    request = PredictRequest(model=model, version=version, output_filter=output_filter)
    for name, array in inputs.items():
        codec.encode_into(np.asarray(array), request.inputs[name])
    return request


def stream_request(request_id: str, model: str, inputs: Mapping[str, np.ndarray], version: str) -> StreamPredictRequest:
    request = StreamPredictRequest(id=request_id, model=model, version=version)
    for name, array in inputs.items():
        codec.encode_into(np.asarray(array), request.inputs[name])
    return request


def outputs_of(response: PredictResponse) -> dict[str, np.ndarray]:
    return {name: codec.decode(tensor, name) for name, tensor in response.outputs.items()}


def _trace_metadata(context: otel_context.Context | None = None) -> tuple[tuple[str, str], ...]:
    """W3C trace context of ``context`` (the current one by default) as gRPC metadata (empty when the application
    traces nothing)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return tuple(carrier.items())


def end_span(span: trace.Span, code: grpc.StatusCode | None, message: str | None = None) -> None:
    """The call's gRPC status on its client span: on a client every status but OK is an error (OpenTelemetry's
    gRPC conventions)."""
    code = code or grpc.StatusCode.UNKNOWN
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, message or code.name))


def end_stream_span(span: trace.Span, sent: int, received: int) -> None:
    """A stream span's message counts; a stream the caller stopped reading ends unset (CANCELLED is not the
    server's answer)."""
    span.set_attribute("tensorgate.stream.messages_sent", sent)
    span.set_attribute("tensorgate.stream.messages_received", received)
    span.end()


def host_and_port(target: str) -> tuple[str, int]:
    """The host and port a gRPC target names (``host:port``, ``[v6]:port``, ``dns:///host:port``; port 443 when
    none is given, gRPC's default)."""
    address = target.rsplit("/", 1)[-1] if "://" in target or target.startswith("dns:") else target
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or (":" in host and not host.startswith("[")):
        return address.strip("[]"), 443
    return host.strip("[]"), int(port)


def batches_of(examples: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    iterator = iter(examples)
    while chunk := list(itertools.islice(iterator, batch_size)):
        yield np.stack(chunk)


def stream_outputs_of(response: StreamPredictResponse) -> dict[str, np.ndarray]:
    """One stream answer's outputs by name; StreamItemError when the server answered its request with an error."""
    if response.HasField("error"):
        raise StreamItemError(
            response.id, _CODES.get(response.error.code, grpc.StatusCode.UNKNOWN), response.error.message
        )
    return {name: codec.decode(tensor, name) for name, tensor in response.outputs.items()}


def single_output(outputs: dict[str, np.ndarray], name: str | None) -> np.ndarray:
    if name is not None:
        return outputs[name]
    if len(outputs) != 1:
        raise ValueError(f"the model returns {sorted(outputs)}; name one with output=")
    return next(iter(outputs.values()))
