"""Steady client load through Envoy that records every outcome: the failover tests' witness that no request was
lost (tests/test_scale_out.py with processes, tests/test_containers.py with containers)."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping

import grpc
import numpy as np

from tensorgate.v1 import codec, inference_service_pb2_grpc
from tensorgate.v1.inference_service_pb2 import PredictRequest

# Codes a client is told it may retry: anything else is a lost request.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE.name, grpc.StatusCode.RESOURCE_EXHAUSTED.name, "HTTP 503", "HTTP 429"}


class Load:
    """Closed-loop clients, two over gRPC on ``channel`` and two over REST at ``gateway_url``, each calling
    ``mnist``'s Predict with one image until stopped; ``headers`` (an API key) go with every call. With
    ``rate_per_s``, the four together call no more often than that (by the wall clock): under a key's rate limit."""

    def __init__(
        self,
        channel: grpc.Channel,
        gateway_url: str,
        headers: Mapping[str, str] | None = None,
        context: ssl.SSLContext | None = None,
        rate_per_s: float | None = None,
    ) -> None:
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        x = np.random.default_rng(0).random((1, 28, 28), np.float32)
        grpc_request = PredictRequest(model="mnist")
        codec.encode_into(x, grpc_request.inputs["keras_tensor"], raw=True)
        tensor = {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 28, 28], "floatValues": x.ravel().tolist()}
        rest_body = json.dumps({"inputs": {"keras_tensor": tensor}}).encode()
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        metadata = tuple(headers.items()) if headers else None

        def grpc_call() -> str:
            try:
                stub.Predict(grpc_request, timeout=30, metadata=metadata)  # no client-side retries: Envoy must
                return "OK"
            except grpc.RpcError as exc:
                return exc.code().name

        def rest_call() -> str:
            url = f"{gateway_url}/v1/models/mnist:predict"
            request = urllib.request.Request(url, data=rest_body, headers=dict(headers or {}))
            try:
                with urllib.request.urlopen(request, timeout=30, context=context) as response:
                    return "OK" if len(json.loads(response.read())["outputs"]["output_0"]["floatValues"]) == 10 else "?"
            except urllib.error.HTTPError as exc:
                return f"HTTP {exc.code}"
            except OSError as exc:  # a connection Envoy refused or reset: lost
                return type(exc).__name__

        calls: list[Callable[[], str]] = [grpc_call, grpc_call, rest_call, rest_call]
        self._interval_s = len(calls) / rate_per_s if rate_per_s else 0.0
        self._threads = [threading.Thread(target=self._run, args=(call,)) for call in calls]
        for thread in self._threads:
            thread.start()

    def _run(self, call: Callable[[], str]) -> None:
        next_call = time.monotonic()
        while not self._stop.is_set():
            outcome = call()
            with self._lock:
                self.outcomes[outcome] += 1
            next_call += self._interval_s
            self._stop.wait(max(0.0, next_call - time.monotonic()))

    def stop(self) -> Counter[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.outcomes

    def failed(self) -> dict[str, int]:
        """The outcomes that were not answers: retryable or not, a failure counts."""
        with self._lock:
            return {outcome: n for outcome, n in self.outcomes.items() if outcome != "OK"}
