"""Prometheus metrics of the serving path, served on the server's metrics port at /metrics.

Labels are bounded: model names and version numbers come from the repository,
reasons from a fixed set; never a request id or user input.

With several workers (``--workers``) the supervisor gives every worker of a
replica the same ``PROMETHEUS_MULTIPROC_DIR``: prometheus_client then keeps
each worker's values in a file of its own there, and whichever worker answers
a scrape (they share the metrics port) sums every worker's files, so counters
and histograms add up across workers and survive a worker's restart. Gauges
say how they combine (``multiprocess_mode``; ignored by a single process).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

BATCH_SIZE = Histogram(
    "tensorgate_batch_size",
    "Examples per model call, padding excluded: how well requests are merged.",
    ["model", "version"],
    buckets=BATCH_SIZE_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "tensorgate_queue_depth",
    "Requests waiting in a model's batching queue.",
    ["model", "version"],
    multiprocess_mode="livesum",
)
QUEUE_SECONDS = Histogram(
    "tensorgate_queue_duration_seconds",
    "Time a request waited in the batching queue before its batch started.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
COMPUTE_SECONDS = Histogram(
    "tensorgate_compute_duration_seconds",
    "Time of one model call on a merged batch.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
MODEL_EXAMPLES = Counter(
    "tensorgate_model_examples_total", "Examples that reached the model (padding excluded).", ["model", "version"]
)
DROPPED = Counter(
    "tensorgate_requests_dropped_total",
    "Requests that never reached the model: queue full (overload), cancelled by the client, or expired deadline.",
    ["model", "version", "reason"],
)

LOAD_SECONDS = Histogram(
    "tensorgate_model_load_duration_seconds",
    "Time to load and warm up a model version.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
LOAD_FAILURES = Counter(
    "tensorgate_model_load_failures_total", "Versions (or configurations) that failed to load.", ["model"]
)


REQUESTS = Counter(
    "tensorgate_requests_total",
    "Unary RPCs and StreamPredict messages answered, by model, answering version, method and gRPC status code.",
    ["model", "version", "method", "code"],
)
REQUEST_SECONDS = Histogram(
    "tensorgate_request_duration_seconds",
    "Time from a unary RPC (or stream message) arriving to its answer.",
    ["method"],
    buckets=LATENCY_BUCKETS,
)
REJECTED = Counter(
    "tensorgate_requests_rejected_total",
    "Requests refused before model work, by reason: invalid, overload, rate_limited, unauthenticated, unauthorized.",
    ["reason"],
)
STREAMS_IN_FLIGHT = Gauge(
    "tensorgate_streams_in_flight", "StreamPredict streams open now.", multiprocess_mode="livesum"
)
QUEUE_CAPACITY = Gauge(
    "tensorgate_queue_capacity",
    "max_queue_size of a model's batching queue (for saturation).",
    ["model", "version"],
    multiprocess_mode="livesum",  # summed like the depth, so that depth / capacity stays the share of all queues
)
UNKNOWN_MODEL = "_unknown"  # label for names that are not in the repository: labels never carry raw user input


class ModelStateCollector(Collector):
    """``tensorgate_model_versions{model,state}``: how many versions of each model are in each state, read from
    the registry at scrape time.

    With several workers this is the view of the worker answering the scrape: every worker loads the same
    repository, so their views differ only while one is (re)loading, and a sum would count each version once
    per worker.
    """

    def __init__(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("tensorgate_model_versions", "Model versions by state.", labels=["model", "state"])
        for (model, state), count in Counter_(self._states()).items():
            family.add_metric([model, state], count)
        yield family


class ModelRuntimeCollector(Collector):
    """``tensorgate_model_runtime_info{model,version,runtime} 1`` per available version: what runs it
    (tensorflow or tflite), read from the registry at scrape time, so an unloaded version leaves no series."""

    def __init__(self, runtimes: Callable[[], Iterable[tuple[str, str, str]]]) -> None:
        self._runtimes = runtimes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tensorgate_model_runtime_info",
            "Runtime serving each available model version (tensorflow or tflite).",
            labels=["model", "version", "runtime"],
        )
        for labels in self._runtimes():
            family.add_metric(list(labels), 1)
        yield family


class QuietHandler(WSGIRequestHandler):
    """Answers scrapes without writing an access line per scrape to stderr (one line per scrape would drown the log)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def metrics_registry(
    states: Callable[[], Iterable[tuple[str, str]]],
    runtimes: Callable[[], Iterable[tuple[str, str, str]]],
    workers: int,
) -> CollectorRegistry:
    """What /metrics serves: this process's metrics, or with several workers every worker's (from the
    multiprocess directory; no process_* metrics then, as they would describe the answering worker only), and
    the model states and runtimes of this process."""
    if workers == 1:
        registry = REGISTRY
    else:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    registry.register(ModelStateCollector(states))
    registry.register(ModelRuntimeCollector(runtimes))
    return registry


def start_metrics_server(host: str, port: int, registry: CollectorRegistry, shared: bool) -> int:
    """Serve /metrics over HTTP on a background thread; returns the bound port (``port`` 0 picks one).

    ``shared``: bind with SO_REUSEPORT, so that the workers of a replica serve one metrics port.
    """

    class Server(ThreadingWSGIServer):
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        allow_reuse_port = shared

    server = make_server(host, port, make_wsgi_app(registry), Server, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    bound = server.server_address[1]
    log.info("metrics listening", extra={"fields": {"address": f"{host}:{bound}", "path": "/metrics"}})
    return int(bound)
