"""tensorgate benchmark: the server against the limits it runs between, side by side in one run.

    .venv/bin/python bench/run.py [--duration 5] [--output bench/results.json]

Measures, on the MNIST reference model (trained into --repository if missing):
  * in-process limit: the SavedModel signature called directly on batches of 1, 64, 256 (examples/s);
  * transport limit: a grpc.aio echo servicer with tensorgate's message sizes (requests/s);
  * unary Predict of one image at concurrency 1, 16, 64, batching on and off, load from h2load
    (requests/s, p50, p99, errors), each answer counted on the server's metrics;
  * bulk streaming of the 10,000 test images over one StreamPredict stream, 64 images a message;
  * REST/JSON through Envoy (load from wrk) against direct gRPC at concurrency 1 and 64;
  * reload under load: p99 and failed requests while two new versions are rolled in, against steady state;
  * tracing overhead: unary throughput with tracing off and at 10% sampling (spans to a local OTLP receiver);
  * scale-out: gRPC (h2load) and REST (wrk) through Envoy at concurrency 64 with 1 and 2 server replicas;
  * TLS cost: the same through Envoy in plaintext and with TLS on both hops;
  * the server's peak RSS.
`--only replicas` or `--only tls` runs that case alone.
Prints a table and writes JSON. Needs h2load and wrk (Debian packages nghttp2-client, wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import load_mnist, to_model_input
from tensorgate.v1 import codec
from tensorgate.v1.inference_service_pb2 import PredictRequest, PredictResponse

ROOT = Path(__file__).resolve().parent.parent
PREDICT_PATH = "/tensorgate.v1.InferenceService/Predict"
CONCURRENCY = (1, 16, 64)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: what h2load must send as the HTTP/2 body."""
    return struct.pack(">BI", 0, len(message)) + message


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    gateway_port: int

    def metric_sum(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)

    def peak_rss_mb(self) -> float:
        """Peak RSS of the gRPC server process: the supervisor's child that runs ``serve --gateway false``."""
        pid = self.process.pid
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            if b"tensorgate.clients.cli" in Path(f"/proc/{child}/cmdline").read_bytes():
                pid = int(child)
        status = Path(f"/proc/{pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def wait_serving(port: int, process: subprocess.Popen[bytes]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError("server exited during start-up")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError("server did not become SERVING")


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports below the ephemeral range (replica i takes port + i)."""
    for first in range(20000, 32000, 16):
        try:
            for port in range(first, first + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no block of free ports")


def start_tensorgate(repository: Path, batching: bool, log: Path, *extra: str, replicas: int = 1) -> Server:
    """The whole stack (supervisor, server replicas, Envoy) on free ports."""
    port = free_port_block(16)
    metrics_port = port + 8  # replica i: gRPC on port + i, metrics on port + 8 + i, plaintext health on port + 12 + i
    gateway_port = free_port()
    command = [sys.executable, "-m", "tensorgate.clients.cli", "serve", "--model-repository", str(repository), *extra]
    command += ["--port", str(port), "--metrics-port", str(metrics_port), "--batching-enabled", str(batching).lower()]
    command += ["--gateway-port", str(gateway_port), "--gateway-admin-port", str(free_port())]
    command += ["--replicas", str(replicas), "--health-port", str(port + 12)]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    for replica in range(replicas):
        wait_serving(port + 12 + replica, process)  # the health port speaks plaintext even when the server is mTLS
    time.sleep(2)  # Envoy's health checks pass every replica
    return Server(process, port, metrics_port, gateway_port)


def wrk(port: int, body: str, concurrency: int, seconds: int, tmp: Path, scheme: str = "http") -> dict[str, float]:
    """REST load from wrk: POST the JSON body to the predict route through Envoy."""
    script = tmp / "predict.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{body}]]\n')
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script)]
    url = f"{scheme}://127.0.0.1:{port}/v1/models/mnist:predict"
    output = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50_ms": _wrk_latency_ms(output, "50%"),
        "p99_ms": _wrk_latency_ms(output, "99%"),
        "errors": int(non_2xx.group(1)) if non_2xx else 0,
    }


def _wrk_latency_ms(output: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)$", output, re.MULTILINE).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def in_process_limit(model_dir: Path, x: np.ndarray, seconds: float) -> dict[int, float]:
    """Examples/s of the signature called directly, by keyword, as the server does."""
    from tensorgate.server.runtime import SavedModelRuntime

    runtime = SavedModelRuntime(model_dir, "serving_default", "CPU:0")
    results = {}
    for batch in (1, 64, 256):
        inputs = {"keras_tensor": x[:batch]}
        runtime.predict(inputs)
        calls, started = 0, time.monotonic()
        while time.monotonic() - started < seconds:
            runtime.predict(inputs)
            calls += 1
        results[batch] = calls * batch / (time.monotonic() - started)
    return results


def h2load(
    port: int, body: Path, concurrency: int, seconds: int, log_file: Path, connections: int = 1, scheme: str = "http"
) -> dict[str, float]:
    """Unary load from h2load: ``concurrency`` streams over each of ``connections`` HTTP/2 connections;
    latency percentiles from its per-request log."""
    command = [
        "h2load", "-D", str(seconds), "--warm-up-time", "1", "-c", str(connections), "-m", str(concurrency),
        "-t", "1",
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"--log-file={log_file}", f"{scheme}://127.0.0.1:{port}{PREDICT_PATH}",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output).group(1))  # type: ignore[union-attr]
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", output)
    assert counts, output
    rows = [line.split("\t") for line in log_file.read_text().splitlines() if line]
    latencies_ms = np.array([int(row[2]) / 1000 for row in rows])
    non_200 = sum(1 for row in rows if row[1] != "200")
    return {
        "requests_per_s": rps,
        "p50_ms": float(np.percentile(latencies_ms, 50)),
        "p99_ms": float(np.percentile(latencies_ms, 99)),
        "done": int(counts.group(2)),
        "errors": int(counts.group(4)) + non_200,
    }


def unary_runs(server: Server, body: Path, seconds: int, tmp: Path) -> dict[int, dict[str, float]]:
    """h2load at each concurrency; every answer is checked by the model's example counter."""
    runs = {}
    for concurrency in CONCURRENCY:
        before = server.metric_sum("tensorgate_model_examples_total")
        compute_before = (
            server.metric_sum("tensorgate_compute_duration_seconds_sum"),
            server.metric_sum("tensorgate_compute_duration_seconds_count"),
        )
        result = h2load(server.port, body, concurrency, seconds, tmp / f"h2load-{server.port}-{concurrency}.log")
        ran = server.metric_sum("tensorgate_model_examples_total") - before
        calls = server.metric_sum("tensorgate_compute_duration_seconds_count") - compute_before[1]
        compute_s = server.metric_sum("tensorgate_compute_duration_seconds_sum") - compute_before[0]
        # h2load counts HTTP 200 even when grpc-status is not 0: a request is only good if the model ran it.
        result["answers_not_run_by_model"] = max(0, int(result["done"] - ran))
        result["mean_batch"] = ran / calls if calls else 0.0
        result["mean_batch_compute_ms"] = 1000 * compute_s / calls if calls else 0.0
        runs[concurrency] = result
    return runs


def reload_under_load(version_dir: Path, body: Path, seconds: int, tmp: Path, log: Path) -> dict[str, Any]:
    """h2load at concurrency 16: once steady, once while versions 2 and 3 are written into the repository."""
    root = tmp / "reload-repository"
    shutil.copytree(version_dir, root / "mnist" / "1")
    server = start_tensorgate(root, True, log, "--poll-interval-s", "0.2")
    try:
        steady = unary_runs_at(server, body, 16, seconds, tmp / "steady.log")

        def roll_in() -> None:
            for version in (2, 3):
                time.sleep(seconds / 3)
                shutil.copytree(version_dir, root / "mnist" / f".incoming-{version}")
                (root / "mnist" / f".incoming-{version}").rename(root / "mnist" / str(version))

        roller = threading.Thread(target=roll_in)
        roller.start()
        switching = unary_runs_at(server, body, 16, seconds, tmp / "switching.log")
        roller.join()
        with TensorgateClient(f"127.0.0.1:{server.port}") as client:
            served = [v.version for v in client.model_status("mnist").versions]
    finally:
        server.stop()
    return {"steady": steady, "switching": switching, "versions_after": served}


class _DiscardingCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC receiver that accepts and drops spans: the exporter does all its real work."""

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        return trace_service_pb2.ExportTraceServiceResponse()


def tracing_overhead(repository: Path, body: Path, seconds: int, tmp: Path, log: Path) -> dict[str, Any]:
    receiver = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_DiscardingCollector(), receiver)
    endpoint = f"127.0.0.1:{receiver.add_insecure_port('127.0.0.1:0')}"
    receiver.start()
    runs = {}
    try:
        for label, extra in (("off", ()), ("sampled_10pct", ("--tracing-endpoint", endpoint))):
            server = start_tensorgate(repository, True, log, *extra)
            try:
                runs[label] = unary_runs_at(server, body, 16, seconds, tmp / f"tracing-{label}.log")
            finally:
                server.stop()
    finally:
        receiver.stop(0)
    return runs


def scale_out(repository: Path, body: Path, rest_body: str, seconds: int, tmp: Path, log: Path) -> dict[str, Any]:
    """The same load through Envoy with 1 and 2 replicas. On a 2-core machine, where load generator, Envoy and
    replicas share the cores, this shows the cost and the headroom of scaling out, not a scaling curve."""
    runs: dict[str, Any] = {}
    for replicas in (1, 2):
        server = start_tensorgate(repository, True, log, replicas=replicas)
        try:
            runs[str(replicas)] = {
                "grpc_c64": h2load(server.gateway_port, body, 16, seconds, tmp / f"replicas-{replicas}.log", 4),
                "rest_c64": wrk(server.gateway_port, rest_body, 64, seconds, tmp),
            }
        finally:
            server.stop()
    return runs


def tls_cost(repository: Path, body: Path, rest_body: str, seconds: int, tmp: Path, log: Path) -> dict[str, Any]:
    """The same load through Envoy in plaintext and with TLS on both hops (TLS to Envoy, mTLS Envoy -> server)."""
    from tensorgate.server.certs import create_dev_pki

    pki = create_dev_pki(tmp / "certs")
    tls_flags = (
        "--tls-cert-file", str(pki.server.cert), "--tls-key-file", str(pki.server.key), "--tls-ca-file", str(pki.ca),
        "--gateway-tls-cert-file", str(pki.gateway.cert), "--gateway-tls-key-file", str(pki.gateway.key),
        "--upstream-tls-cert-file", str(pki.gateway.cert), "--upstream-tls-key-file", str(pki.gateway.key),
        "--upstream-tls-ca-file", str(pki.ca),
    )  # fmt: skip
    runs: dict[str, Any] = {}
    for label, extra, scheme in (("plaintext", (), "http"), ("tls", tls_flags, "https")):
        server = start_tensorgate(repository, True, log, *extra)
        try:
            runs[label] = {
                "grpc_c64": h2load(server.gateway_port, body, 16, seconds, tmp / f"tls-{label}.log", 4, scheme),
                "rest_c64": wrk(server.gateway_port, rest_body, 64, seconds, tmp, scheme),
            }
        finally:
            server.stop()
    return runs


def unary_runs_at(server: Server, body: Path, concurrency: int, seconds: int, log_file: Path) -> dict[str, float]:
    before = server.metric_sum("tensorgate_model_examples_total")
    result = h2load(server.port, body, concurrency, seconds, log_file)
    result["answers_not_run_by_model"] = max(
        0, int(result["done"] - (server.metric_sum("tensorgate_model_examples_total") - before))
    )
    return result


def streaming_run(port: int, x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    with TensorgateClient(f"127.0.0.1:{port}") as client:
        batches = ({"keras_tensor": x[i : i + 64]} for i in range(0, len(x), 64))
        started = time.monotonic()
        outputs = [out["output_0"] for out in client.stream_predict_batches("mnist", batches)]
        elapsed = time.monotonic() - started
    predictions = np.concatenate(outputs).argmax(1)
    return {"images_per_s": len(x) / elapsed, "accuracy": float((predictions == labels).mean())}


def ensure_model(repository: Path) -> Path:
    model_dir = repository / "mnist"
    if not model_dir.is_dir() or not any(p.name.isdigit() for p in model_dir.iterdir()):
        from tensorgate.server.training import train_mnist

        train_mnist(repository)
    return max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--duration", type=int, default=5, help="seconds per load point (after 1 s of warm-up)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--only", choices=["replicas", "tls"], help="run one case alone")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    version_dir = ensure_model(args.repository)
    mnist = load_mnist()
    x = to_model_input(mnist.x_test, np.dtype(np.float32))
    tmp = Path(tempfile.mkdtemp(prefix="tensorgate-bench-"))
    log = tmp / "servers.log"
    request = PredictRequest(model="mnist")
    request.inputs["keras_tensor"].CopyFrom(codec.encode(x[:1]))
    body = tmp / "predict.body"
    body.write_bytes(grpc_frame(request.SerializeToString()))

    rest_body = json.dumps(
        {
            "inputs": {
                "keras_tensor": {
                    "dtype": "DATA_TYPE_FLOAT32",
                    "shape": [1, 28, 28],
                    "floatValues": x[0].ravel().tolist(),
                }
            }
        }
    )

    results: dict[str, Any]
    if args.only == "replicas":
        results = {"replicas": scale_out(args.repository, body, rest_body, args.duration, tmp, log)}
        args.output.write_text(json.dumps(results, indent=2))
        print_replicas_table(results["replicas"])
        return 0
    if args.only == "tls":
        results = {"tls": tls_cost(args.repository, body, rest_body, args.duration, tmp, log)}
        args.output.write_text(json.dumps(results, indent=2))
        print_tls_table(results["tls"])
        return 0

    print("in-process limit ...", flush=True)
    in_process = in_process_limit(version_dir, x, args.duration / 2)

    print("echo servicer ...", flush=True)
    response = PredictResponse(model="mnist", version=version_dir.name)
    response.outputs["output_0"].CopyFrom(codec.encode(np.zeros((1, 10), np.float32)))
    response_file = tmp / "response.bin"
    response_file.write_bytes(response.SerializeToString())
    echo_port = free_port()
    echo = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "echo_server.py"), str(echo_port), str(response_file)],
        stdout=subprocess.PIPE,
    )
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
        echo_runs = {c: h2load(echo_port, body, c, args.duration, tmp / f"echo-{c}.log") for c in CONCURRENCY}
    finally:
        echo.send_signal(signal.SIGTERM)
        echo.wait(30)

    from tensorgate.server.batching import BatchingConfig

    results = {
        "in_process_examples_per_s": in_process,
        "echo": echo_runs,
        "max_queue_delay_ms": BatchingConfig().max_queue_delay_us / 1000,
    }
    peak_rss = 0.0
    for batching in (True, False):
        label = "batching_on" if batching else "batching_off"
        print(f"tensorgate, {label.replace('_', ' ')} ...", flush=True)
        server = start_tensorgate(args.repository, batching, log)
        try:
            results[label] = unary_runs(server, body, args.duration, tmp)
            if batching:
                results["stream"] = streaming_run(server.port, x, mnist.y_test)
                results["rest"] = {c: wrk(server.gateway_port, rest_body, c, args.duration, tmp) for c in (1, 64)}
            peak_rss = max(peak_rss, server.peak_rss_mb())
        finally:
            server.stop()
    results["server_peak_rss_mb"] = peak_rss
    print("reload under load ...", flush=True)
    results["reload"] = reload_under_load(version_dir, body, args.duration * 2, tmp, log)
    print("tracing overhead ...", flush=True)
    results["tracing"] = tracing_overhead(args.repository, body, args.duration, tmp, log)
    print("TLS cost ...", flush=True)
    results["tls"] = tls_cost(args.repository, body, rest_body, args.duration, tmp, log)
    print("scale-out ...", flush=True)
    results["replicas"] = scale_out(args.repository, body, rest_body, args.duration, tmp, log)
    results["ratios"] = ratios(results)
    args.output.write_text(json.dumps(results, indent=2))
    print_table(results)
    print_replicas_table(results["replicas"])
    print_tls_table(results["tls"])
    print(f"\nJSON: {args.output}")
    return 0


def ratios(r: dict[str, Any]) -> dict[str, float]:
    on64, off64, echo64 = r["batching_on"][64], r["batching_off"][64], r["echo"][64]
    return {
        "unary_c64_vs_echo": on64["requests_per_s"] / echo64["requests_per_s"],
        "batching_on_vs_off_c64": on64["requests_per_s"] / off64["requests_per_s"],
        "stream_vs_in_process_256": r["stream"]["images_per_s"] / r["in_process_examples_per_s"][256],
        "p99_c64_budget_ms": r["max_queue_delay_ms"] + 3 * on64["mean_batch_compute_ms"],
        "rest_vs_grpc_c64": r["rest"][64]["requests_per_s"] / on64["requests_per_s"],
        "reload_p99_vs_steady": r["reload"]["switching"]["p99_ms"] / r["reload"]["steady"]["p99_ms"],
        "tracing_10pct_vs_off": r["tracing"]["sampled_10pct"]["requests_per_s"] / r["tracing"]["off"]["requests_per_s"],
        "rest_added_p50_ms_c1": r["rest"][1]["p50_ms"] - r["batching_on"][1]["p50_ms"],
        "grpc_2_replicas_vs_1": r["replicas"]["2"]["grpc_c64"]["requests_per_s"]
        / r["replicas"]["1"]["grpc_c64"]["requests_per_s"],
    }


def print_tls_table(runs: dict[str, Any]) -> None:
    print("\n| through Envoy, concurrency 64 | transport | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|")
    for transport, run in runs.items():
        for kind, result in (("gRPC (h2load)", run["grpc_c64"]), ("REST (wrk)", run["rest_c64"])):
            print(
                f"| {kind} | {transport} | {result['requests_per_s']:,.0f} | {result['p50_ms']:.2f} | "
                f"{result['p99_ms']:.2f} | {result['errors']} |"
            )
    for kind in ("grpc_c64", "rest_c64"):
        ratio = runs["tls"][kind]["requests_per_s"] / runs["plaintext"][kind]["requests_per_s"]
        print(f"| {kind.split('_')[0]}: TLS / plaintext | {ratio:.2f} | | | | |")


def print_replicas_table(runs: dict[str, Any]) -> None:
    print("\n| through Envoy, concurrency 64 | replicas | req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for replicas, run in runs.items():
        for kind, result in (("gRPC (h2load)", run["grpc_c64"]), ("REST (wrk)", run["rest_c64"])):
            print(
                f"| {kind} | {replicas} | {result['requests_per_s']:,.0f} | {result['p50_ms']:.2f} | "
                f"{result['p99_ms']:.2f} | {result['errors']} |"
            )
    for kind in ("grpc_c64", "rest_c64"):
        ratio = runs["2"][kind]["requests_per_s"] / runs["1"][kind]["requests_per_s"]
        print(f"| {kind.split('_')[0]}: 2 replicas / 1 | {ratio:.2f} | | | | |")


def print_table(r: dict[str, Any]) -> None:
    print("\n| measurement | req/s or examples/s | p50 ms | p99 ms | errors | mean batch |")
    print("|---|---:|---:|---:|---:|---:|")
    for batch, rate in r["in_process_examples_per_s"].items():
        print(f"| in-process signature, batch {batch} | {rate:,.0f} | | | | {batch} |")
    for name in ("echo", "batching_on", "batching_off"):
        for c, run in r[name].items():
            errors = run["errors"] + run.get("answers_not_run_by_model", 0)
            mean_batch = f"{run['mean_batch']:.1f}" if "mean_batch" in run else ""
            print(
                f"| {name.replace('_', ' ')} unary, concurrency {c} | {run['requests_per_s']:,.0f} | "
                f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {errors} | {mean_batch} |"
            )
    for c, run in r["rest"].items():
        print(
            f"| REST through Envoy (wrk), concurrency {c} | {run['requests_per_s']:,.0f} | "
            f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['errors']} | |"
        )
    print(f"| StreamPredict 10,000 images, 64/message | {r['stream']['images_per_s']:,.0f} | | | | |")
    for phase, run in r["tracing"].items():
        print(
            f"| unary c16, tracing {phase.replace('_', ' ')} | {run['requests_per_s']:,.0f} | "
            f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['errors']} | |"
        )
    for phase in ("steady", "switching"):
        run = r["reload"][phase]
        errors = run["errors"] + run["answers_not_run_by_model"]
        print(
            f"| unary c16, {phase} (reload case) | {run['requests_per_s']:,.0f} | "
            f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {errors} | |"
        )
    print(f"| server peak RSS | {r['server_peak_rss_mb']:.0f} MB | | | | |")
    q = r["ratios"]
    p99 = r["batching_on"][64]["p99_ms"]
    print("\n| target | measured | goal |")
    print("|---|---:|---|")
    print(f"| unary c64 (batching on) / echo servicer | {q['unary_c64_vs_echo']:.2f} | >= 0.70 |")
    print(f"| batching on / off at c64 | {q['batching_on_vs_off_c64']:.2f} | >= 1.8 |")
    print(f"| stream / in-process batch 256 | {q['stream_vs_in_process_256']:.2f} | >= 0.50 |")
    print(f"| p99 at c64, batching on | {p99:.2f} ms | <= {q['p99_c64_budget_ms']:.2f} ms |")
    print(f"| server peak RSS | {r['server_peak_rss_mb']:.0f} MB | <= 1024 MB |")
    print(f"| REST c64 / direct gRPC c64 | {q['rest_vs_grpc_c64']:.2f} | >= 0.70 |")
    print(f"| REST added p50 at c1 | {q['rest_added_p50_ms_c1']:.2f} ms | <= 1 ms |")
    switching = r["reload"]["switching"]
    failed = switching["errors"] + switching["answers_not_run_by_model"]
    print(f"| p99 during a version switch / steady (c16) | {q['reload_p99_vs_steady']:.2f} | <= 2.0 |")
    print(f"| failed requests during the switch | {failed} of {switching['done']} | 0 |")
    print(f"| throughput with tracing at 10% / off (c16) | {q['tracing_10pct_vs_off']:.2f} | >= 0.95 |")


if __name__ == "__main__":
    sys.exit(main())
