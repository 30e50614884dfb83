"""The batcher's adaptive rules, on a fake model (TensorFlow is not the point here): a lone caller never waits,
dense arrivals grow batches, and where the model runs follows its measured call time."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest

from tensorgate.server.config import BatchingConfig
from tensorgate.server.runtimes.signature import Signature, TensorInfo
from tensorgate.server.serving.batching import Batcher
from tensorgate.v1.tensor_pb2 import DataType

HOUR_US = 3_600_000_000  # a delay no test could sit out: finishing at all shows it was never waited for
SIGNATURE = Signature(
    name="serving_default",
    inputs={"x": TensorInfo("x", DataType.DATA_TYPE_FLOAT32, (-1, 2))},
    outputs={"y": TensorInfo("y", DataType.DATA_TYPE_FLOAT32, (-1, 2))},
)


@dataclass
class FakeModel:
    """Doubles its input; records each call's batch size and thread, and can be held inside a call."""

    signature: Signature = SIGNATURE
    device: str = "CPU:0"
    call_seconds: float = 0.0  # what the runtime measured at warm-up (the batcher's first estimate)
    sleep_s: float = 0.0  # how long each call really takes, on the wall clock
    calls: list[tuple[int, str]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append((len(inputs["x"]), threading.current_thread().name))
        self.entered.set()
        self.gate.wait(timeout=60)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return {"y": inputs["x"] * 2}


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1, thread_name_prefix="model") as pool:
        yield pool


def batcher(model: FakeModel, executor: ThreadPoolExecutor, **config: int) -> Batcher:
    return Batcher("fake", 1, model, BatchingConfig(max_batch_size=64, **config), executor, workers=1)


def example(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), value, np.float32)}


async def predict(b: Batcher, value: float) -> float:
    outputs = await b.predict(example(value), 1, None)
    return float(outputs["y"][0, 0])


def test_a_lone_caller_never_waits_for_a_batch(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeModel()
        b = batcher(model, executor, adaptive_delay_us=HOUR_US)
        for value in range(20):
            assert await asyncio.wait_for(predict(b, value), timeout=30) == 2 * value
        await b.close()
        assert [size for size, _ in model.calls] == [1] * 20

    asyncio.run(scenario())


def test_dense_arrivals_wait_for_a_batch_as_full_as_recent_ones(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeModel()
        b = batcher(model, executor, adaptive_delay_us=HOUR_US)
        for _ in range(10):  # bursts of 8 requests queued at once: batches of 8
            await asyncio.wait_for(asyncio.gather(*(predict(b, 2) for _ in range(8))), timeout=30)
        assert [size for size, _ in model.calls[-3:]] == [8, 8, 8]
        calls_before = len(model.calls)
        # Arrivals are dense now: a lone request waits for company (the window is an hour), and the batch
        # closes as soon as enough have arrived, not when the window ends.
        lone = asyncio.ensure_future(predict(b, 3))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not lone.done(), "a request under dense arrivals did not wait for others"
        company = [asyncio.ensure_future(predict(b, 4)) for _ in range(7)]
        assert await asyncio.wait_for(asyncio.gather(lone, *company), timeout=30) == [6] + [8] * 7
        assert model.calls[calls_before][0] >= 2, "the lone request was not merged with the ones after it"
        await b.close()

    asyncio.run(scenario())


def test_cheap_model_runs_on_the_event_loop(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeModel(call_seconds=0.00001)
        b = batcher(model, executor)
        for value in range(5):
            await predict(b, value)
        await b.close()
        assert [thread for _, thread in model.calls] == [threading.current_thread().name] * 5

    asyncio.run(scenario())


def test_model_moves_onto_the_loop_once_its_calls_measure_cheap(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeModel(call_seconds=0.002)  # slow at warm-up, instant since
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
        model = FakeModel(call_seconds=0.0001)  # batch 1 fits the budget; 64 times it would not
        b = batcher(model, executor)
        await predict(b, 1)
        for _ in range(2):
            await b.predict({"x": np.ones((64, 2), np.float32)}, 64, None)
        await b.close()
        loop_thread = threading.current_thread().name
        assert model.calls == [(1, loop_thread), (64, model.calls[1][1]), (64, loop_thread)]
        assert model.calls[1][1].startswith("model")

    asyncio.run(scenario())


def test_slow_model_leaves_the_event_loop(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        model = FakeModel(sleep_s=0.005)  # cheap at warm-up, ten times the inline budget since
        b = batcher(model, executor)
        for value in range(5):
            await predict(b, value)
        await b.close()
        threads = [thread for _, thread in model.calls]
        assert all(thread.startswith("model") for thread in threads[1:])

    asyncio.run(scenario())


def test_closing_answers_a_batch_that_was_still_forming(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        b = batcher(FakeModel(), executor, max_queue_delay_us=HOUR_US)
        waiting = asyncio.ensure_future(predict(b, 1))
        for _ in range(20):
            await asyncio.sleep(0)
        await b.close()
        with pytest.raises(Exception, match="unloaded"):
            await asyncio.wait_for(waiting, timeout=30)

    asyncio.run(scenario())
