"""The clients, synchronous and asyncio alike, resume a StreamPredict stream cut short in transit (unit tests against a
fake stub: no server, no TensorFlow). The same against real replicas behind Envoy, one killed mid-stream:
tests/test_scale_out.py."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest

from tensorgate.clients.aio import AsyncTensorgateClient, _AsyncOutbox
from tensorgate.clients.client import StreamRetryPolicy, TensorgateClient, _Outbox, stream_interrupted
from tensorgate.v1 import codec
from tensorgate.v1.inference_service_pb2 import StreamPredictRequest, StreamPredictResponse

RESET_DETAILS = "Stream removed (RST_STREAM (Received RST_STREAM with error code 2))"  # seen through Envoy 1.40


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@dataclass
class Failure:
    """A stream that ends with ``code`` after ``answers`` answers."""

    answers: int
    code: grpc.StatusCode
    details: str = ""


class FakeCall:
    """One StreamPredict stream: reads up to ``window`` requests ahead of its answers, like a server and the
    transport in between (the client sends one until the first is answered), answers each with y = 2x, and ends
    with ``failure`` if it has one."""

    def __init__(self, requests: Iterator[StreamPredictRequest], failure: Failure | None, window: int) -> None:
        self.requests, self.failure, self.window = requests, failure, window
        self.received: list[str] = []  # ids of the requests this stream read
        self.in_flight: list[StreamPredictRequest] = []
        self.answered = 0
        self.cancelled = False

    def __iter__(self) -> FakeCall:
        return self

    def __next__(self) -> StreamPredictResponse:
        window = self.window if self.answered else 1
        for request in itertools.islice(self.requests, window - len(self.in_flight)):
            self.received.append(request.id)
            self.in_flight.append(request)
        if self.failure is not None and self.answered == self.failure.answers:
            raise FakeRpcError(self.failure.code, self.failure.details)
        if not self.in_flight:
            raise StopIteration
        request = self.in_flight.pop(0)
        self.answered += 1
        response = StreamPredictResponse(id=request.id, model=request.model)
        codec.encode_into(codec.decode(request.inputs["x"], "x") * 2, response.outputs["y"])
        return response

    def cancel(self) -> None:
        self.cancelled = True


class AsyncFakeCall(FakeCall):
    """The same stream as the asyncio client sees it: requests from an async iterator, answers by ``async for``."""

    def __init__(self, requests: AsyncIterator[StreamPredictRequest], failure: Failure | None, window: int) -> None:
        super().__init__(iter(()), failure, window)
        self.async_requests = requests

    def __aiter__(self) -> AsyncFakeCall:
        return self

    async def __anext__(self) -> StreamPredictResponse:
        window = self.window if self.answered else 1
        while len(self.in_flight) < window and (request := await anext(self.async_requests, None)) is not None:
            self.received.append(request.id)
            self.in_flight.append(request)
        try:
            return next(self)
        except StopIteration:
            raise StopAsyncIteration from None


@dataclass
class FakeInference:
    """Stands for the InferenceService stub: stream i fails as ``failures[i]`` says (None: it completes)."""

    failures: list[Failure | None]
    window: int = 3
    calls: list[FakeCall] = field(default_factory=list)

    def StreamPredict(self, requests: Any, timeout: float | None, metadata: object) -> FakeCall:
        failure = self.failures[len(self.calls)] if len(self.calls) < len(self.failures) else None
        kind = AsyncFakeCall if isinstance(requests, AsyncIterator) else FakeCall
        self.calls.append(kind(requests, failure, self.window))
        return self.calls[-1]


def batches(count: int) -> Iterator[dict[str, np.ndarray]]:
    for index in range(count):
        yield {"x": np.full((2,), index, np.float32)}


def stream(
    kind: str, inference: FakeInference, count: int, max_attempts: int = 5
) -> tuple[list[float], grpc.RpcError | None]:
    """Stream ``count`` batches through a client of ``kind`` whose every call goes to ``inference``: the results
    until the end or the error raised."""
    policy = StreamRetryPolicy(max_attempts=max_attempts, initial_backoff_s=0.0)
    stubs = itertools.cycle([SimpleNamespace(inference=inference)])
    results: list[float] = []
    if kind == "sync":
        with TensorgateClient("127.0.0.1:1", stream_retry=policy) as client:  # never connects
            client._next_stubs = stubs  # type: ignore[assignment]
            try:
                for outputs in client.stream_predict_batches("m", batches(count)):
                    results.append(float(outputs["y"][0]))
            except grpc.RpcError as exc:
                return results, exc
        return results, None

    async def run() -> grpc.RpcError | None:
        async with AsyncTensorgateClient("127.0.0.1:1", stream_retry=policy) as client:
            client._next_stubs = stubs  # type: ignore[assignment]
            try:
                async for outputs in client.stream_predict_batches("m", batches(count)):
                    results.append(float(outputs["y"][0]))
            except grpc.RpcError as exc:
                return exc
        return None

    return results, asyncio.run(run())


KINDS = pytest.mark.parametrize("kind", ["sync", "asyncio"])


RETRYABLE = [
    Failure(4, grpc.StatusCode.UNAVAILABLE, "Socket closed"),
    Failure(4, grpc.StatusCode.CANCELLED, "Received RST_STREAM with error code 8"),
    Failure(4, grpc.StatusCode.INTERNAL, RESET_DETAILS),
    Failure(4, grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 0"),
    Failure(0, grpc.StatusCode.UNKNOWN, "exceeded request buffer limit while retrying upstream"),
]


@KINDS
@pytest.mark.parametrize("failure", RETRYABLE, ids=lambda failure: f"{failure.code.name}: {failure.details}")
def test_a_stream_cut_in_transit_is_resumed_with_the_unanswered_requests(kind: str, failure: Failure) -> None:
    inference = FakeInference([failure])
    results, error = stream(kind, inference, 10)
    assert error is None and results == [2.0 * i for i in range(10)]  # every request answered once, in order
    first, second = inference.calls
    in_flight = 3 if failure.answers else 1  # a stream sends one request until it is answered
    assert first.received == [str(i) for i in range(failure.answers + in_flight)]
    assert second.received == [str(i) for i in range(failure.answers, 10)]  # the unanswered ones again, the rest
    assert first.cancelled and second.cancelled


@pytest.mark.parametrize(
    "failure",
    [
        Failure(4, grpc.StatusCode.INTERNAL, "internal error"),  # the server's own INTERNAL
        Failure(4, grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 1"),  # a protocol error
        Failure(4, grpc.StatusCode.CANCELLED, "Locally cancelled by application!"),
        Failure(4, grpc.StatusCode.CANCELLED, "Channel closed!"),
        Failure(4, grpc.StatusCode.UNAUTHENTICATED, "key revoked"),
        Failure(4, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        Failure(4, grpc.StatusCode.RESOURCE_EXHAUSTED, "Received RST_STREAM with error code 11"),
        Failure(4, grpc.StatusCode.UNKNOWN, "Exception iterating requests!"),  # the caller's iterable raised
    ],
    ids=lambda failure: f"{failure.code.name}: {failure.details}",
)
@KINDS
def test_other_failures_are_raised_at_once(kind: str, failure: Failure) -> None:
    inference = FakeInference([failure])
    results, error = stream(kind, inference, 10)
    assert error is not None and error.code() is failure.code
    assert results == [0.0, 2.0, 4.0, 6.0] and len(inference.calls) == 1


@KINDS
def test_attempts_without_an_answer_are_bounded(kind: str) -> None:
    down = Failure(0, grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    inference = FakeInference([Failure(2, grpc.StatusCode.INTERNAL, RESET_DETAILS), down, down, down, down])
    results, error = stream(kind, inference, 10, max_attempts=3)
    assert error is not None and error.code() is grpc.StatusCode.UNAVAILABLE
    assert results == [0.0, 2.0] and len(inference.calls) == 3  # the broken stream, then two without an answer


@KINDS
def test_a_stream_that_made_progress_starts_the_count_again(kind: str) -> None:
    cut = Failure(1, grpc.StatusCode.INTERNAL, RESET_DETAILS)
    inference = FakeInference([cut] * 6, window=2)
    results, error = stream(kind, inference, 10, max_attempts=2)
    assert error is None and results == [2.0 * i for i in range(10)]
    assert len(inference.calls) == 7


def test_a_request_taken_by_a_failed_streams_thread_is_sent_by_the_next_stream() -> None:
    """gRPC reads a stream's requests on a thread of its own, which may still be waiting inside the caller's
    iterable when the stream has failed and the next one starts."""
    third_wanted = threading.Event()

    def source() -> Iterator[StreamPredictRequest]:
        yield StreamPredictRequest(id="0")
        yield StreamPredictRequest(id="1")
        third_wanted.wait()
        yield StreamPredictRequest(id="2")
        yield StreamPredictRequest(id="3")

    outbox = _Outbox(source())
    first = outbox.requests()
    assert next(first).id == "0"
    outbox.answer(StreamPredictResponse(id="0"))
    assert next(first).id == "1"
    taken_by_first: list[str] = []
    first_thread = threading.Thread(target=lambda: taken_by_first.extend(r.id for r in first))
    first_thread.start()  # waits in source for request 2
    outbox.close()  # the first stream failed; a new one takes over
    second = outbox.requests()
    assert next(second).id == "1"  # the unanswered one first, alone until it is answered
    sent: list[str] = []
    second_thread = threading.Thread(target=lambda: sent.extend(r.id for r in second))
    second_thread.start()
    outbox.answer(StreamPredictResponse(id="1"))  # now it waits for the first thread to leave the source
    third_wanted.set()
    first_thread.join(10)
    second_thread.join(10)
    assert taken_by_first == ["2"]  # the failed stream's gRPC thread took it, and would drop it
    assert sent == ["2", "3"]  # ... but the new stream sends it, and each request once


def test_a_stream_sends_one_request_until_it_is_answered() -> None:
    """... and a stream that ends before that releases the gRPC thread waiting for it."""
    outbox = _Outbox(StreamPredictRequest(id=str(i)) for i in range(3))
    stream = outbox.requests()
    assert next(stream).id == "0"
    taken: list[str] = []
    thread = threading.Thread(target=lambda: taken.extend(r.id for r in stream))
    thread.start()
    thread.join(0.2)
    assert thread.is_alive() and taken == []  # waiting for the first answer
    outbox.close()  # the stream ended without one: its thread stops without taking more
    thread.join(10)
    assert taken == [] and not thread.is_alive()


def test_a_stream_cancelled_while_it_waits_for_a_request_leaves_it_to_the_next_stream() -> None:
    """asyncio: the failed stream's writer is cancelled while it awaits the caller's async iterable; the request
    that arrives is neither lost nor is the iterable closed: the next stream sends it."""

    async def run() -> tuple[list[str], bool]:
        third_wanted = asyncio.Event()
        closed = False

        async def source() -> AsyncIterator[StreamPredictRequest]:
            nonlocal closed
            try:
                yield StreamPredictRequest(id="0")
                await third_wanted.wait()
                yield StreamPredictRequest(id="1")
                yield StreamPredictRequest(id="2")
            except GeneratorExit:
                closed = True
                raise

        outbox = _AsyncOutbox(source())
        first = outbox.requests()
        assert (await anext(first)).id == "0"
        outbox.answer(StreamPredictResponse(id="0"))
        waiting = asyncio.ensure_future(anext(first))  # the writer awaits request 1 in source
        await asyncio.sleep(0)
        waiting.cancel()  # the stream failed: gRPC cancels its writer
        outbox.close()
        second = outbox.requests()
        sent = asyncio.ensure_future(anext(second))
        third_wanted.set()
        ids = [(await sent).id]
        outbox.answer(StreamPredictResponse(id="1"))
        ids += [request.id async for request in second]
        return ids, closed

    ids, closed = asyncio.run(run())
    assert ids == ["1", "2"] and not closed


def test_stream_interrupted() -> None:
    assert stream_interrupted(FakeRpcError(grpc.StatusCode.INTERNAL, RESET_DETAILS))
    assert not stream_interrupted(FakeRpcError(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 21"))
    assert not stream_interrupted(FakeRpcError(grpc.StatusCode.UNKNOWN, "exceeded request buffer limit"))
