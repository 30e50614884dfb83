"""Two replicas behind the real Envoy under steady REST and gRPC load: one is killed with SIGKILL, another
stopped with SIGTERM, the supervisor restarts both, and no client request fails; traffic spreads over both
replicas again afterwards. The replica serving a bulk stream is killed mid-stream: the client resumes the stream
and every example is answered once, in order."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData

from conftest import ServerProcess, mnist_inputs, start_server
from support.load import RETRYABLE, Load
from support.processes import wait_until_envoy_routes_to

STREAMS = "tensorgate_streams_in_flight"


@pytest.fixture(scope="module")
def replicated(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("replicated-repository")
    shutil.copytree(repository / "mnist", root / "mnist")
    log = tmp_path_factory.mktemp("replicated") / "stack.log"
    stack = start_server(root, log, "--drain-delay-s", "1.5", gateway=True, replicas=2)
    yield stack
    assert stack.stop() == 0, stack.log()[-3000:]


def replica_targets(stack: ServerProcess) -> list[str]:
    host, port = stack.target.rsplit(":", 1)
    return [f"{host}:{int(port) + i}" for i in range(2)]


def replica_metric(stack: ServerProcess, replica: int, name: str) -> float:
    """One unlabelled sample of replica ``replica``'s /metrics (on the stack's metrics port + ``replica``)."""
    host, port = stack.metrics_url.removesuffix("/metrics").rsplit(":", 1)
    return dataclasses.replace(stack, metrics_url=f"{host}:{int(port) + replica}/metrics").metric(name)


def envoy_stat(stack: ServerProcess, name: str) -> int:
    with urllib.request.urlopen(f"{stack.gateway_admin_url}/stats?filter=^{name}$", timeout=5) as response:
        return int(response.read().decode().split(":")[1])


def current_pids(stack: ServerProcess) -> dict[str, int]:
    """Replica name → pid, from the supervisor's "stack started" and "child restarted" log lines."""
    pids: dict[str, int] = {}
    for line in stack.log().splitlines():
        if '"stack started"' in line:
            pids.update(json.loads(line)["pids"])
        elif '"child restarted"' in line:
            record = json.loads(line)
            pids[record["child"]] = record["pid"]
    return pids


def wait_serving(target: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{target} not SERVING")


def wait_restarted(stack: ServerProcess, name: str, old_pid: int, target: str) -> None:
    deadline = time.monotonic() + 60
    while current_pids(stack).get(name) == old_pid:
        assert time.monotonic() < deadline, f"{name} was not restarted"
        time.sleep(0.2)
    wait_serving(target)


def requests_per_replica(stack: ServerProcess) -> Counter[str]:
    """Envoy's count of successful requests per upstream host (it survives replica restarts)."""
    with urllib.request.urlopen(f"{stack.gateway_admin_url}/clusters", timeout=5) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "tensorgate_grpc" and parts[2] == "rq_success":
            counts[parts[1]] = int(parts[3])
    return counts


def test_failover_without_loss(replicated: ServerProcess) -> None:
    stack = replicated
    targets = replica_targets(stack)
    for target in targets:
        wait_serving(target)
    channel = grpc.insecure_channel(stack.gateway_target)
    load = Load(channel, stack.gateway_url)
    try:
        time.sleep(2)
        pids = current_pids(stack)
        os.kill(pids["server-1"], signal.SIGKILL)
        wait_restarted(stack, "server-1", pids["server-1"], targets[1])
        time.sleep(2)
        os.kill(pids["server-0"], signal.SIGTERM)
        wait_restarted(stack, "server-0", pids["server-0"], targets[0])
        wait_until_envoy_routes_to(stack.gateway_admin_url, 2, stack.process)  # the restarted replica passes
        before = requests_per_replica(stack)
        time.sleep(3)
        after = requests_per_replica(stack)
    finally:
        outcomes = load.stop()
        channel.close()
    final_phase = {host: after[host] - before[host] for host in after}
    print(f"outcomes {dict(outcomes)}; per replica overall {dict(after)}; in the last 3 s {final_phase}")
    lost = {outcome: n for outcome, n in outcomes.items() if outcome != "OK" and outcome not in RETRYABLE}
    assert lost == {}, f"requests failed without a retryable status: {lost}"
    assert outcomes["OK"] > 100
    assert sum(n for outcome, n in outcomes.items() if outcome != "OK") == 0, dict(outcomes)
    assert len(final_phase) == 2 and min(final_phase.values()) > 0, final_phase  # both replicas serve again
    assert "child exited on its own; restarting it" in stack.log()


def test_a_stream_cut_by_a_dying_replica_is_resumed(replicated: ServerProcess, mnist: MnistData) -> None:
    """Envoy can only reset a stream whose replica dies after answering began (the client sees INTERNAL, "Stream
    removed (RST_STREAM (Received RST_STREAM with error code 2))"); the client resumes it on a new stream, which
    Envoy sends to the live replica, with the requests not answered yet."""
    stack = replicated
    targets = replica_targets(stack)
    for target in targets:
        wait_serving(target)
    x = mnist_inputs(mnist.x_test)
    with TensorgateClient(targets[0]) as direct:
        expected = np.concatenate([direct.predict("mnist", chunk) for chunk in np.array_split(x, 10)])
    pids = current_pids(stack)
    resets_before = envoy_stat(stack, "http.tensorgate.downstream_rq_tx_reset")
    killed = ""
    results: list[np.ndarray] = []
    with TensorgateClient(stack.gateway_target) as client:
        for result in client.stream_predict("mnist", iter(x), batch_size=10):  # 1,000 requests
            results.append(result)
            if len(results) == 2_000:  # 200 requests answered, 800 to go: the stream is open on one replica
                serving = [replica for replica in range(2) if replica_metric(stack, replica, STREAMS) == 1]
                assert len(serving) == 1, serving
                killed = f"server-{serving[0]}"
                os.kill(pids[killed], signal.SIGKILL)
    assert envoy_stat(stack, "http.tensorgate.downstream_rq_tx_reset") == resets_before + 1  # the cut stream
    assert len(results) == len(x)  # each example once (a lost or repeated one would shift all after it) ...
    np.testing.assert_allclose(np.stack(results), expected, atol=1e-5)  # ... in order, as a direct call answers
    assert (np.stack(results).argmax(1) == mnist.y_test).mean() >= 0.97
    wait_restarted(stack, killed, pids[killed], targets[int(killed[-1])])
