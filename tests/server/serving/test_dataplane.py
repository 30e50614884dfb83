"""The data plane on a fake servable: a resolved version gets a batcher of its own per loaded copy, validation
runs before the model, and the output filter and the example charge apply."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest

from tensorgate.server.config import BatchingConfig
from tensorgate.server.errors import InvalidArgumentError, RateLimitedError
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.registry import AvailableVersion
from tensorgate.server.security.rate_limit import RateLimiter
from tensorgate.server.serving.dataplane import DataPlane
from tensorgate.server.serving.validation import Limits

from support.fakes import FakeServable, float_signature

LIMITS = Limits(max_examples=64, max_tensor_elements=10_000, reject_non_finite=True)


@dataclass
class Setup:
    dataplane: DataPlane
    servable: FakeServable = field(default_factory=lambda: FakeServable(signature=float_signature(outputs=("y",))))

    def version(self, number: int = 1, servable: FakeServable | None = None) -> AvailableVersion:
        config = ModelConfig(batching=BatchingConfig(max_queue_size=4))
        return AvailableVersion("m", number, config, servable or self.servable)


def setup(limiter: RateLimiter | None = None) -> Setup:
    return Setup(DataPlane(ThreadPoolExecutor(1), 1, LIMITS, limiter))


def test_a_request_runs_on_its_version_and_names_it() -> None:
    plane = setup()

    async def go() -> None:
        admission = plane.dataplane.admit(plane.version(7))
        prediction = await plane.dataplane.predict(admission, {"x": np.ones((3, 2), np.float32)}, ["y"])
        assert (prediction.model, prediction.version) == ("m", 7)
        np.testing.assert_array_equal(prediction.outputs["y"], np.full((3, 2), 2, np.float32))
        await plane.dataplane.close()

    asyncio.run(go())
    assert plane.servable.batch_sizes() == [3]


def test_invalid_inputs_never_reach_the_model() -> None:
    plane = setup()

    async def go() -> None:
        admission = plane.dataplane.admit(plane.version())
        with pytest.raises(InvalidArgumentError, match="contains NaN or infinite values"):
            await plane.dataplane.predict(admission, {"x": np.array([[np.nan]], np.float32)})
        with pytest.raises(InvalidArgumentError, match="output"):
            await plane.dataplane.predict(admission, {"x": np.ones((1, 1), np.float32)}, ["nope"])
        await plane.dataplane.close()

    asyncio.run(go())
    assert plane.servable.batch_sizes() == []


def test_examples_beyond_the_first_are_charged_to_the_caller() -> None:
    limiter = RateLimiter(rate_per_s=0.001, burst=3)
    plane = setup(limiter)

    async def go() -> None:
        limiter.take("job", 1)  # what authorization charged for the request itself
        admission = plane.dataplane.admit(plane.version(), caller="job")
        await plane.dataplane.predict(admission, {"x": np.ones((3, 1), np.float32)})  # 2 more: the burst is spent
        await plane.dataplane.close()

    asyncio.run(go())
    with pytest.raises(RateLimitedError):
        limiter.take("job", 1)


def test_each_loaded_copy_gets_its_own_batcher() -> None:
    plane = setup()
    fresh = FakeServable()

    async def go() -> None:
        old, new = plane.version(1), plane.version(1, fresh)
        assert plane.dataplane.admit(old).batcher is plane.dataplane.admit(old).batcher
        assert plane.dataplane.admit(new).batcher is not plane.dataplane.admit(old).batcher
        prediction = await plane.dataplane.predict(plane.dataplane.admit(new), {"x": np.ones((1, 1), np.float32)})
        assert prediction.version == 1
        await plane.dataplane.close()

    asyncio.run(go())
    assert fresh.batch_sizes() == [1] and plane.servable.batch_sizes() == []
