"""``--workers 2``: two server processes on one gRPC port (SO_REUSEPORT) under one supervisor. Connections spread
over both, the metrics port sums both, a killed worker is restarted, SIGTERM drains both with no failed request;
a single process still refuses to share its port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData
from tensorgate.gateway.supervisor import server_processes
from tensorgate.server.config import ConfigError, load_config

from conftest import CLI, ServerProcess, free_port, mnist_inputs, start_server

DEADLINE_S = 120.0


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def log_records(server: ServerProcess) -> list[dict[str, Any]]:
    """The JSON log lines of the supervisor and its workers (TensorFlow's own lines are skipped)."""
    records = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def worker_pids(server: ServerProcess) -> dict[str, int]:
    """Worker name → current pid, from the supervisor's "stack started" and "child restarted" lines."""
    pids: dict[str, int] = {}
    for record in log_records(server):
        if record["message"] == "stack started":
            pids.update(record["pids"])
        elif record["message"] == "child restarted":
            pids[record["child"]] = record["pid"]
    return pids


def metrics_dir(server: ServerProcess) -> Path:
    record = next(r for r in log_records(server) if r["message"] == "stack started")
    (directory,) = record["metrics_dirs"]
    return Path(directory)


def times_logged(server: ServerProcess, message: str, worker: int) -> int:
    return sum(1 for r in log_records(server) if r["message"] == message and r.get("worker") == worker)


def wait_all_serving(server: ServerProcess, times: int = 1) -> None:
    """Each worker has loaded its models and reports SERVING (``times``: counting its restarts)."""
    wait_for(lambda: all(times_logged(server, "serving", w) >= times for w in range(2)), "both workers serving")


def predict_requests_by_pid(server: ServerProcess) -> Counter[int]:
    """Predict calls answered by each worker process, from its own file in the multiprocess directory."""
    counts: Counter[int] = Counter()
    for path in metrics_dir(server).glob("counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        for family in MultiProcessCollector.merge([str(path)]):
            for sample in family.samples:
                if sample.name == "tensorgate_requests_total" and sample.labels["method"] == "predict":
                    counts[pid] += int(sample.value)
    return counts


def scraped_predict_requests(server: ServerProcess) -> int:
    """Predict calls of every worker, as one scrape of the shared metrics port reports them."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tensorgate_requests_total" and sample.labels["method"] == "predict"
    )


@pytest.fixture(scope="module")
def mnist_only(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers-repository")
    shutil.copytree(repository / "mnist", root / "mnist")
    return root


@pytest.fixture(scope="module")
def health_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def workers(mnist_only: Path, health_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("workers") / "workers.log"
    flags = ["--workers", "2", "--model-workers", "1", "--intra-op-threads", "1", "--health-port", str(health_port)]
    server = start_server(mnist_only, log, *flags)
    wait_all_serving(server)
    yield server
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture(scope="module")
def batch(server: ServerProcess, mnist: MnistData) -> tuple[np.ndarray, np.ndarray]:
    """Test images and the classes a single-process server gives them: what every worker must answer."""
    x = mnist_inputs(mnist.x_test[:16])
    with TensorgateClient(server.target) as client:
        return x, client.predict_tensors("mnist", {"keras_tensor": x})["output_0"].argmax(1)


def predict_until_both_served(
    server: ServerProcess, batch: tuple[np.ndarray, np.ndarray], channels: int, clients_per_round: int
) -> int:
    """New clients, each sending a few predictions over its channels, until both current workers answered some
    of them (each connection lands on one worker, chosen by the kernel); returns the calls made."""
    x, classes = batch
    pids = set(worker_pids(server).values())
    before = predict_requests_by_pid(server)
    sent = 0
    deadline = time.monotonic() + DEADLINE_S
    while True:
        for _ in range(clients_per_round):
            with TensorgateClient(server.target, channels=channels) as client:
                for _ in range(4 * channels):
                    outputs = client.predict_tensors("mnist", {"keras_tensor": x})
                    np.testing.assert_array_equal(outputs["output_0"].argmax(1), classes)
                    sent += 1
        served = {pid for pid, n in predict_requests_by_pid(server).items() if n > before[pid]}
        if pids <= served:
            return sent
        assert time.monotonic() < deadline, f"only {served} of {pids} answered"


def test_calls_spread_over_both_workers_and_metrics_add_up(
    workers: ServerProcess, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    before = scraped_predict_requests(workers)
    sent = predict_until_both_served(workers, batch, channels=4, clients_per_round=1)
    sent += predict_until_both_served(workers, batch, channels=1, clients_per_round=4)
    wait_for(lambda: scraped_predict_requests(workers) - before >= sent, "the scrape to count every call")
    # Every scrape (a new connection each, answered by either worker) reports the sum over both workers.
    for _ in range(6):
        assert scraped_predict_requests(workers) - before == sent
    assert sum(predict_requests_by_pid(workers).values()) == scraped_predict_requests(workers)


def test_workers_share_the_health_port(workers: ServerProcess, health_port: int) -> None:
    for _ in range(6):  # a new connection each: either worker answers
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_killed_worker_is_restarted_and_serves(workers: ServerProcess, batch: tuple[np.ndarray, np.ndarray]) -> None:
    old_pid = worker_pids(workers)["server-w1"]
    restarts = times_logged(workers, "serving", 1)
    before = scraped_predict_requests(workers)
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: worker_pids(workers)["server-w1"] != old_pid, "the supervisor to restart the worker")
    wait_for(lambda: times_logged(workers, "serving", 1) > restarts, "the restarted worker to serve")
    sent = predict_until_both_served(workers, batch, channels=4, clients_per_round=1)
    assert worker_pids(workers)["server-w1"] in predict_requests_by_pid(workers)
    # The killed worker's counts stay in the sums.
    wait_for(lambda: scraped_predict_requests(workers) - before >= sent, "the scrape to count every call")
    assert scraped_predict_requests(workers) - before == sent
    assert "child exited on its own; restarting it" in workers.log()


def descendants(pid: int) -> set[int]:
    """Every process under ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


class Load:
    """Threads looping predictions, each through a client with several channels (a new client every few
    calls, so that connections land on every worker), recording every outcome until stopped."""

    def __init__(self, server: ServerProcess, batch: tuple[np.ndarray, np.ndarray]) -> None:
        self.outcomes: Counter[str] = Counter()
        self._server, self._batch = server, batch
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(3)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        x, classes = self._batch
        while not self._stop.is_set():
            with TensorgateClient(self._server.target, channels=3) as client:
                for _ in range(12):
                    if self._stop.is_set():
                        return
                    try:
                        outputs = client.predict_tensors("mnist", {"keras_tensor": x})
                        outcome = "OK" if (outputs["output_0"].argmax(1) == classes).all() else "wrong answer"
                    except grpc.RpcError as exc:
                        outcome = exc.code().name
                    with self._lock:
                        self.outcomes[outcome] += 1

    def stop(self) -> Counter[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.outcomes


def test_sigterm_under_load_drains_every_worker(
    mnist_only: Path, tmp_path: Path, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    # The drain delay is what a load balancer gets to see NOT_SERVING and stop sending; here the load stops
    # once every worker has logged that it is shutting down.
    server = start_server(
        mnist_only, tmp_path / "workers.log", "--workers", "2", "--model-workers", "1", "--drain-delay-s", "5"
    )
    load: Load | None = None
    try:
        wait_all_serving(server)
        processes = descendants(server.process.pid)
        assert set(worker_pids(server).values()) <= processes
        before = predict_requests_by_pid(server)
        load = Load(server, batch)
        pids = set(worker_pids(server).values())
        wait_for(
            lambda: (
                {pid for pid, n in predict_requests_by_pid(server).items() if n > before[pid]} >= pids
                and load.outcomes["OK"] >= 100
            ),
            "the load to reach both workers",
        )
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: all(times_logged(server, "shutting down", w) for w in range(2)), "both workers draining")
        outcomes = load.stop()
        assert server.process.wait(DEADLINE_S) == 0, server.log()[-3000:]
    finally:
        if load is not None:
            load.stop()
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    print(f"outcomes {dict(outcomes)}")
    assert set(outcomes) == {"OK"}, dict(outcomes)
    assert all(times_logged(server, "stopped", w) == 1 for w in range(2))
    assert {pid for pid in processes if Path(f"/proc/{pid}").exists()} == set()


def test_single_process_does_not_share_its_port(server: ServerProcess, repository: Path, tmp_path: Path) -> None:
    port = server.target.rsplit(":", 1)[1]
    command = [*CLI, "serve", "--model-repository", str(repository), "--no-gateway", "--port", port]
    command += ["--metrics-port", str(free_port())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S)
    assert result.returncode != 0
    assert "Failed to bind" in result.stderr + result.stdout


def test_workers_setting() -> None:
    assert load_config(flags={"workers": "auto"}).workers == len(os.sched_getaffinity(0))
    assert load_config(environ={"TENSORGATE_WORKERS": "3"}).workers == 3
    assert load_config().workers == 1
    with pytest.raises(ConfigError, match="workers"):
        load_config(flags={"workers": "0"})
    with pytest.raises(ConfigError, match="port 0"):
        load_config(flags={"workers": "2", "port": "0"})


def test_client_channels_must_be_positive() -> None:
    with pytest.raises(ValueError, match="channels"):
        TensorgateClient("127.0.0.1:1", channels=0)


def test_replicas_and_workers_compose(tmp_path: Path) -> None:
    """Each replica's port is shared by its workers, which share one metrics directory per replica."""
    config = load_config(flags={"replicas": "2", "workers": "2", "port": "9000", "metrics_port": "9100"})
    processes = server_processes(config, [], tmp_path)
    assert [p.name for p in processes] == ["server-0-w0", "server-0-w1", "server-1-w0", "server-1-w1"]
    ports = [p.argv[p.argv.index("--port") + 1] for p in processes]
    assert ports == ["9000", "9000", "9001", "9001"]
    assert [p.argv[-1] for p in processes] == ["0", "1", "0", "1"]  # --worker-index
    assert [p.metrics_dir for p in processes] == [tmp_path / "metrics-0"] * 2 + [tmp_path / "metrics-1"] * 2
    single = server_processes(load_config(flags={"replicas": "2"}), [], tmp_path / "single")
    assert [(p.name, p.metrics_dir) for p in single] == [("server-0", None), ("server-1", None)]
