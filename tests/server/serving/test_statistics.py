"""Triton's statistics of a model version: the recorder's arithmetic, and the data plane and batcher feeding it
from every request and batch (on a fake servable, batches made deterministic with the servable's gate)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tensorgate.server.errors import InvalidArgumentError
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.registry import AvailableVersion
from tensorgate.server.serving.dataplane import DataPlane
from tensorgate.server.serving.statistics import BatchStatistics, Duration, Statistics, VersionStatistics
from tensorgate.server.serving.validation import Limits

from support.fakes import GATE_TIMEOUT_S, FakeServable

LIMITS = Limits(max_examples=64, max_tensor_elements=10_000, reject_non_finite=True)


def test_counts_and_durations_add_up_as_triton_reports_them() -> None:
    statistics = VersionStatistics("m", 3)
    statistics.queued(2, 30)
    statistics.executed(4, 2, input_ns=10, infer_ns=100, output_ns=5)
    statistics.queued(1, 7)
    statistics.executed(1, 1, input_ns=1, infer_ns=20, output_ns=2)
    statistics.executed(4, 1, input_ns=3, infer_ns=90, output_ns=4)
    statistics.succeeded(3, 1_000, now_ns=1_700_000_000_123_456_789)
    statistics.succeeded(2, 500, now_ns=1_700_000_001_999_000_000)
    statistics.failed(40)

    snapshot = statistics.snapshot()
    assert (snapshot.model, snapshot.version) == ("m", 3)
    assert snapshot.last_inference_ms == 1_700_000_001_999
    assert (snapshot.inference_count, snapshot.execution_count) == (5, 3)
    assert (snapshot.success, snapshot.fail, snapshot.queue) == (Duration(2, 1_500), Duration(1, 40), Duration(3, 37))
    # Per request: each request of a batch counts that batch's whole duration.
    assert snapshot.compute_input == Duration(4, 2 * 10 + 1 + 3)
    assert snapshot.compute_infer == Duration(4, 2 * 100 + 20 + 90)
    assert snapshot.compute_output == Duration(4, 2 * 5 + 2 + 4)
    assert snapshot.batches == [
        BatchStatistics(1, Duration(1, 1), Duration(1, 20), Duration(1, 2)),
        BatchStatistics(4, Duration(2, 13), Duration(2, 190), Duration(2, 9)),
    ]
    statistics.failed(1)
    assert snapshot.fail == Duration(1, 40), "a snapshot is a copy"


def test_a_version_starts_at_zero_and_keeps_its_counters() -> None:
    statistics = Statistics()
    assert statistics.snapshot("m", 1).success == Duration()
    assert statistics.snapshot("m", 1).last_inference_ms == 0
    statistics.version("m", 1).failed(5)
    assert statistics.version("m", 1) is statistics.version("m", 1)
    assert statistics.snapshot("m", 1).fail == Duration(1, 5)
    assert statistics.snapshot("m", 2).fail == Duration()


def test_the_data_plane_counts_every_request_and_batch() -> None:
    """One request alone, then three merged into one batch while it ran, then one refused by validation."""
    # call_seconds above the inline budget: the model runs on the worker, so a closed gate does not block the loop.
    servable = FakeServable(call_seconds=0.01, sleep_s=0.002)
    dataplane = DataPlane(ThreadPoolExecutor(1), 1, LIMITS)
    version = AvailableVersion("m", 2, ModelConfig(), servable)
    before_ms = time.time_ns() // 1_000_000

    async def go() -> None:
        servable.gate.clear()
        first = asyncio.ensure_future(dataplane.predict(dataplane.admit(version), {"x": np.ones((1, 3), np.float32)}))
        assert await asyncio.to_thread(servable.entered.wait, GATE_TIMEOUT_S)
        merged = [
            asyncio.ensure_future(dataplane.predict(dataplane.admit(version), {"x": np.ones((size, 3), np.float32)}))
            for size in (2, 3, 1)
        ]
        for _ in range(20):  # they queue behind the running call: loop turns, not wall-clock time
            await asyncio.sleep(0)
        servable.gate.set()
        await asyncio.gather(first, *merged)
        with pytest.raises(InvalidArgumentError):
            await dataplane.predict(dataplane.admit(version), {"x": np.array([[np.nan]], np.float32)})
        await dataplane.close()

    asyncio.run(go())
    assert servable.batch_sizes() == [1, 6]
    snapshot = dataplane.statistics.snapshot("m", 2)
    assert (snapshot.inference_count, snapshot.execution_count) == (7, 2)
    assert (snapshot.success.count, snapshot.fail.count, snapshot.queue.count) == (4, 1, 4)
    assert snapshot.success.ns > 0 and snapshot.fail.ns > 0 and snapshot.queue.ns > 0
    assert snapshot.compute_infer.count == snapshot.compute_input.count == snapshot.compute_output.count == 4
    # The model call sleeps 2 ms: the first request's call and, for each of the three merged ones, theirs.
    assert snapshot.compute_infer.ns >= 4 * 2_000_000
    assert [(b.batch_size, b.compute_infer.count) for b in snapshot.batches] == [(1, 1), (6, 1)]
    assert all(b.compute_infer.ns >= 2_000_000 for b in snapshot.batches)
    assert snapshot.last_inference_ms >= before_ms
