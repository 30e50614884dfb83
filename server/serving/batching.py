"""Dynamic batching: concurrent requests for one model version merged into one model call.

Requests wait in a bounded queue. A batch starts forming when a model worker
is free, takes queued requests in arrival order while they fit in
``max_batch_size`` and have the same per-example shapes, and closes when full
or when its oldest request has waited ``max_queue_delay_us``. While every
worker is busy the queue keeps filling, so batches grow with the load. Each
request's slice of the outputs goes back to its caller.

Two things adapt to what is measured, never to a guess:

* Batches grow with load (``adaptive_delay_us``): while recent batches held
  several requests, arrivals are dense, and a batch short of the recent size
  waits a little longer for more. At low load the recent size is 1 and no batch
  ever waits, so a lone caller's latency does not rise.
* Where the model runs: a model whose measured calls are cheap enough
  (``INLINE_BUDGET_S`` for the batch at hand) is called on the event loop,
  saving the hand-off to a worker thread and back; anything slower runs on the
  worker pool so that the loop keeps answering. The estimate starts from the
  call time the runtime measured at warm-up and follows every call after.

A full queue refuses at once (RESOURCE_EXHAUSTED with a retry hint) instead
of blocking; requests whose caller cancelled or whose deadline passed are
dropped before the model sees them.

Each batch feeds the Prometheus metrics and the version's ``VersionStatistics``
(Triton's statistics: queue time, and the time spent preparing the inputs, in
the model call and handing out the outputs, per batch size) with the same
measurements.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Executor
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
from opentelemetry import trace

from tensorgate.server.config import BatchingConfig
from tensorgate.server.errors import DeadlineExceededError, ResourceExhaustedError, UnavailableError
from tensorgate.server.observability import metrics
from tensorgate.server.observability.tracing import child_span, tracer
from tensorgate.server.runtimes.signature import Servable
from tensorgate.server.serving.statistics import VersionStatistics

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
# A model call expected to take at most this long runs on the event loop. Below it, the thread hand-off costs
# more than the call; above it, other requests would wait on the loop.
INLINE_BUDGET_S = 0.0005
_SMOOTHING = 0.2  # weight of the newest measurement in the running averages below


@dataclass(eq=False)
class _Request:
    inputs: Mapping[str, np.ndarray]
    size: int
    shapes: tuple[tuple[int, ...], ...]  # per-example shape of every input: only equal ones can merge
    deadline: float | None
    future: asyncio.Future[Outputs]
    enqueued: float = field(default_factory=time.monotonic)
    span: trace.Span = field(default_factory=trace.get_current_span)  # the caller's span (non-recording if off)
    enqueued_ns: int = field(default_factory=time.time_ns)


class Batcher:
    """The queue and batch loop of one model version."""

    def __init__(
        self,
        model: str,
        version: int,
        servable: Servable,
        config: BatchingConfig,
        executor: Executor,
        workers: int,
        statistics: VersionStatistics,
    ) -> None:
        self._servable = servable
        self.statistics = statistics
        self._config = config
        self._executor = executor
        self._max_batch = config.max_batch_size if config.enabled and batchable(servable) else 1
        self._max_delay_s = config.max_queue_delay_us / 1e6 if self._max_batch > 1 else 0.0
        self._adaptive_delay_s = config.adaptive_delay_us / 1e6 if self._max_batch > 1 else 0.0
        self._queue: deque[_Request] = deque()
        self._arrived = asyncio.Event()
        self._wake_at = 1  # queue length at which an arrival wakes the batch loop
        self._forming: list[_Request] = []  # taken from the queue for the batch being formed
        self._free_workers = asyncio.Semaphore(workers)
        self._running: set[asyncio.Task[None]] = set()
        self._recent_batch_s = 0.01
        self._recent_requests = 1.0  # requests per batch, running average: how dense arrivals are
        # Model call time by batch size class (the size's bit length: 1, 2-3, 4-7, ...), running averages; the
        # runtime measured batch 1 at warm-up.
        self._call_seconds = {1: servable.call_seconds}
        labels = {"model": model, "version": str(version)}
        self._name = f"{model}/{version}"
        self._depth = metrics.QUEUE_DEPTH.labels(**labels)
        metrics.QUEUE_CAPACITY.labels(**labels).set(config.max_queue_size)
        self._batch_size = metrics.BATCH_SIZE.labels(**labels)
        self._queue_seconds = metrics.QUEUE_SECONDS.labels(**labels)
        self._compute_seconds = metrics.COMPUTE_SECONDS.labels(**labels)
        self._examples = metrics.MODEL_EXAMPLES.labels(**labels)
        self._dropped = {
            reason: metrics.DROPPED.labels(**labels, reason=reason) for reason in ("overload", "cancelled", "expired")
        }
        # A context of its own: batches must not become children of the request that created the batcher.
        self._loop_task = asyncio.create_task(
            self._batch_loop(), name=f"batcher {self._name}", context=contextvars.Context()
        )

    def check_room(self) -> None:
        """RESOURCE_EXHAUSTED, with the time the queue needs to drain as the retry delay, when it is full."""
        if len(self._queue) >= self._config.max_queue_size:
            self._dropped["overload"].inc()
            retry_after_s = max(0.05, self._recent_batch_s * len(self._queue) / self._max_batch)
            raise ResourceExhaustedError(
                f"the queue of model {self._name} is full ({self._config.max_queue_size} requests); "
                f"retry in {retry_after_s:.2f} s",
                retry_after_s=retry_after_s,
            )

    async def predict(self, inputs: Mapping[str, np.ndarray], size: int, deadline: float | None) -> Outputs:
        """Queue one validated request of ``size`` examples and wait for its outputs."""
        self.check_room()
        shapes = tuple(array.shape[1:] for array in inputs.values())
        request = _Request(inputs, size, shapes, deadline, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._depth.set(len(self._queue))
        if len(self._queue) >= self._wake_at:
            self._arrived.set()
        return await request.future  # cancelling the caller cancels the future: the batch loop skips it

    async def drain(self) -> None:
        """Wait until every queued and running request is answered, then close.

        Call it once the version no longer resolves for new requests: nothing
        can join the queue any more, so it empties.
        """
        while self._queue or self._forming or self._running:
            await asyncio.sleep(0.005)
        await self.close()

    async def close(self) -> None:
        """Stop the batch loop, let running batches finish, and fail whatever is still queued."""
        self._loop_task.cancel()
        await asyncio.gather(self._loop_task, *self._running, return_exceptions=True)
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(UnavailableError(f"model {self._name} was unloaded; retry"))
        self._depth.set(0)

    async def _batch_loop(self) -> None:
        while True:
            await self._free_workers.acquire()
            batch = await self._form_batch()
            if self._runs_inline(sum(r.size for r in batch)):
                # On the loop: the next batch forms from what arrived meanwhile.
                await self._execute(batch, inline=True)
                continue
            task = asyncio.create_task(self._execute(batch, inline=False))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _runs_inline(self, examples: int) -> bool:
        """Whether a call on ``examples`` is expected to fit ``INLINE_BUDGET_S``: the measured time of its size
        class, or for a size not measured yet, the largest smaller one's scaled up as if time grew linearly with
        the batch (it grows slower, so the guess errs toward the worker pool)."""
        size_class = examples.bit_length()
        known = max(c for c in self._call_seconds if c <= size_class)
        return self._call_seconds[known] * 2 ** (size_class - known) <= INLINE_BUDGET_S

    async def _form_batch(self) -> list[_Request]:
        first = await self._next_live()
        batch, total = [first], first.size
        self._forming = batch
        closes_at = first.enqueued + self._max_delay_s
        # Dense arrivals: wait (briefly) for as many requests as recent batches held.
        wanted = round(self._recent_requests)
        if wanted > 1 and self._adaptive_delay_s > self._max_delay_s:
            adaptive_closes_at = first.enqueued + self._adaptive_delay_s
        else:
            adaptive_closes_at = closes_at
        try:
            while total < self._max_batch:
                request = self._take_compatible(first.shapes, self._max_batch - total)
                if request is not None:
                    batch.append(request)
                    total += request.size
                    continue
                now = time.monotonic()
                if now < closes_at:
                    await self._wait_for_arrival(closes_at, 1)
                elif len(batch) < wanted and now < adaptive_closes_at:
                    await self._wait_for_arrival(adaptive_closes_at, wanted - len(batch))
                else:
                    break
        except asyncio.CancelledError:
            self._queue.extendleft(reversed(batch))  # closing: ``close`` answers them with the rest of the queue
            raise
        finally:
            self._forming = []
        self._recent_requests += _SMOOTHING * (len(batch) - self._recent_requests)
        self._depth.set(len(self._queue))
        return batch

    async def _wait_for_arrival(self, until: float, count: int) -> None:
        """Sleep until ``count`` requests have queued or ``until`` (monotonic) passes, whichever is first.

        A plain timer on the event; ``asyncio.wait_for`` would create a task per wait.
        """
        self._arrived.clear()
        self._wake_at = count
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + (until - time.monotonic()), self._arrived.set)
        try:
            await self._arrived.wait()
        finally:
            timer.cancel()
            self._wake_at = 1

    async def _next_live(self) -> _Request:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            request = self._queue.popleft()
            if self._is_live(request):
                return request

    def _take_compatible(self, shapes: tuple[tuple[int, ...], ...], room: int) -> _Request | None:
        """The oldest live queued request that can join the batch, or None.

        Requests of other shapes are skipped (they start the next batch); one
        that does not fit closes the batch, so arrival order is kept.
        """
        skipped = []
        found = None
        while self._queue:
            request = self._queue.popleft()
            if not self._is_live(request):
                continue
            if request.shapes != shapes:
                skipped.append(request)
                continue
            if request.size <= room:
                found = request
            else:
                skipped.append(request)
            break
        self._queue.extendleft(reversed(skipped))
        return found

    def _is_live(self, request: _Request) -> bool:
        """False (and the request answered or counted) when it must not reach the model."""
        if request.future.cancelled():
            self._dropped["cancelled"].inc()
            return False
        if request.deadline is not None and time.monotonic() > request.deadline:
            self._dropped["expired"].inc()
            request.future.set_exception(DeadlineExceededError("deadline passed while the request was queued"))
            return False
        return True

    async def _execute(self, batch: list[_Request], inline: bool) -> None:
        try:
            started = time.monotonic()
            examples = sum(r.size for r in batch)
            queued_s = 0.0
            for request in batch:
                waited = started - request.enqueued
                self._queue_seconds.observe(waited)
                queued_s += waited
            self.statistics.queued(len(batch), int(queued_s * 1e9))
            links = _trace_queue_waits(batch, examples)
            try:
                # A batch is traced when one of its requests is: its span links to each of them.
                batch_span = (
                    tracer.start_as_current_span("batch", links=links, attributes={"tensorgate.batch_size": examples})
                    if links
                    else nullcontext()
                )
                with batch_span:
                    outputs, input_ns, infer_ns = await self._run([r.inputs for r in batch], examples, inline)
            except Exception as exc:
                if len(batch) == 1:
                    _fail(batch[0], exc)
                    return
                # One request can break a merged call; run each alone so that only it fails.
                for request in batch:
                    try:
                        outputs, input_ns, infer_ns = await self._run([request.inputs], request.size, inline)
                    except Exception as alone_exc:
                        _fail(request, alone_exc)
                        continue
                    answered = time.perf_counter_ns()
                    _answer(request, outputs)
                    self.statistics.executed(request.size, 1, input_ns, infer_ns, time.perf_counter_ns() - answered)
                return
            elapsed = time.monotonic() - started
            self._recent_batch_s = 0.8 * self._recent_batch_s + 0.2 * elapsed
            answered = time.perf_counter_ns()
            offset = 0
            for request in batch:
                _answer(request, {name: value[offset : offset + request.size] for name, value in outputs.items()})
                offset += request.size
            self.statistics.executed(examples, len(batch), input_ns, infer_ns, time.perf_counter_ns() - answered)
        finally:
            self._free_workers.release()

    async def _run(
        self, parts: list[Mapping[str, np.ndarray]], examples: int, inline: bool
    ) -> tuple[Outputs, int, int]:
        """One model call on the concatenated parts, padded to a preferred size when configured, on the event loop
        (``inline``) or on the worker pool; its outputs, and the nanoseconds spent preparing its inputs and in the
        call itself.

        Outputs are cut back to ``examples`` rows when padding was added.
        """
        preparing = time.perf_counter_ns()
        if len(parts) == 1:
            inputs = dict(parts[0])
        else:
            inputs = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        padded = _padded_size(examples, self._config.preferred_batch_sizes) if self._max_batch > 1 else examples
        if padded > examples:
            inputs = {name: _pad(value, padded) for name, value in inputs.items()}
        input_ns = time.perf_counter_ns() - preparing
        with child_span("model", attributes={"tensorgate.padded_batch_size": padded}):
            if inline:
                outputs, seconds = _timed_call(self._servable, inputs)
            else:
                loop = asyncio.get_running_loop()
                outputs, seconds = await loop.run_in_executor(self._executor, _timed_call, self._servable, inputs)
        self._compute_seconds.observe(seconds)
        size_class = padded.bit_length()
        previous = self._call_seconds.get(size_class, seconds)
        self._call_seconds[size_class] = previous + _SMOOTHING * (seconds - previous)
        self._batch_size.observe(examples)
        self._examples.inc(examples)
        if padded > examples:
            outputs = {name: value[:examples] for name, value in outputs.items()}
        return outputs, input_ns, int(seconds * 1e9)


def _timed_call(servable: Servable, inputs: dict[str, np.ndarray]) -> tuple[Outputs, float]:
    """The model's outputs and how long the call itself took (without any wait for a thread or the loop)."""
    started = time.perf_counter()
    outputs = servable.predict(inputs)
    return outputs, time.perf_counter() - started


