"""SIGTERM: the server stops taking calls, finishes the ones in flight, and exits 0."""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from tensorgate.clients.client import TensorgateClient
from tensorgate.v1 import codec, inference_service_pb2_grpc
from tensorgate.v1.inference_service_pb2 import StreamPredictRequest

from conftest import start_server

X = np.full((64, 28, 28), 0.25, dtype=np.float32)


def stream_request(i: int) -> StreamPredictRequest:
    request = StreamPredictRequest(id=str(i), model="mnist")
    request.inputs["keras_tensor"].CopyFrom(codec.encode(X))
    return request


def test_sigterm_with_calls_in_flight_loses_none(repository: Path, tmp_path: Path) -> None:
    server = start_server(repository, tmp_path / "server.log", "--shutdown-grace-s", "30")
    outbox: queue.Queue[StreamPredictRequest | None] = queue.Queue()

    def requests() -> Iterator[StreamPredictRequest]:
        while (item := outbox.get()) is not None:
            yield item

    unary_codes: list[grpc.StatusCode] = []
    sigterm_sent = threading.Event()

    def hammer() -> None:
        with TensorgateClient(server.target) as client:
            while True:
                try:
                    client.predict_tensors("mnist", {"keras_tensor": X})
                    unary_codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    unary_codes.append(exc.code())
                    return
                if sigterm_sent.is_set() and time.monotonic() > stop_sending_at:
                    return

    try:
        with grpc.insecure_channel(server.target) as channel:
            responses = inference_service_pb2_grpc.InferenceServiceStub(channel).StreamPredict(requests(), timeout=60)
            for i in range(3):
                outbox.put(stream_request(i))
                assert next(responses).id == str(i)
            stop_sending_at = float("inf")
            threads = [threading.Thread(target=hammer) for _ in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            stop_sending_at = time.monotonic() + 2
            server.process.send_signal(signal.SIGTERM)
            sigterm_sent.set()
            for i in range(3, 8):  # the stream was accepted before SIGTERM: it keeps being served
                outbox.put(stream_request(i))
                response = next(responses)
                assert response.id == str(i) and not response.HasField("error")
            outbox.put(None)
            assert list(responses) == []
            for thread in threads:
                thread.join(30)
        assert server.process.wait(60) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert unary_codes.count(grpc.StatusCode.OK) > 4
    # Calls end in an answer, or, once the server has gone and the client's retries are spent, UNAVAILABLE.
    assert set(unary_codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, unary_codes
    log = server.log()
    assert '"message": "shutting down"' in log and '"message": "stopped"' in log


def test_serve_refuses_a_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="does not exist"):
        start_server(tmp_path / "missing", tmp_path / "server.log")
