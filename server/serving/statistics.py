"""Cumulative inference statistics per model version, in Triton's terms, for any protocol to serve.

Triton's ``ModelStatistics`` (and its REST ``/v2/models/{m}/stats``) reports, per model version: requests that
succeeded and failed (count and total duration), and for each request its time queued and its share of the batch
it ran in (preparing the inputs, the model call, handing out the outputs); the examples inferred, the model calls
(executions), the time of the last inference, and the same compute durations per batch size. The batcher and the
data plane feed one ``VersionStatistics`` per version at the very points where they feed the Prometheus metrics,
with a few integer additions per request and per batch; readers copy it out with ``snapshot``. Everything runs on
the event loop, so no lock is needed. Counts live as long as the server and survive reloads of a version.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Duration:
    """A count of events and their total duration in nanoseconds (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0


@dataclass
class BatchStatistics:
    """The model calls of one batch size: how many, and their compute durations (each ``count`` is the calls)."""

    batch_size: int
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class Snapshot:
    """A copy of one version's statistics at one moment (Triton's ModelStatistics, without its transport)."""

    model: str
    version: int
    last_inference_ms: int  # milliseconds since the epoch of the last successful request; 0 when none
    inference_count: int  # examples of the successful requests (a request of batch 8 counts 8)
    execution_count: int  # model calls
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration  # per request: each request of a batch counts the batch's whole duration, as Triton's
    compute_infer: Duration
    compute_output: Duration
    batches: list[BatchStatistics]  # by batch size, ascending


class VersionStatistics:
    """The counters of one model version. Durations are in nanoseconds."""

    __slots__ = (
        "_batches",
        "_compute_infer_ns",
        "_compute_input_ns",
        "_compute_output_ns",
        "_computed",
        "_executions",
        "_failed",
        "_failed_ns",
        "_inferences",
        "_last_inference_ns",
        "_queue_ns",
        "_queued",
        "_succeeded",
        "_succeeded_ns",
        "model",
        "version",
    )

    def __init__(self, model: str, version: int) -> None:
        self.model = model
        self.version = version
        self._succeeded = self._succeeded_ns = self._failed = self._failed_ns = 0
        self._queued = self._queue_ns = 0
        self._computed = self._compute_input_ns = self._compute_infer_ns = self._compute_output_ns = 0
        self._inferences = self._executions = self._last_inference_ns = 0
        # batch size → [calls, input ns, infer ns, output ns]; bounded by the largest batch size
        self._batches: dict[int, list[int]] = {}

    def succeeded(self, examples: int, duration_ns: int, now_ns: int) -> None:
        """A request of ``examples`` answered after ``duration_ns``, at ``now_ns`` (``time.time_ns()``)."""
        self._succeeded += 1
        self._succeeded_ns += duration_ns
        self._inferences += examples
        self._last_inference_ns = now_ns

    def failed(self, duration_ns: int) -> None:
        """A request that failed (refused, expired, cancelled or broken) after ``duration_ns``."""
        self._failed += 1
        self._failed_ns += duration_ns

    def queued(self, requests: int, total_ns: int) -> None:
        """``requests`` left the queue for a batch after waiting ``total_ns`` in all."""
        self._queued += requests
        self._queue_ns += total_ns

    def executed(self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One model call on ``batch_size`` examples from ``requests`` requests, with its three durations."""
        self._executions += 1
        self._computed += requests
        self._compute_input_ns += requests * input_ns
        self._compute_infer_ns += requests * infer_ns
        self._compute_output_ns += requests * output_ns
        batch = self._batches.get(batch_size)
        if batch is None:
            batch = self._batches[batch_size] = [0, 0, 0, 0]
        batch[0] += 1
        batch[1] += input_ns
        batch[2] += infer_ns
        batch[3] += output_ns

    def snapshot(self) -> Snapshot:
        """A copy of the counters now."""
        return Snapshot(
            model=self.model,
            version=self.version,
            last_inference_ms=self._last_inference_ns // 1_000_000,
            inference_count=self._inferences,
            execution_count=self._executions,
            success=Duration(self._succeeded, self._succeeded_ns),
            fail=Duration(self._failed, self._failed_ns),
            queue=Duration(self._queued, self._queue_ns),
            compute_input=Duration(self._computed, self._compute_input_ns),
            compute_infer=Duration(self._computed, self._compute_infer_ns),
            compute_output=Duration(self._computed, self._compute_output_ns),
            batches=[
                BatchStatistics(size, Duration(calls, input_ns), Duration(calls, infer_ns), Duration(calls, output_ns))
                for size, (calls, input_ns, infer_ns, output_ns) in sorted(self._batches.items())
            ],
        )


class Statistics:
    """Every version's statistics, created on first use."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, int], VersionStatistics] = {}

    def version(self, model: str, version: int) -> VersionStatistics:
        """The counters of ``model`` ``version`` (zero when it has served nothing yet)."""
        key = (model, version)
        found = self._versions.get(key)
        if found is None:
            found = self._versions[key] = VersionStatistics(model, version)
        return found

    def snapshot(self, model: str, version: int) -> Snapshot:
        """A copy of one version's counters now."""
        return self.version(model, version).snapshot()
