"""The asyncio client (``grpc.aio``): the API of :class:`tensorgate.clients.client.TensorgateClient`, each call a
coroutine and each stream an async iterator.

It shares with the synchronous client everything but the waiting: channels and credentials
(:class:`~tensorgate.clients.client.ClientBase`), the messages, the resumption of a stream cut short in transit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
import numpy as np

from tensorgate.clients import health
from tensorgate.clients.client import (
    INFERENCE_SERVICE,
    MODEL_SERVICE,
    ClientBase,
    Metadata,
    Resumption,
    batches_of,
    end_span,
    end_stream_span,
    health_unanswered,
    outputs_of,
    predict_request,
    ready,
    single_input,
    single_output,
    stream_outputs_of,
    stream_request,
)
from tensorgate.v1.inference_service_pb2 import StreamPredictRequest, StreamPredictResponse
from tensorgate.v1.model_service_pb2 import (
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    GetModelStatusRequest,
    ListModelsRequest,
    LoadModelRequest,
    Model,
    ReloadModelRequest,
    SetModelLabelsRequest,
    UnloadModelRequest,
)

Examples = Iterable[np.ndarray] | AsyncIterable[np.ndarray]
Batches = Iterable[Mapping[str, np.ndarray]] | AsyncIterable[Mapping[str, np.ndarray]]


class AsyncTensorgateClient(ClientBase[grpc.aio.Channel]):
    """A connection to one tensorgate server (or to Envoy in front of it), for asyncio code; create it inside the
    event loop that uses it (``async with AsyncTensorgateClient(...) as client``).

    Every call takes ``timeout_s`` (seconds; the client's default when None) and ``metadata`` (extra gRPC metadata
    pairs sent with the call) as keyword arguments.
    """

    def _open_channel(
        self, target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def __aenter__(self) -> AsyncTensorgateClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channels."""
        for channel in self._channels:
            await channel.close()

    async def server_live(self, *, timeout_s: float | None = None, metadata: Metadata = ()) -> bool:
        """Whether the server answers (its gRPC health check of the model service says SERVING)."""
        return await self._health(health.LIVE_SERVICE, timeout_s, metadata)

    async def server_ready(self, *, timeout_s: float | None = None, metadata: Metadata = ()) -> bool:
        """Whether the server takes inference requests (its overall gRPC health check says SERVING)."""
        return await self._health("", timeout_s, metadata)

    async def _health(self, service: str, timeout_s: float | None, metadata: Metadata) -> bool:
        try:
            answer = await self._pick().health(health.request(service), **self._options(timeout_s, metadata))
        except grpc.RpcError as exc:
            if health_unanswered(exc):
                return False
            raise
        return health.serving(answer)

    async def model_ready(
        self, model: str, version: str = "", *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> bool:
        """Whether ``model`` (or the version, a number) has a version serving requests; False for an unknown one."""
        try:
            return ready(await self.model_status(model, version, timeout_s=timeout_s, metadata=metadata))
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return False
            raise

    async def predict(
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
        name = await self._input_name(model, version, timeout_s, metadata)
        outputs = await self.predict_tensors(
            model, {name: x}, version, [output] if output else (), timeout_s=timeout_s, metadata=metadata
        )
        return single_output(outputs, output)

    async def predict_tensors(
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
            response = await self._pick().inference.Predict(request, **self._options(timeout_s, metadata))
        return outputs_of(response)

    async def stream_predict(
        self,
        model: str,
        examples: Examples,
        batch_size: int = 256,
        version: str = "",
        output: str | None = None,
        timeout_s: float | None = None,
        *,
        metadata: Metadata = (),
    ) -> AsyncIterator[np.ndarray]:
        """Stream single examples (an iterable or an async iterable) through StreamPredict; yields one result per
        example, in order, as :meth:`TensorgateClient.stream_predict` does."""
        input_name = await self._input_name(model, version, None, metadata)

        async def batches() -> AsyncIterator[Mapping[str, np.ndarray]]:
            if isinstance(examples, AsyncIterable):
                chunk = []
                async for example in examples:
                    chunk.append(example)
                    if len(chunk) == batch_size:
                        yield {input_name: np.stack(chunk)}
                        chunk = []
                if chunk:
                    yield {input_name: np.stack(chunk)}
            else:
                for batch in batches_of(examples, batch_size):
                    yield {input_name: batch}

        async for response in self.stream_predict_batches(model, batches(), version, timeout_s, metadata=metadata):
            for result in single_output(response, output):
                yield result

    async def stream_predict_batches(
        self,
        model: str,
        batches: Batches,
        version: str = "",
        timeout_s: float | None = None,
        *,
        metadata: Metadata = (),
    ) -> AsyncIterator[dict[str, np.ndarray]]:
        """Stream batches of named inputs (an iterable or an async iterable); yields each batch's outputs by name,
        in order, resuming a stream cut short in transit as :meth:`TensorgateClient.stream_predict_batches` does."""

        async def requests() -> AsyncIterator[StreamPredictRequest]:
            index = 0
            async for inputs in _aiter(batches):
                yield stream_request(str(index), model, inputs, version)
                index += 1

        outbox = _AsyncOutbox(requests())
        resume = Resumption(self._stream_retry, timeout_s)
        while True:
            answered_before = outbox.answered
            span, context = self._stream_span(model)
            options = self._stream_options(resume.remaining_s(), metadata, context)
            sent = 0

            async def counted(requests: AsyncIterator[StreamPredictRequest]) -> AsyncIterator[StreamPredictRequest]:
                nonlocal sent
                async for request in requests:
                    sent += 1
                    yield request

            call = self._pick().inference.StreamPredict(counted(outbox.requests()), **options)
            try:
                async for response in call:
                    outbox.answer(response)
                    yield stream_outputs_of(response)
                end_span(span, grpc.StatusCode.OK)
                return
            except grpc.RpcError as exc:
                end_span(span, exc.code(), exc.details())
                await asyncio.sleep(resume.pause_s(exc, outbox.answered > answered_before))
            finally:
                call.cancel()
                outbox.close()
                end_stream_span(span, sent, outbox.answered - answered_before)

    async def list_models(self, *, timeout_s: float | None = None, metadata: Metadata = ()) -> list[Model]:
        """Every model of the server with its versions' states."""
        with self._span(MODEL_SERVICE, "ListModels", ""):
            response = await self._pick().models.ListModels(ListModelsRequest(), **self._options(timeout_s, metadata))
        return list(response.models)

    async def model_status(
        self, model: str, version: str = "", *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> Model:
        """The state of a model's versions (or of one version) and its labels."""
        request = GetModelStatusRequest(model=model, version=version)
        with self._span(MODEL_SERVICE, "GetModelStatus", model):
            return (await self._pick().models.GetModelStatus(request, **self._options(timeout_s, metadata))).model

    async def model_metadata(
        self, model: str, version: str = "", *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> GetModelMetadataResponse:
        """The serving signature of a model version."""
        request = GetModelMetadataRequest(model=model, version=version)
        with self._span(MODEL_SERVICE, "GetModelMetadata", model):
            return await self._pick().models.GetModelMetadata(request, **self._options(timeout_s, metadata))

    async def load_model(
        self, model: str, version: str = "", *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> Model:
        """Serve a version even where the version policy would not (or all the policy wants); the model after.
        Needs the admin scope."""
        request = LoadModelRequest(model=model, version=version)
        with self._span(MODEL_SERVICE, "LoadModel", model):
            return (await self._pick().models.LoadModel(request, **self._options(timeout_s, metadata))).model

    async def unload_model(
        self, model: str, version: str = "", *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> Model:
        """Stop serving a version (or the model) until the next reload; the model after. Needs the admin scope."""
        request = UnloadModelRequest(model=model, version=version)
        with self._span(MODEL_SERVICE, "UnloadModel", model):
            return (await self._pick().models.UnloadModel(request, **self._options(timeout_s, metadata))).model

    async def reload_model(
        self, model: str, version: str = "", *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> Model:
        """Re-read the model's configuration and load fresh copies of its versions (or of one); the model after.
        Needs the admin scope."""
        request = ReloadModelRequest(model=model, version=version)
        with self._span(MODEL_SERVICE, "ReloadModel", model):
            return (await self._pick().models.ReloadModel(request, **self._options(timeout_s, metadata))).model

    async def set_model_labels(
        self, model: str, labels: Mapping[str, int], *, timeout_s: float | None = None, metadata: Metadata = ()
    ) -> Model:
        """Replace the model's labels (name to version number; empty removes them all); the model after. Needs the
        admin scope."""
        request = SetModelLabelsRequest(model=model, labels=dict(labels))
        with self._span(MODEL_SERVICE, "SetModelLabels", model):
            return (await self._pick().models.SetModelLabels(request, **self._options(timeout_s, metadata))).model

    async def _input_name(self, model: str, version: str, timeout_s: float | None, metadata: Metadata) -> str:
        key = (model, version)
        if key not in self._input_names:
            response = await self.model_metadata(model, version, timeout_s=timeout_s, metadata=metadata)
            self._input_names[key] = single_input(response)
        return self._input_names[key]


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class _AsyncOutbox:
    """The asyncio counterpart of the synchronous client's ``_Outbox``: the requests of one StreamPredict call
    taken from the caller's iterable and not answered yet, which each new stream sends again before taking more.

    One event loop runs every stream's request writer, so no locks: a request is taken from ``source`` by one task
    at a time, shielded (``_pulling``), so that a stream cancelled while it waits for the next request neither loses
    that request nor closes ``source``; the next stream awaits the same pull. Each stream sends its first request
    alone and the rest once that is answered (see ``_Outbox``).
    """

    def __init__(self, source: AsyncIterator[StreamPredictRequest]) -> None:
        self._source = source
        self._unanswered: deque[StreamPredictRequest] = deque()
        self._answered = 0
        self._stream = 0
        self._first_answer = asyncio.Event()
        self._pulling: asyncio.Task[StreamPredictRequest | None] | None = None

    @property
    def answered(self) -> int:
        return self._answered

    def requests(self) -> AsyncIterator[StreamPredictRequest]:
        """The requests of a new stream, which takes over from any earlier one (``close`` that one first)."""
        self._stream += 1
        self._first_answer = asyncio.Event()
        return self._send(self._stream, self._answered, self._first_answer)

    def answer(self, response: StreamPredictResponse) -> None:
        """Forget the request ``response`` answers: the oldest unanswered one, as the server answers in order."""
        request = self._unanswered.popleft()
        self._answered += 1
        self._first_answer.set()
        if response.id and response.id != request.id:
            raise RuntimeError(f"the server answered request {response.id!r} where {request.id!r} was due")

    def close(self) -> None:
        """The stream now sending is over: its writer, if waiting for the first answer, stops without taking more."""
        self._stream += 1
        self._first_answer.set()

    async def _send(
        self, stream: int, position: int, first_answer: asyncio.Event
    ) -> AsyncIterator[StreamPredictRequest]:
        while stream == self._stream:
            index = position - self._answered
            if index < len(self._unanswered):
                request: StreamPredictRequest | None = self._unanswered[index]
            else:
                request = await self._pull()
            if request is None or stream != self._stream:
                return
            yield request
            await first_answer.wait()
            position += 1

    async def _pull(self) -> StreamPredictRequest | None:
        """The next request from ``source``, queued as unanswered; None once it is exhausted."""
        if self._pulling is None:
            self._pulling = asyncio.ensure_future(anext(self._source, None))
        pulling = self._pulling
        request = await asyncio.shield(pulling)
        if self._pulling is pulling:  # the first of the waiters to wake queues it
            self._pulling = None
            if request is not None:
                self._unanswered.append(request)
        return request