def _trace_queue_waits(batch: list[_Request], examples: int) -> list[trace.Link]:
    """End each traced request's queue span (child of its request span) and return links for the batch span."""
    links = []
    now_ns = time.time_ns()
    for request in batch:
        if not request.span.is_recording():
            continue
        parent = trace.set_span_in_context(request.span)
        tracer.start_span("queue", context=parent, start_time=request.enqueued_ns).end(end_time=now_ns)
        request.span.set_attribute("tensorgate.batch_size", examples)
        links.append(trace.Link(request.span.get_span_context()))
    return links


def batchable(servable: Servable) -> bool:
    """Merging needs a batch dimension of any size first in every input and output."""
    tensors = [*servable.signature.inputs.values(), *servable.signature.outputs.values()]
    return all(t.shape is not None and len(t.shape) > 0 and t.shape[0] == -1 for t in tensors)


def _padded_size(size: int, preferred: tuple[int, ...]) -> int:
    return next((p for p in preferred if p >= size), size)


def _pad(value: np.ndarray, size: int) -> np.ndarray:
    padding = np.zeros((size - len(value), *value.shape[1:]), dtype=value.dtype)
    if value.dtype == object:
        padding[...] = b""
    return np.concatenate([value, padding])


def _answer(request: _Request, outputs: Outputs) -> None:
    if not request.future.done():
        request.future.set_result(outputs)


def _fail(request: _Request, exc: Exception) -> None:
    if not request.future.done():
        request.future.set_exception(exc)
