"""The batcher's rules on a NumPy fake servable: what merges, what is dropped or refused before the model, padding,
the adaptive wait (never at low load), and where the model runs (on the loop or the pool)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import REGISTRY

from tensorgate.server.config import BatchingConfig
from tensorgate.server.errors import DeadlineExceededError, ResourceExhaustedError
from tensorgate.server.serving.batching import Batcher
from tensorgate.server.serving.statistics import VersionStatistics

from support.fakes import FakeServable, float_signature

HOUR_US = 3_600_000_000  # a delay no test could sit out: finishing at all shows it was never waited for
SLOW_ESTIMATE_S = 1.0  # a warm-up estimate far over the inline budget: calls run on the pool, never on the loop
TIMEOUT_S = 30


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1, thread_name_prefix="model") as pool:
        yield pool


def batcher(model: FakeServable, executor: ThreadPoolExecutor, name: str = "fake", **config: object) -> Batcher:
    settings = BatchingConfig.model_validate({"max_batch_size": 64, **config})
    return Batcher(name, 1, model, settings, executor, workers=1, statistics=VersionStatistics(name, 1))


def rows(value: float, count: int = 1, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((count, width), value, np.float32)}


async def predict(b: Batcher, value: float, width: int = 2, deadline: float | None = None) -> float:
    outputs = await b.predict(rows(value, width=width), 1, deadline)
    return float(outputs["y"][0, 0])


async def hold_the_worker(b: Batcher, model: FakeServable) -> asyncio.Future[float]:
    """A first request, held inside the model (the gate is closed) so that the ones after it queue."""
    model.gate.clear()
    busy = asyncio.ensure_future(predict(b, 0))
    await asyncio.to_thread(model.entered.wait, TIMEOUT_S)
    return busy


async def let_the_loop_run() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def dropped(model: str, reason: str) -> float:
    labels = {"model": model, "version": "1", "reason": reason}
    return REGISTRY.get_sample_value("tensorgate_requests_dropped_total", labels) or 0.0


def test_queued_requests_of_the_same_shape_merge_and_other_shapes_wait_for_their_own_batch(
    executor: ThreadPoolExecutor,
) -> None:
    async def scenario() -> None:
        model = FakeServable(call_seconds=SLOW_ESTIMATE_S)
        b = batcher(model, executor)
        busy = await hold_the_worker(b, model)
        queued = [asyncio.ensure_future(predict(b, value, width)) for value, width in ((1, 2), (2, 3), (3, 2), (4, 3))]
        await let_the_loop_run()
        model.gate.set()
        answers = await asyncio.wait_for(asyncio.gather(busy, *queued), TIMEOUT_S)
        await b.close()
        assert answers == [0, 2, 4, 6, 8]
        assert model.batch_sizes() == [1, 2, 2]  # the held call, then widths 2 (1 and 3), then widths 3 (2 and 4)

    asyncio.run(scenario())


def test_a_request_that_does_not_fit_the_batch_starts_the_next_one(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable(call_seconds=SLOW_ESTIMATE_S)
        b = batcher(model, executor, max_batch_size=4)
        busy = await hold_the_worker(b, model)
        queued = [asyncio.ensure_future(b.predict(rows(1, count), count, None)) for count in (3, 2, 1)]
        await let_the_loop_run()
        model.gate.set()
        answers = await asyncio.wait_for(asyncio.gather(busy, *queued), TIMEOUT_S)
        await b.close()
        assert [len(answer["y"]) for answer in answers[1:]] == [3, 2, 1]
        assert model.batch_sizes() == [1, 3, 3]  # 3 alone (2 would overflow 4), then 2 + 1: arrival order is kept

    asyncio.run(scenario())


def test_after_a_merged_call_fails_each_request_runs_alone_and_only_the_bad_one_fails(
    executor: ThreadPoolExecutor,
) -> None:
    async def scenario() -> None:
        model = FakeServable(call_seconds=SLOW_ESTIMATE_S, poison=-1.0)
        b = batcher(model, executor)
        busy = await hold_the_worker(b, model)
        queued = [asyncio.ensure_future(predict(b, value)) for value in (1, -1, 2)]
        await let_the_loop_run()
        model.gate.set()
        answers = await asyncio.wait_for(asyncio.gather(busy, *queued, return_exceptions=True), TIMEOUT_S)
        await b.close()
        assert answers[:2] == [0, 2] and answers[3] == 4
        assert isinstance(answers[2], ValueError) and "poisoned" in str(answers[2])
        assert model.batch_sizes() == [1, 3, 1, 1, 1]

    asyncio.run(scenario())


def test_a_request_whose_deadline_passes_in_the_queue_never_reaches_the_model(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable(call_seconds=SLOW_ESTIMATE_S)
        b = batcher(model, executor, name="expiring")
        before = dropped("expiring", "expired")
        busy = await hold_the_worker(b, model)
        expiring = asyncio.ensure_future(predict(b, 1, deadline=time.monotonic() + 0.05))
        await asyncio.sleep(0.1)  # the wall clock passes the deadline while the request is queued
        model.gate.set()
        assert await asyncio.wait_for(busy, TIMEOUT_S) == 0
        with pytest.raises(DeadlineExceededError, match="deadline passed while the request was queued"):
            await asyncio.wait_for(expiring, TIMEOUT_S)
        await b.close()
        assert model.batch_sizes() == [1]
        assert dropped("expiring", "expired") == before + 1

    asyncio.run(scenario())


def test_a_cancelled_request_never_reaches_the_model(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable(call_seconds=SLOW_ESTIMATE_S)
        b = batcher(model, executor, name="cancelling")
        before = dropped("cancelling", "cancelled")
        busy = await hold_the_worker(b, model)
        withdrawn = asyncio.ensure_future(predict(b, 1))
        kept = asyncio.ensure_future(predict(b, 2))
        await let_the_loop_run()
        withdrawn.cancel()
        model.gate.set()
        assert await asyncio.wait_for(asyncio.gather(busy, kept), TIMEOUT_S) == [0, 4]
        await b.close()
        assert model.batch_sizes() == [1, 1]
        assert dropped("cancelling", "cancelled") == before + 1

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once_with_a_retry_delay(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable(call_seconds=SLOW_ESTIMATE_S)
        b = batcher(model, executor, name="crowded", max_queue_size=2)
        before = dropped("crowded", "overload")
        busy = await hold_the_worker(b, model)
        queued = [asyncio.ensure_future(predict(b, value)) for value in (1, 2)]
        await let_the_loop_run()
        with pytest.raises(
            ResourceExhaustedError, match=r"the queue of model crowded/1 is full \(2 requests\); retry in"
        ):
            await predict(b, 3)
        with pytest.raises(ResourceExhaustedError) as refused:
            b.check_room()
        assert refused.value.retry_after_s >= 0.05
        assert dropped("crowded", "overload") == before + 2
        model.gate.set()
        assert await asyncio.wait_for(asyncio.gather(busy, *queued), TIMEOUT_S) == [0, 2, 4]
        b.check_room()  # drained: room again
        await b.close()

    asyncio.run(scenario())


def test_calls_are_padded_to_the_next_preferred_size_and_answers_cut_back(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable()
        b = batcher(model, executor, preferred_batch_sizes=(4, 8))
        for count in (3, 5, 9):
            outputs = await asyncio.wait_for(b.predict(rows(1, count), count, None), TIMEOUT_S)
            np.testing.assert_array_equal(outputs["y"], np.full((count, 2), 2, np.float32))
        await b.close()
        assert model.batch_sizes() == [4, 8, 9]  # 9 is over every preferred size: not padded

    asyncio.run(scenario())


def test_disabled_batching_calls_the_model_once_per_request(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable(call_seconds=SLOW_ESTIMATE_S)
        b = batcher(model, executor, enabled=False, preferred_batch_sizes=(4,))
        busy = await hold_the_worker(b, model)
        queued = [asyncio.ensure_future(predict(b, value)) for value in (1, 2, 3)]
        await let_the_loop_run()
        model.gate.set()
        assert await asyncio.wait_for(asyncio.gather(busy, *queued), TIMEOUT_S) == [0, 2, 4, 6]
        await b.close()
        assert model.batch_sizes() == [1, 1, 1, 1]  # and never padded

    asyncio.run(scenario())


def test_a_model_without_a_free_batch_dimension_is_never_merged(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable(signature=float_signature(shape=(1, 2)), call_seconds=SLOW_ESTIMATE_S)
        b = batcher(model, executor)
        busy = await hold_the_worker(b, model)
        queued = [asyncio.ensure_future(predict(b, value)) for value in (1, 2)]
        await let_the_loop_run()
        model.gate.set()
        assert await asyncio.wait_for(asyncio.gather(busy, *queued), TIMEOUT_S) == [0, 2, 4]
        await b.close()
        assert model.batch_sizes() == [1, 1, 1]

    asyncio.run(scenario())


def test_a_lone_caller_never_waits_for_a_batch(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable()
        b = batcher(model, executor, adaptive_delay_us=HOUR_US)
        for value in range(20):
            assert await asyncio.wait_for(predict(b, value), TIMEOUT_S) == 2 * value
        await b.close()
        assert model.batch_sizes() == [1] * 20

    asyncio.run(scenario())


def test_dense_arrivals_wait_for_a_batch_as_full_as_recent_ones(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable()
        b = batcher(model, executor, adaptive_delay_us=HOUR_US)
        for _ in range(10):  # bursts of 8 requests queued at once: batches of 8
            await asyncio.wait_for(asyncio.gather(*(predict(b, 2) for _ in range(8))), TIMEOUT_S)
        assert model.batch_sizes()[-3:] == [8, 8, 8]
        calls_before = len(model.calls)
        # Arrivals are dense now: a lone request waits for company (the window is an hour), and the batch
        # closes as soon as enough have arrived, not when the window ends.
        lone = asyncio.ensure_future(predict(b, 3))
        await let_the_loop_run()
        assert not lone.done(), "a request under dense arrivals did not wait for others"
        company = [asyncio.ensure_future(predict(b, 4)) for _ in range(7)]
        assert await asyncio.wait_for(asyncio.gather(lone, *company), TIMEOUT_S) == [6] + [8] * 7
        assert model.calls[calls_before][0] >= 2, "the lone request was not merged with the ones after it"
        await b.close()

    asyncio.run(scenario())


def test_cheap_model_runs_on_the_event_loop(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable(call_seconds=0.00001)
        b = batcher(model, executor)
        for value in range(5):
            await predict(b, value)
        await b.close()
        assert [thread for _, thread in model.calls] == [threading.current_thread().name] * 5

    asyncio.run(scenario())


def test_model_moves_onto_the_loop_once_its_calls_measure_cheap(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable(call_seconds=0.002)  # slow at warm-up, instant since
        b = batcher(model, executor)
        for value in range(30):
            await predict(b, value)
        await b.close()
        threads = [thread for _, thread in model.calls]
        assert threads[0].startswith("model"), "the warm-up estimate puts the first call on the pool"
        assert threads[-1] == threading.current_thread().name

    asyncio.run(scenario())


def test_a_batch_size_never_measured_runs_on_the_pool_first(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable(call_seconds=0.0001)  # batch 1 fits the budget; 64 times it would not
        b = batcher(model, executor)
        await predict(b, 1)
        for _ in range(2):
            await b.predict(rows(1, 64), 64, None)
        await b.close()
        loop_thread = threading.current_thread().name
        assert model.calls == [(1, loop_thread), (64, model.calls[1][1]), (64, loop_thread)]
        assert model.calls[1][1].startswith("model")

    asyncio.run(scenario())


def test_slow_model_leaves_the_event_loop(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable(sleep_s=0.005)  # cheap at warm-up, ten times the inline budget since
        b = batcher(model, executor)
        for value in range(5):
            await predict(b, value)
        await b.close()
        threads = [thread for _, thread in model.calls]
        assert all(thread.startswith("model") for thread in threads[1:])

    asyncio.run(scenario())


def test_closing_answers_a_batch_that_was_still_forming(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        b = batcher(FakeServable(), executor, max_queue_delay_us=HOUR_US)
        waiting = asyncio.ensure_future(predict(b, 1))
        await let_the_loop_run()
        await b.close()
        with pytest.raises(Exception, match="unloaded"):
            await asyncio.wait_for(waiting, TIMEOUT_S)

    asyncio.run(scenario())


def test_drain_answers_everything_queued_before_closing(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeServable(call_seconds=SLOW_ESTIMATE_S)
        b = batcher(model, executor)
        busy = await hold_the_worker(b, model)
        queued = [asyncio.ensure_future(predict(b, value)) for value in (1, 2)]
        await let_the_loop_run()
        draining = asyncio.ensure_future(b.drain())
        await let_the_loop_run()
        assert not draining.done()
        model.gate.set()
        await asyncio.wait_for(draining, TIMEOUT_S)
        assert [future.result() for future in (busy, *queued)] == [0, 2, 4]

    asyncio.run(scenario())
