"""Runs the gRPC server and Envoy as two child processes of one supervisor.

SIGTERM or SIGINT drains the server first (Envoy keeps proxying its in-flight
calls), then stops Envoy. A child that dies on its own is never restarted
silently: the supervisor stops the other and exits non-zero.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from tensorgate.server.config import ServerConfig
from tensorgate.server.gateway import envoy_binary, render_envoy_config

log = logging.getLogger(__name__)
POLL_S = 0.1


def supervise(config: ServerConfig, server_args: list[str]) -> int:
    """Start both children, wait, and return the exit status of the whole stack."""
    stop_requested = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with tempfile.TemporaryDirectory(prefix="tensorgate-envoy-") as tmp:
        envoy_config = Path(tmp) / "envoy.yaml"
        envoy_config.write_text(render_envoy_config(config))
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorgate.clients.cli", "serve", *server_args, "--gateway", "false"]
        )
        # --file-flush-interval-msec: access log lines reach stdout within half a second.
        envoy_args = ["-c", str(envoy_config), "--disable-hot-restart", "--log-level", "warn"]
        envoy = subprocess.Popen([envoy_binary(), *envoy_args, "--file-flush-interval-msec", "500"])
        children = {"server": server, "envoy": envoy}
        base = f"http://{config.host}:{config.gateway_port}"
        log.info(
            "stack started",
            extra={
                "fields": {
                    "grpc": f"{config.host}:{config.port}",
                    "gateway": f"{config.host}:{config.gateway_port} (gRPC and REST)",
                    "rest": f"{base}/v1/models",
                    "docs": f"{base}/docs",
                    "openapi": f"{base}/openapi.json",
                    "metrics": f"http://{config.host}:{config.metrics_port}/metrics",
                    "pids": {name: child.pid for name, child in children.items()},
                }
            },
        )
        while not stop_requested:
            for name, child in children.items():
                if child.poll() is not None:
                    log.error("child exited on its own", extra={"fields": {"child": name, "code": child.returncode}})
                    _stop_all(children)
                    return 1
            time.sleep(POLL_S)
        log.info("draining the server, then stopping envoy")
        server.send_signal(signal.SIGTERM)
        server_code = server.wait()
        envoy.send_signal(signal.SIGTERM)
        envoy_code = envoy.wait()
        log.info("stack stopped", extra={"fields": {"server": server_code, "envoy": envoy_code}})
        return 0 if server_code == 0 else 1


def _stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
