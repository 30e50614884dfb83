"""Runs the gRPC server replicas and Envoy as child processes of one supervisor.

Replica i listens on ``port + i`` (metrics on ``metrics_port + i``, health on
``health_port + i``); Envoy balances over them with active health checks,
outlier detection and retries (see ``gateway/envoy.yaml.tmpl``). A replica
that exits on its own is restarted, and the restart is logged as an error; a
replica that keeps dying right after its start, or Envoy dying, stops the
whole stack with a non-zero status. SIGTERM or SIGINT drains every replica
first (Envoy keeps proxying their in-flight calls), then stops Envoy.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from tensorgate.server.config import ServerConfig
from tensorgate.server.gateway import envoy_binary, render_envoy_config

log = logging.getLogger(__name__)
POLL_S = 0.1
CRASH_WINDOW_S = 30.0  # a replica that exits this soon after starting ...
MAX_QUICK_CRASHES = 3  # ... this many times in a row is broken, not unlucky: the stack stops


@dataclass
class Replica:
    """One server child process and how to start it again."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] = field(init=False)
    started: float = 0.0
    quick_crashes: int = 0

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv)
        self.started = time.monotonic()


def replica_argv(config: ServerConfig, server_args: list[str], index: int) -> list[str]:
    """The serve command of replica ``index``: the stack's flags, then its own ports (later flags win)."""
    argv = [sys.executable, "-m", "tensorgate.clients.cli", "serve", *server_args, "--gateway", "false"]
    argv += ["--replicas", "1", "--port", str(config.port + index), "--metrics-port", str(config.metrics_port + index)]
    if config.health_port:
        argv += ["--health-port", str(config.health_port + index)]
    return argv


def supervise(config: ServerConfig, server_args: list[str]) -> int:
    """Start the replicas and Envoy, keep the replicas running, and return the exit status of the whole stack."""
    stop_requested = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with tempfile.TemporaryDirectory(prefix="tensorgate-envoy-") as tmp:
        envoy_config = Path(tmp) / "envoy.yaml"
        envoy_config.write_text(render_envoy_config(config))
        replicas = [
            Replica("server" if config.replicas == 1 else f"server-{i}", replica_argv(config, server_args, i))
            for i in range(config.replicas)
        ]
        for replica in replicas:
            replica.start()
        # --file-flush-interval-msec: access log lines reach stdout within half a second.
        envoy_args = ["-c", str(envoy_config), "--disable-hot-restart", "--log-level", "warn"]
        envoy = subprocess.Popen([envoy_binary(), *envoy_args, "--file-flush-interval-msec", "500"])
        _log_started(config, replicas, envoy)
        while not stop_requested:
            if envoy.poll() is not None:
                log.error("envoy exited on its own", extra={"fields": {"code": envoy.returncode}})
                _stop_all([r.process for r in replicas] + [envoy])
                return 1
            for replica in replicas:
                if replica.process.poll() is not None and not _restart(replica):
                    _stop_all([r.process for r in replicas] + [envoy])
                    return 1
            time.sleep(POLL_S)
        log.info("draining the servers, then stopping envoy")
        for replica in replicas:
            replica.process.send_signal(signal.SIGTERM)
        codes = [replica.process.wait() for replica in replicas]
        envoy.send_signal(signal.SIGTERM)
        envoy_code = envoy.wait()
        log.info("stack stopped", extra={"fields": {"servers": codes, "envoy": envoy_code}})
        return 0 if all(code == 0 for code in codes) else 1


def _restart(replica: Replica) -> bool:
    """Start a replica that exited on its own again; False when it keeps crashing right after its start."""
    code = replica.process.returncode
    quick = time.monotonic() - replica.started < CRASH_WINDOW_S
    replica.quick_crashes = replica.quick_crashes + 1 if quick else 0
    fields = {"child": replica.name, "code": code, "quick_crashes": replica.quick_crashes}
    if replica.quick_crashes >= MAX_QUICK_CRASHES:
        log.error("child exited on its own, again right after its start: stopping", extra={"fields": fields})
        return False
    log.error("child exited on its own; restarting it", extra={"fields": fields})
    replica.start()
    log.info("child restarted", extra={"fields": {"child": replica.name, "pid": replica.process.pid}})
    return True


def _log_started(config: ServerConfig, replicas: list[Replica], envoy: subprocess.Popen[bytes]) -> None:
    base = f"{'https' if config.gateway_tls.enabled else 'http'}://{config.host}:{config.gateway_port}"
    pids = {replica.name: replica.process.pid for replica in replicas} | {"envoy": envoy.pid}
    log.info(
        "stack started",
        extra={
            "fields": {
                "grpc": [f"{config.host}:{config.port + i}" for i in range(config.replicas)],
                "gateway": f"{config.host}:{config.gateway_port} (gRPC and REST)",
                "rest": f"{base}/v1/models",
                "docs": f"{base}/docs",
                "openapi": f"{base}/openapi.json",
                "metrics": [f"http://{config.host}:{config.metrics_port + i}/metrics" for i in range(config.replicas)],
                "pids": pids,
            }
        },
    )


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
