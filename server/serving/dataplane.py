"""The transport-independent serving path: admit, validate, batch, run the model.

The RPC corridor (and through Envoy, every REST route) calls ``admit`` with the
version the registry resolved for a request, then decodes its tensors, then calls
``predict`` with the NumPy inputs; it knows nothing of protobuf. Admission comes first so
that an overloaded model refuses a request before any work is spent on its
tensors. Each model version gets its own batcher, created on its first
request, whose model calls run on the shared bounded worker pool so that the
event loop keeps answering. Every request admitted counts in its version's
``statistics`` (Triton's success and fail counts and durations; the batcher
adds the queue and compute times).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from tensorgate.server.models.registry import AvailableVersion, ModelVersion
from tensorgate.server.observability.tracing import child_span
from tensorgate.server.security.rate_limit import RateLimiter
from tensorgate.server.serving.batching import Batcher
from tensorgate.server.serving.statistics import Statistics
from tensorgate.server.serving.validation import Limits, validate_inputs, validate_output_filter


@dataclass(frozen=True)
class Admission:
    """A request let in: the version that serves it, and the batcher it queues on, which had room for it."""

    version: AvailableVersion
    batcher: Batcher
    caller: str | None  # the authenticated caller, charged per example when the rate limit counts examples


@dataclass(frozen=True)
class Prediction:
    """The outputs of one request and the version that produced them."""

    model: str
    version: int
    outputs: dict[str, np.ndarray]


class DataPlane:
    """Runs predictions against the registry's available versions."""

    def __init__(
        self,
        executor: Executor,
        workers: int,
        limits: Limits,
        examples_limiter: RateLimiter | None = None,
    ) -> None:
        """``examples_limiter``: the callers' rate limiter when a token is one example. Authorization has
        charged each request one token; the data plane charges the rest of its examples once they are counted."""
        self._executor = executor
        self._workers = workers
        self._limits = limits
        self._examples_limiter = examples_limiter
        # Keyed by the servable too: a reloaded copy of a version gets a batcher of its own.
        self._batchers: dict[tuple[str, int, int], Batcher] = {}
        self.statistics = Statistics()

    def admit(self, version: AvailableVersion, caller: str | None = None) -> Admission:
        """A request for ``version`` let in, if its queue has room (RESOURCE_EXHAUSTED with a retry delay when it
        is full). Call it before decoding the request's tensors, and ``predict`` right after (without awaiting
        anything in between, the queue keeps the room it had)."""
        batcher = self._batcher(version)
        batcher.check_room()
        return Admission(version, batcher, caller)

    async def predict(
        self,
        admission: Admission,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> Prediction:
        """Validate and run one admitted request.

        ``timeout_s`` is what is left of the caller's deadline: a request whose
        deadline passes while it is queued is dropped before the model runs.
        Cancelling the awaiting task withdraws a request that is still queued.
        """
        started = time.perf_counter_ns()
        statistics = admission.batcher.statistics
        try:
            signature = admission.version.servable.signature
            with child_span("validate"):
                size = validate_inputs(signature, inputs, self._limits)
                validate_output_filter(signature, output_filter)
            if self._examples_limiter is not None and admission.caller is not None and size > 1:
                self._examples_limiter.charge(admission.caller, size - 1)
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            outputs = await admission.batcher.predict(inputs, size, deadline)
        except BaseException:  # a cancelled request counts too: it got no answer
            statistics.failed(time.perf_counter_ns() - started)
            raise
        statistics.succeeded(size, time.perf_counter_ns() - started, time.time_ns())
        if output_filter:
            outputs = {name: outputs[name] for name in output_filter}
        target = admission.version
        return Prediction(model=target.model, version=target.version, outputs=outputs)

    async def retire(self, version: ModelVersion) -> None:
        """Let a version copy that no longer takes requests finish the ones it has, and drop its batcher."""
        batcher = self._batchers.pop((version.model, version.version, id(version.servable)), None)
        if batcher is not None:
            await batcher.drain()

    async def close(self) -> None:
        """Stop every batcher (after the server has stopped taking calls)."""
        for batcher in self._batchers.values():
            await batcher.close()
        self._batchers.clear()

    def _batcher(self, version: AvailableVersion) -> Batcher:
        key = (version.model, version.version, id(version.servable))
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = Batcher(
                version.model,
                version.version,
                version.servable,
                version.config.batching,
                self._executor,
                self._workers,
                self.statistics.version(version.model, version.version),
            )
            self._batchers[key] = batcher
        return batcher
