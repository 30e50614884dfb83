"""Runs the gRPC server processes, and Envoy in front of them, as child processes of one supervisor.

Replicas and workers compose. Replica i listens on ``port + i`` (metrics on
``metrics_port + i``, health on ``health_port + i``); Envoy balances over the
replicas with active health checks, outlier detection and retries (see
``gateway/envoy.py``). Each replica is ``workers`` processes that bind
its ports with SO_REUSEPORT, so the kernel spreads its connections over them;
they write their metrics to one multiprocess directory per replica, and any of
them answers a scrape with the sum of all (see ``metrics.py``). Without Envoy
(``gateway`` false) the supervisor runs only to keep several workers.

A server process that exits on its own is restarted, and the restart is logged
as an error; one that keeps dying right after its start, or Envoy dying, stops
the whole stack with a non-zero status. SIGTERM or SIGINT drains every server
process at once (each reports NOT_SERVING, waits ``drain_delay_s``, finishes
its calls), waits for all of them, then stops Envoy.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from tensorgate.gateway.envoy import envoy_binary, render_envoy_config
from tensorgate.server.config import ServerConfig

log = logging.getLogger(__name__)
POLL_S = 0.1
CRASH_WINDOW_S = 30.0  # a server process that exits this soon after starting ...
MAX_QUICK_CRASHES = 3  # ... this many times in a row is broken, not unlucky: the stack stops
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class ServerProcess:
    """One server child process (a replica, or a worker of one) and how to start it again."""

    name: str
    argv: list[str]
    metrics_dir: Path | None = None  # the replica's multiprocess directory, when it has several workers
    process: subprocess.Popen[bytes] = field(init=False)
    started: float = 0.0
    quick_crashes: int = 0

    def start(self) -> None:
        env = None if self.metrics_dir is None else {**os.environ, MULTIPROC_ENV: str(self.metrics_dir)}
        self.process = subprocess.Popen(self.argv, env=env)
        self.started = time.monotonic()


def replica_argv(config: ServerConfig, server_args: list[str], index: int) -> list[str]:
    """The serve command of replica ``index``: the stack's flags, then its own ports (later flags win)."""
    argv = [sys.executable, "-m", "tensorgate.server.commands", "serve", *server_args, "--no-gateway"]
    argv += ["--replicas", "1", "--port", str(config.port + index), "--metrics-port", str(config.metrics_port + index)]
    if config.health_port:
        argv += ["--health-port", str(config.health_port + index)]
    for flag, port in (("--rest-port", config.rest_port), ("--tfserving-rest-port", config.tfserving_rest_port)):
        argv += [flag, str(port + index if port else 0)]
    return argv


def server_processes(config: ServerConfig, server_args: list[str], tmp: Path) -> list[ServerProcess]:
    """Every server process of the stack: ``workers`` per replica, named server[-<replica>][-w<worker>]."""
    processes = []
    for replica in range(config.replicas):
        argv = replica_argv(config, server_args, replica)
        name = "server" if config.replicas == 1 else f"server-{replica}"
        if config.workers == 1:
            processes.append(ServerProcess(name, argv))
            continue
        metrics_dir = tmp / f"metrics-{replica}"
        metrics_dir.mkdir()
        for worker in range(config.workers):
            worker_argv = [*argv, "--workers", str(config.workers), "--worker-index", str(worker)]
            processes.append(ServerProcess(f"{name}-w{worker}", worker_argv, metrics_dir))
    return processes


def supervise(config: ServerConfig, server_args: list[str]) -> int:
    """Start the server processes and Envoy, keep them running, and return the exit status of the whole stack."""
    stop_requested = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with tempfile.TemporaryDirectory(prefix="tensorgate-") as tmp:
        servers = server_processes(config, server_args, Path(tmp))
        for server in servers:
            server.start()
        envoy = start_envoy(config, Path(tmp)) if config.gateway else None
        gateway = [] if envoy is None else [envoy]
        _log_started(config, servers, envoy)
        while not stop_requested:
            if envoy is not None and envoy.poll() is not None:
                log.error("envoy exited on its own", extra={"fields": {"code": envoy.returncode}})
                _stop_all([s.process for s in servers] + gateway)
                return 1
            for server in servers:
                if server.process.poll() is not None and not _restart(server):
                    _stop_all([s.process for s in servers] + gateway)
                    return 1
            time.sleep(POLL_S)
        log.info("draining the servers" + (", then stopping envoy" if envoy else ""))
        for server in servers:
            server.process.send_signal(signal.SIGTERM)
        codes = [server.process.wait() for server in servers]
        fields: dict[str, object] = {"servers": codes}
        if envoy is not None:
            envoy.send_signal(signal.SIGTERM)
            fields["envoy"] = envoy.wait()
        log.info("stack stopped", extra={"fields": fields})
        return 0 if all(code == 0 for code in codes) else 1


def start_envoy(config: ServerConfig, tmp: Path) -> subprocess.Popen[bytes]:
    """Envoy in front of the replicas, its configuration rendered into ``tmp``."""
    envoy_config = tmp / "envoy.json"
    envoy_config.write_text(render_envoy_config(config))
    # --file-flush-interval-msec: access log lines reach stdout within half a second.
    envoy_args = ["-c", str(envoy_config), "--disable-hot-restart", "--log-level", "warn"]
    return subprocess.Popen([envoy_binary(), *envoy_args, "--file-flush-interval-msec", "500"])


def _restart(server: ServerProcess) -> bool:
    """Start a server process that exited on its own again; False when it keeps crashing right after its start."""
    code = server.process.returncode
    if server.metrics_dir is not None:  # its gauges leave the sums; its counters and histograms stay in them
        mark_process_dead(server.process.pid, str(server.metrics_dir))
    quick = time.monotonic() - server.started < CRASH_WINDOW_S
    server.quick_crashes = server.quick_crashes + 1 if quick else 0
    fields = {"child": server.name, "code": code, "quick_crashes": server.quick_crashes}
    if server.quick_crashes >= MAX_QUICK_CRASHES:
        log.error("child exited on its own, again right after its start: stopping", extra={"fields": fields})
        return False
    log.error("child exited on its own; restarting it", extra={"fields": fields})
    server.start()
    log.info("child restarted", extra={"fields": {"child": server.name, "pid": server.process.pid}})
    return True


def _log_started(config: ServerConfig, servers: list[ServerProcess], envoy: subprocess.Popen[bytes] | None) -> None:
    replicas = range(config.replicas)
    pids = {server.name: server.process.pid for server in servers} | ({"envoy": envoy.pid} if envoy else {})
    fields: dict[str, object] = {
        "grpc": [f"{config.host}:{config.port + i}" for i in replicas],
        "metrics": [f"http://{config.host}:{config.metrics_port + i}/metrics" for i in replicas],
        "v2_rest": [f"{config.host}:{config.rest_port + i}" for i in replicas] if config.rest_port else [],
        "tfserving_rest": [f"{config.host}:{config.tfserving_rest_port + i}" for i in replicas]
        if config.tfserving_rest_port
        else [],
        "workers": config.workers,
        "pids": pids,
    }
    if config.workers > 1:
        fields["metrics_dirs"] = sorted({str(server.metrics_dir) for server in servers})
    if envoy is not None:
        base = f"{'https' if config.gateway_tls.enabled else 'http'}://{config.host}:{config.gateway_port}"
        fields |= {
            "gateway": f"{config.host}:{config.gateway_port} (gRPC and REST)",
            "rest": f"{base}/v1/models",
            "docs": f"{base}/docs",
            "openapi": f"{base}/openapi.json",
        }
    log.info("stack started", extra={"fields": fields})


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
