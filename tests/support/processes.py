"""Starting and stopping `tensorgate serve` (and other server) processes: one harness for tests/ and bench/.

Readiness is polled against the wall clock, never assumed after a fixed sleep: a replica is ready when its gRPC
health check says SERVING, a gateway when it answers HTTP and Envoy's health checks pass every replica. A process
that exits while it is awaited fails the wait at once, and a stack that does not start is stopped, servers and
Envoy included.

The tests import it as ``support.processes`` (tests/ is on ``sys.path`` through the rootdir conftest); bench/ puts
tests/ on ``sys.path`` to import the same module.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CLI = [sys.executable, "-m", "tensorgate.server.commands"]
POLL_S = 0.1
START_TIMEOUT_S = 120.0  # a cold start loads TensorFlow and warms every model up
# Envoy's clusters of server replicas (gateway/envoy.py): their gRPC ports and their v2 REST ports.
GATEWAY_CLUSTERS = ("tensorgate_grpc", "tensorgate_rest")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports, below the kernel's ephemeral range (32768 and up), so that
    no outgoing connection takes one of them between now and the server binding it."""
    rng = random.Random()
    while True:
        first = rng.randrange(20000, 32000 - count)
        try:
            for port in range(first, first + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    """Poll ``ready`` until it is true. RuntimeError when ``process`` exits first, TimeoutError after
    ``timeout_s`` seconds on the wall clock."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode} first")
        if ready():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        time.sleep(POLL_S)


def wait_until_serving(
    target: str,
    process: subprocess.Popen[bytes],
    credentials: grpc.ChannelCredentials | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Until the gRPC health check at ``target`` says SERVING (over TLS with ``credentials``)."""
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                return False
            return bool(status == health_pb2.HealthCheckResponse.SERVING)

        wait_until(serving, process, timeout_s, f"{target} SERVING")


def wait_until_http_ok(
    url: str, process: subprocess.Popen[bytes], context: ssl.SSLContext | None = None, timeout_s: float = 60
) -> None:
    """Until a GET of ``url`` answers 200."""

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_until(answers, process, timeout_s, f"{url} answering")


def wait_until_envoy_routes_to(
    admin_url: str, hosts: int, process: subprocess.Popen[bytes], timeout_s: float = 60
) -> None:
    """Until Envoy's active health checks pass ``hosts`` replicas in each server cluster (its admin /clusters)."""

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{admin_url}/clusters", timeout=2) as response:
                lines = response.read().decode().splitlines()
        except OSError:
            return False
        passing = [line for line in lines if line.endswith("::health_flags::healthy")]
        return all(sum(line.startswith(f"{name}::") for line in passing) >= hosts for name in GATEWAY_CLUSTERS)

    wait_until(healthy, process, timeout_s, f"Envoy routing to {hosts} healthy replica(s)")


@dataclass
class Stack:
    """A `tensorgate serve` process (supervisor, replicas, and Envoy with ``gateway_port``) and its ports.

    Replica i listens on ``port`` + i, serves metrics on ``metrics_port`` + i and, with ``health_port``, plaintext
    health checks on ``health_port`` + i. Ports that are not used are 0.
    """

    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    metrics_port: int
    gateway_port: int = 0
    gateway_admin_port: int = 0
    health_port: int = 0
    rest_port: int = 0  # the v2 REST API (replica i: + i)
    tfserving_rest_port: int = 0  # TF Serving's REST API (replica i: + i)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM and the exit status once the server has drained."""
        return stop(self.process, timeout_s)


def start_stack(
    repository: Path | str | None,
    log_path: Path,
    *extra: str,
    gateway: bool = False,
    replicas: int = 1,
    health_port: bool = False,
    credentials: grpc.ChannelCredentials | None = None,
    gateway_ssl: ssl.SSLContext | None = None,
    append_log: bool = False,
    environment: Mapping[str, str] | None = None,
) -> Stack:
    """`tensorgate serve` over ``repository`` (a directory or an s3:// URL) on free loopback ports, ready: every
    replica SERVING and, with ``gateway``, Envoy answering and routing to every replica.

    ``credentials`` and ``gateway_ssl`` are how to reach a server port or a gateway that speaks TLS; with
    ``health_port`` the replicas also answer plaintext health checks on ports of their own, which readiness uses.
    ``environment`` adds variables to the server's; a ``repository`` of None leaves the repository to them.
    Output goes to ``log_path`` (appended with ``append_log``); a stack that does not start is stopped (SIGTERM, so
    that the supervisor stops its servers and Envoy too; SIGKILL if it does not exit).
    """
    port, metrics_port = free_port_block(replicas), free_port_block(replicas)
    command = [*CLI, "serve", "--port", str(port)]
    if repository is not None:
        command += ["--model-repository", str(repository)]
    command += ["--metrics-port", str(metrics_port), "--replicas", str(replicas)]
    rest_port, tfserving_rest_port = free_port_block(replicas), free_port_block(replicas)
    command += ["--rest-port", str(rest_port), "--tfserving-rest-port", str(tfserving_rest_port)]
    stack_health_port = free_port_block(replicas) if health_port else 0
    if health_port:
        command += ["--health-port", str(stack_health_port)]
    gateway_port, admin_port = (free_port(), free_port()) if gateway else (0, 0)
    if gateway:
        command += ["--gateway-port", str(gateway_port), "--gateway-admin-port", str(admin_port)]
    else:
        command += ["--no-gateway"]
    env = {**os.environ, **(environment or {}), "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab" if append_log else "wb") as log:
        process = subprocess.Popen([*command, *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    stack = Stack(process, log_path, port, metrics_port, gateway_port, admin_port, stack_health_port)
    stack.rest_port, stack.tfserving_rest_port = rest_port, tfserving_rest_port
    try:
        for replica in range(replicas):
            if health_port:
                wait_until_serving(f"127.0.0.1:{stack_health_port + replica}", process)
            else:
                wait_until_serving(f"127.0.0.1:{port + replica}", process, credentials)
        if gateway:
            scheme = "https" if gateway_ssl else "http"
            wait_until_http_ok(f"{scheme}://127.0.0.1:{gateway_port}/openapi.json", process, gateway_ssl)
            wait_until_envoy_routes_to(f"http://127.0.0.1:{admin_port}", replicas, process)
    except Exception:
        try:
            stop(process, 30)  # SIGTERM: the supervisor takes its servers and Envoy down with it
        except subprocess.TimeoutExpired:
            kill(process)
        raise
    return stack


def stop(process: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    """SIGTERM (unless it has exited) and its exit status; TimeoutExpired when it does not exit in ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout_s)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL and reap."""
    process.kill()
    process.wait()


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to a process group (the process was started with ``start_new_session``), SIGKILL if it lingers,
    and SIGKILL to children that outlived their parent."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return
