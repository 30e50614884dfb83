"""The corridor's rules, on a fake servable and without a server: how each failure becomes a status, what a Call
checks before the registry and the data plane are reached, and under which labels a call is counted."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2

from tensorgate.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ResourceExhaustedError,
    UnavailableError,
)
from tensorgate.server.models.model_config import ModelConfig
from tensorgate.server.models.registry import ModelRegistry, ModelVersion, VersionState
from tensorgate.server.observability import metrics
from tensorgate.server.protocols.rpc import INTERNAL_MESSAGE, Call, CallLimits, Corridor, failure
from tensorgate.server.security.principal import PREDICT, Principal
from tensorgate.server.serving.dataplane import DataPlane
from tensorgate.server.serving.validation import Limits
from tensorgate.v1.tensors import TensorCodecError

from support.fakes import FakeServable

LIMITS = CallLimits(stream_window=4, max_stream_duration_s=60, max_request_timeout_s=30)


class FakeContext:
    """What a Call reads of grpc's ServicerContext: the time left of the caller's deadline."""

    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def corridor() -> Corridor:
    registry = ModelRegistry()
    servable = FakeServable()
    registry.put(ModelVersion("m", 1, Path("/m/1"), VersionState.AVAILABLE, ModelConfig(), servable=servable))
    registry.put(ModelVersion("m", 2, Path("/m/2"), VersionState.LOADING, ModelConfig()))
    executor = ThreadPoolExecutor(1)
    dataplane = DataPlane(executor, 1, Limits(max_examples=64, max_tensor_elements=10_000, reject_non_finite=True))
    return Corridor(registry, dataplane, LIMITS, authenticator=None)


def call(principal: Principal | None = None, remaining: float | None = None) -> Call:
    return corridor().call(FakeContext(remaining), principal)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "code", "rejection"),
    [
        (InvalidArgumentError("bad"), grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
        (NotFoundError("no"), grpc.StatusCode.NOT_FOUND, ""),
        (UnavailableError("loading"), grpc.StatusCode.UNAVAILABLE, ""),
        (PermissionDeniedError("not yours"), grpc.StatusCode.PERMISSION_DENIED, "unauthorized"),
        (ResourceExhaustedError("full", 0.25), grpc.StatusCode.RESOURCE_EXHAUSTED, "overload"),
        (RateLimitedError("slow down", 2.5), grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited"),
        (TensorCodecError("input 'x': shape [2] needs 2 values, got 3"), grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
    ],
)
def test_each_failure_gets_its_status_and_rejection_reason(
    error: Exception, code: grpc.StatusCode, rejection: str
) -> None:
    failed = failure(error, "predict")
    assert (failed.code, failed.message, failed.rejection) == (code, str(error), rejection)
    assert failed.status.code == code.value[0] and failed.status.message == str(error)


def test_overload_carries_retry_info_and_retry_after() -> None:
    failed = failure(RateLimitedError("slow down", 2.5), "predict")
    info = error_details_pb2.RetryInfo()
    assert failed.status.details[0].Unpack(info) and info.retry_delay.ToNanoseconds() == 2_500_000_000
    assert dict(failed.trailers)["retry-after"] == "3"  # whole seconds, rounded up
    assert "retry-after" not in dict(failure(InvalidArgumentError("bad"), "predict").trailers)


def test_an_unexpected_exception_is_internal_and_logged_not_shown(caplog: pytest.LogCaptureFixture) -> None:
    failed = failure(KeyError("secret detail"), "predict")
    assert (failed.code, failed.message) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    assert "secret detail" not in failed.message
    assert "unexpected error in predict" in caplog.text and "KeyError" in caplog.text


def test_a_model_is_required_once_for_every_handler() -> None:
    for check in (lambda c: c.select(""), lambda c: c.resolve("", "1"), lambda c: c.admit("", "")):
        with pytest.raises(InvalidArgumentError, match=r"^model is required$"):
            check(call())


def test_a_restricted_key_may_use_only_its_models() -> None:
    restricted = Principal("batch", frozenset({PREDICT}), frozenset({"other"}))
    with pytest.raises(PermissionDeniedError, match="'batch' may not use model 'm'"):
        call(restricted).admit("m", "")
    assert not call(restricted).may_use("m") and call(restricted).may_use("other")
    assert call(Principal("ops", frozenset({PREDICT}))).may_use("m") and call().may_use("m")


def test_labels_carry_known_models_only_and_the_version_that_answered() -> None:
    unknown = call()
    with pytest.raises(NotFoundError):
        unknown.resolve("no-such-model", "")
    assert unknown.model_label == metrics.UNKNOWN_MODEL  # a metric label never carries what a caller typed
    loading = call()
    with pytest.raises(UnavailableError, match="version 2 is loading"):
        loading.resolve("m", "2")
    assert loading.model_label == "m"

    answered = call()

    async def predict() -> None:
        admission = answered.admit("m", "")
        prediction = await answered.predict(admission, {"x": np.ones((2, 3), np.float32)})
        np.testing.assert_array_equal(prediction.outputs["y"], np.full((2, 3), 2, np.float32))

    asyncio.run(predict())
    assert (answered.model_label, answered.version_label) == ("m", "1")


def test_the_server_caps_the_callers_deadline() -> None:
    assert LIMITS.time_left(None) == 30
    assert LIMITS.time_left(100) == 30
    assert LIMITS.time_left(0.5) == 0.5
