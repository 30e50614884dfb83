"""The process harness: readiness is polled on the wall clock, fails fast when the process exits, and times out."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from support.processes import free_port, stop, wait_until, wait_until_serving


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_wait_until_returns_once_ready(sleeper: subprocess.Popen[bytes]) -> None:
    ready_at = time.monotonic() + 0.3
    wait_until(lambda: time.monotonic() > ready_at, sleeper, timeout_s=30, what="ready")
    assert time.monotonic() > ready_at


def test_wait_until_fails_at_once_when_the_process_exits() -> None:
    process = subprocess.Popen(["sh", "-c", "exit 3"])
    process.wait()
    with pytest.raises(RuntimeError, match=r"^server: the process exited with 3 first$"):
        wait_until(lambda: False, process, timeout_s=30, what="server")


def test_wait_until_times_out_on_the_wall_clock(sleeper: subprocess.Popen[bytes]) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^server: not within 0\.3 s$"):
        wait_until(lambda: False, sleeper, timeout_s=0.3, what="server")
    assert time.monotonic() - started >= 0.3


def test_wait_until_serving_polls_the_health_check(sleeper: subprocess.Popen[bytes]) -> None:
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    server = grpc.server(ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    try:
        with pytest.raises(TimeoutError):
            wait_until_serving(f"127.0.0.1:{port}", sleeper, timeout_s=0.5)
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        wait_until_serving(f"127.0.0.1:{port}", sleeper, timeout_s=30)
    finally:
        server.stop(0)


def test_stop_terminates_and_returns_the_exit_status(sleeper: subprocess.Popen[bytes]) -> None:
    assert stop(sleeper) == -signal.SIGTERM
    assert stop(sleeper) == -signal.SIGTERM  # stopping a stopped process only reads its status
