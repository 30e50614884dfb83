"""tensorgate benchmark: the server against the limits it runs between and against its peers, in one run.

    .venv/bin/python bench/run.py [--duration 5] [--output bench/results.json] [--peers] [--only replicas|tls|peers]

Measures, on the MNIST reference model (trained into --repository if missing):
  * in-process limit: the SavedModel signature called directly, and the same model as a TensorFlow Lite
    interpreter (1 thread), on batches of 1, 64, 256 (examples/s);
  * transport limit: a grpc.aio echo servicer with tensorgate's message sizes (requests/s);
  * unary Predict of one image at concurrency 1, 16, 64, batching on and off, load from h2load
    (requests/s, p50, p99, errors, server CPU per request), each answer counted on the server's metrics;
  * bulk streaming of the 10,000 test images over one StreamPredict stream, 64 and 256 images a message, with the
    server's and the client's CPU;
  * REST/JSON through Envoy (load from wrk) against direct gRPC at concurrency 1 and 64;
  * reload under load: p99 and failed requests while two new versions are rolled in, against steady state;
  * tracing overhead: unary throughput with tracing off and at 10% sampling (spans to a local OTLP receiver);
  * scale-out: gRPC (h2load) and REST (wrk) through Envoy at concurrency 64 with 1 and 2 server replicas;
  * TLS cost: the same through Envoy in plaintext and with TLS on both hops;
  * the Open Inference Protocol side by side: the same pre-framed ModelInfer body (one image, FP32 [1,28,28] in
    raw_input_contents) from the same h2load (1 connection, -m = concurrency) at concurrency 1, 8, 64 to the echo
    servicer, tensorgate, tensorgate --runtime tensorflow and --workers 2 (when `tensorgate serve --help` lists those
    flags) and, with --peers, MLServer 1.7.1 (adaptive batching 64 / 2 ms) and KServe 0.21, each serving the same
    SavedModel from its own virtualenv under bench/.peers/ (built on first use, then reused);
  * the REST APIs of the targets that have them, from wrk at concurrency 1 and 64: tensorgate's v2 REST (JSON
    `data` and binary tensors) and TF Serving REST, next to MLServer's and KServe's v2 REST (with --peers);
  * every server's CPU per request (its whole process tree, from /proc) and peak RSS per process.
Then issue #13's ratios with pass/MISS against each target. `--only replicas`, `--only tls` or `--only peers`
runs that case alone. Prints tables and writes JSON. Needs h2load and wrk (Debian: nghttp2-client, wrk).
What each column means: bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import numpy as np
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

# The OIP request every target gets is the one Triton's own client builds (and the suite's Triton tests share
# these message types: a second copy of the `inference` package in one process would clash).
from tritonclient.grpc import service_pb2_grpc as grpc_service_pb2_grpc
from tritonclient.grpc.service_pb2 import ModelInferRequest, ModelInferResponse, ModelReadyRequest

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import load_mnist, to_model_input
from tensorgate.v1 import codec
from tensorgate.v1.inference_service_pb2 import PredictRequest, PredictResponse

# The process harness the tests use (tests/support/processes.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.processes import CLI, free_port, free_port_block, start_stack, stop, stop_group, wait_until

ROOT = Path(__file__).resolve().parent.parent

PREDICT_PATH = "/tensorgate.v1.InferenceService/Predict"
CONCURRENCY = (1, 16, 64)
WARM_UP_S = 1
MODEL = "mnist"
OIP_PATH = "/inference.GRPCInferenceService/ModelInfer"
OIP_CONCURRENCY = (1, 8, 64)
REST_CONCURRENCY = (1, 64)
EXAMPLES = "tensorgate_model_examples_total"
WORKER_CONNECTIONS = 8  # with two connections, both land on one worker half the time
BATCH_METRICS = (EXAMPLES, "tensorgate_batch_size_count")  # examples and model calls: their ratio is the mean batch
PEERS_CACHE = ROOT / "bench" / ".peers"  # the peers' virtualenvs (git-ignored), reused across runs


def metric_sum(metrics_port: int, name: str) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _proc_stat(pid: int) -> list[str]:
    """Fields 3 onwards of /proc/PID/stat (after the command name, which may hold spaces); [] once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant, found through the parent pid (field 4) of each /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of a process tree: utime and stime (fields 14, 15) of every live process, plus
    cutime and cstime (16, 17), which hold what children that already exited (and were reaped) used."""
    ticks = 0
    for pid in process_tree(root):
        if fields := _proc_stat(pid):
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_per_process_mb(root: int) -> float:
    """The largest peak RSS (VmHWM) of one process of the tree, Envoy left out: the figure per server worker."""
    peak_kb = 0
    for pid in process_tree(root):
        try:
            if b"envoy" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if "VmHWM:" in status:
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
    return peak_kb / 1024


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
        return metric_sum(self.metrics_port, name)

    def peak_rss_mb(self) -> float:
        """Peak RSS of the largest server process of the stack (Envoy left out)."""
        return peak_rss_per_process_mb(self.process.pid)

    def stop(self) -> None:
        stop(self.process)


def start_tensorgate(
    repository: Path,
    batching: bool,
    log: Path,
    *extra: str,
    replicas: int = 1,
    gateway_ssl: ssl.SSLContext | None = None,
) -> Server:
    """The whole stack (supervisor, server replicas, Envoy) on free ports, once Envoy routes to every replica.
    Readiness polls the replicas' plaintext health ports, which answer even when the server speaks mTLS, and Envoy
    over TLS with ``gateway_ssl``."""
    stack = start_stack(
        repository,
        log,
        "--batching-enabled" if batching else "--no-batching-enabled",
        *extra,
        gateway=True,
        replicas=replicas,
        health_port=True,
        append_log=True,
        gateway_ssl=gateway_ssl,
    )
    return Server(stack.process, stack.port, stack.metrics_port, stack.gateway_port)


def wrk(
    port: int,
    body: str | bytes,
    concurrency: int,
    seconds: int,
    tmp: Path,
    scheme: str = "http",
    server_pid: int | None = None,
    path: str = "/v1/models/mnist:predict",
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """REST load from wrk: POST ``body`` (JSON unless ``headers`` say otherwise; read from a file, so it may be
    binary) to ``path``, by default tensorgate.v1's predict route through Envoy. With ``server_pid`` (the
    supervisor), also the CPU its process tree spent per completed request over the whole run: Envoy is in that tree,
    so the figure includes the JSON transcoding, which is what REST costs on top of gRPC."""
    body_file, script = tmp / "wrk.body", tmp / "wrk.lua"
    body_file.write_bytes(body.encode() if isinstance(body, str) else body)
    lines = ['wrk.method = "POST"']
    for name, value in ({"Content-Type": "application/json"} | (headers or {})).items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    lines.append(f"local file = assert(io.open({json.dumps(str(body_file))}, 'rb'))")
    lines.append("wrk.body = file:read('*a')")
    lines.append("file:close()")
    script.write_text("\n".join(lines) + "\n")
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script)]
    url = f"{scheme}://127.0.0.1:{port}{path}"
    cpu_before = tree_cpu_s(server_pid) if server_pid is not None else 0.0
    output = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    cpu_s = tree_cpu_s(server_pid) - cpu_before if server_pid is not None else 0.0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result = {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50_ms": _wrk_latency_ms(output, "50%"),
        "p99_ms": _wrk_latency_ms(output, "99%"),
        "errors": int(non_2xx.group(1)) if non_2xx else 0,
    }
    if server_pid is not None:
        done = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
        result["cpu_us_per_request"] = 1e6 * cpu_s / max(1, done)
    return result


def _wrk_latency_ms(output: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)$", output, re.MULTILINE).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def signature_runtime(model_dir: Path) -> Any:
    from tensorgate.server.runtimes.tensorflow import SavedModelRuntime

    return SavedModelRuntime(model_dir, "serving_default", "CPU:0")


def tflite_runner(model_dir: Path) -> Callable[..., dict[str, np.ndarray]]:
    """The SavedModel converted to TensorFlow Lite, one interpreter thread, called through its signature runner."""
    import tensorflow as tf

    content = tf.lite.TFLiteConverter.from_saved_model(str(model_dir)).convert()
    interpreter = tf.lite.Interpreter(model_content=content, num_threads=1)
    return interpreter.get_signature_runner("serving_default")  # type: ignore[no-any-return]


def in_process_limit(
    model_dir: Path, x: np.ndarray, seconds: float, tflite: bool = True
) -> dict[str, dict[int, float]]:
    """Examples/s of the model called directly at batch 1, 64, 256: the SavedModel signature by keyword (as the
    server's TensorFlow runtime does) and, with ``tflite``, the TensorFlow Lite interpreter (the other runtime)."""
    runtime = signature_runtime(model_dir)
    calls: dict[str, Callable[[np.ndarray], Any]] = {"signature": lambda b: runtime.predict({"keras_tensor": b})}
    if tflite:
        runner = tflite_runner(model_dir)
        calls["tflite"] = lambda b: runner(keras_tensor=b)
    results: dict[str, dict[int, float]] = {}
    for name, call in calls.items():
        results[name] = {}
        for batch in (1, 64, 256):
            inputs = x[:batch]
            call(inputs)
            count, started = 0, time.monotonic()
            while time.monotonic() - started < seconds:
                call(inputs)
                count += 1
            results[name][batch] = count * batch / (time.monotonic() - started)
    return results


def h2load(
    port: int,
    body: Path,
    concurrency: int,
    seconds: int,
    log_file: Path,
    connections: int = 1,
    scheme: str = "http",
    path: str = PREDICT_PATH,
    server_pid: int | None = None,
) -> dict[str, float]:
    """Unary load from h2load: ``concurrency`` streams over each of ``connections`` HTTP/2 connections;
    latency percentiles from its per-request log. With ``server_pid``, also the CPU time the server's process tree
    spent per completed request over the measured window (after h2load's 1 s warm-up)."""
    command = [
        "h2load", "-D", str(seconds), "--warm-up-time", str(WARM_UP_S), "-c", str(connections),
        "-m", str(concurrency), "-t", "1",
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"--log-file={log_file}", f"{scheme}://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        cpu_before = 0.0
        if server_pid is not None:
            time.sleep(WARM_UP_S)
            cpu_before = tree_cpu_s(server_pid)
        output, _ = process.communicate(timeout=seconds + 60)
        cpu_s = tree_cpu_s(server_pid) - cpu_before if server_pid is not None else 0.0
    if process.returncode:
        raise RuntimeError(f"h2load exited with {process.returncode}: {output}")
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output).group(1))  # type: ignore[union-attr]
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", output)
    assert counts, output
    rows = [line.split("\t") for line in log_file.read_text().splitlines() if line]
    latencies_ms = np.array([int(row[2]) / 1000 for row in rows])
    non_200 = sum(1 for row in rows if row[1] != "200")
    result = {
        "requests_per_s": rps,
        "p50_ms": float(np.percentile(latencies_ms, 50)),
        "p99_ms": float(np.percentile(latencies_ms, 99)),
        "done": int(counts.group(2)),
        "errors": int(counts.group(4)) + non_200,
    }
    if server_pid is not None:
        result["cpu_us_per_request"] = 1e6 * cpu_s / max(1, result["done"])
    return result


def unary_runs(server: Server, body: Path, seconds: int, tmp: Path) -> dict[int, dict[str, float]]:
    """h2load at each concurrency; every answer is checked by the model's example counter."""
    runs = {}
    for concurrency in CONCURRENCY:
        before = server.metric_sum("tensorgate_model_examples_total")
        compute_before = (
            server.metric_sum("tensorgate_compute_duration_seconds_sum"),
            server.metric_sum("tensorgate_compute_duration_seconds_count"),
        )
        log_file = tmp / f"h2load-{server.port}-{concurrency}.log"
        result = h2load(server.port, body, concurrency, seconds, log_file, server_pid=server.process.pid)
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
    from tensorgate.server.commands.certs import create_dev_pki

    pki = create_dev_pki(tmp / "certs")
    tls_flags = (
        "--tls-cert-file", str(pki.server.cert), "--tls-key-file", str(pki.server.key), "--tls-ca-file", str(pki.ca),
        "--gateway-tls-cert-file", str(pki.gateway.cert), "--gateway-tls-key-file", str(pki.gateway.key),
        "--upstream-tls-cert-file", str(pki.gateway.cert), "--upstream-tls-key-file", str(pki.gateway.key),
        "--upstream-tls-ca-file", str(pki.ca),
    )  # fmt: skip
    runs: dict[str, Any] = {}
    trusting_the_ca = ssl.create_default_context(cafile=str(pki.ca))
    for label, extra, context in (("plaintext", (), None), ("tls", tls_flags, trusting_the_ca)):
        scheme = "https" if context else "http"
        server = start_tensorgate(repository, True, log, *extra, gateway_ssl=context)
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
    result = h2load(server.port, body, concurrency, seconds, log_file, server_pid=server.process.pid)
    result["answers_not_run_by_model"] = max(
        0, int(result["done"] - (server.metric_sum("tensorgate_model_examples_total") - before))
    )
    return result


STREAM_MESSAGE_SIZES = (64, 256)  # examples per StreamPredict message; 256 is what `tensorgate classify` sends


def streaming_run(server: Server, x: np.ndarray, labels: np.ndarray) -> dict[int, dict[str, float]]:
    """The test images over one StreamPredict stream per message size: images/s, and the CPU seconds the server's
    process tree and this client process spent (they share the machine's cores)."""
    results: dict[int, dict[str, float]] = {}
    for per_message in STREAM_MESSAGE_SIZES:
        with TensorgateClient(f"127.0.0.1:{server.port}") as client:
            batches = ({"keras_tensor": x[i : i + per_message]} for i in range(0, len(x), per_message))
            server_cpu, client_cpu, started = tree_cpu_s(server.process.pid), _own_cpu_s(), time.monotonic()
            outputs = [out["output_0"] for out in client.stream_predict_batches("mnist", batches)]
            elapsed = time.monotonic() - started
            server_cpu, client_cpu = tree_cpu_s(server.process.pid) - server_cpu, _own_cpu_s() - client_cpu
        predictions = np.concatenate(outputs).argmax(1)
        results[per_message] = {
            "images_per_s": len(x) / elapsed,
            "accuracy": float((predictions == labels).mean()),
            "server_cpu_s": server_cpu,
            "client_cpu_s": client_cpu,
        }
    return results


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


# --- The Open Inference Protocol side by side: the same ModelInfer body, by the same h2load, to every server. ---


@dataclass(frozen=True)
class OipTarget:
    """One server of the side-by-side table: how to start it and where it answers ModelInfer for ``mnist``."""

    name: str
    argv: list[str]
    port: int
    cwd: Path | None = None
    check_answer: bool = True  # the echo servicer answers zeros
    metrics_port: int | None = None  # tensorgate (one process): every answer counted on its model's metrics
    connections: int = 1  # HTTP/2 connections the concurrency is spread over (a connection stays on one process)
    rest_port: int | None = None  # its Open Inference Protocol REST API, loaded by wrk after the gRPC runs
    tfserving_rest_port: int | None = None  # its TF Serving REST API (tensorgate only)


@dataclass(frozen=True)
class RestLoad:
    """One REST request of the side-by-side table, sent by wrk: where (``api``: which port), what, how."""

    name: str
    api: str  # "v2" or "tfserving"
    path: str
    body: bytes
    headers: dict[str, str]


def rest_loads(x: np.ndarray) -> dict[str, RestLoad]:
    """One image in each REST encoding: v2 JSON ``data``, v2 binary tensor data (raw FP32 after the JSON header,
    outputs asked binary, as tritonclient.http sends it), and TF Serving's row format."""
    image = np.ascontiguousarray(x, np.float32)
    tensor = {"name": "keras_tensor", "shape": list(image.shape), "datatype": "FP32"}
    json_body = json.dumps({"id": "bench", "inputs": [{**tensor, "data": image.ravel().tolist()}]}).encode()
    raw = image.tobytes()
    header = json.dumps(
        {
            "id": "bench",
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    v2_path = f"/v2/models/{MODEL}/infer"
    return {
        "v2_json": RestLoad("v2 REST, JSON", "v2", v2_path, json_body, {}),
        "v2_binary": RestLoad("v2 REST, binary tensors", "v2", v2_path, header + raw, binary),
        "tfserving": RestLoad(
            "TF Serving REST, instances", "tfserving", f"/v1/models/{MODEL}:predict",
            json.dumps({"instances": image.tolist()}).encode(), {},
        ),
    }  # fmt: skip


def rest_answer_class(load: RestLoad, port: int) -> int:
    """The class one real request of ``load`` gets (wrk sees only HTTP statuses): the argmax of the first output,
    from its binary data, JSON ``data`` or TF Serving ``predictions``."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{load.path}",
        data=load.body,
        method="POST",
        headers={"Content-Type": "application/json"} | load.headers,
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        header_length, body = response.headers.get("Inference-Header-Content-Length"), response.read()
    if load.api == "tfserving":
        return int(np.argmax(json.loads(body)["predictions"]))
    answer = json.loads(body[: int(header_length)] if header_length else body)
    output = answer["outputs"][0]
    if "data" in output:
        return int(np.argmax(output["data"]))
    start = int(header_length)
    return int(np.argmax(np.frombuffer(body[start : start + output["parameters"]["binary_data_size"]], np.float32)))


def serve_flags() -> set[str]:
    """The long flags `tensorgate serve --help` lists: the bench adds targets for flags other branches add."""
    output = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    return long_flags(output)


def long_flags(help_text: str) -> set[str]:
    """``--workers`` from a help text, but not from ``--model-workers``."""
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text))


def model_infer_request(x: np.ndarray) -> ModelInferRequest:
    """One image as Triton's clients send it: FP32 [1,28,28] in raw_input_contents."""
    request = ModelInferRequest(model_name=MODEL, id="bench")
    request.inputs.add(name="keras_tensor", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(np.ascontiguousarray(x, np.float32).tobytes())
    return request


def echo_responses(tmp: Path, version: str) -> tuple[Path, Path]:
    """Files of the echo servicer's fixed answers, each the size of tensorgate's: Predict's and ModelInfer's."""
    predict = PredictResponse(model=MODEL, version=version)
    predict.outputs["output_0"].CopyFrom(codec.encode(np.zeros((1, 10), np.float32)))
    infer = ModelInferResponse(model_name=MODEL, model_version=version, id="bench")
    infer.outputs.add(name="output_0", datatype="FP32", shape=[1, 10])
    infer.raw_output_contents.append(np.zeros((1, 10), np.float32).tobytes())
    files = (tmp / "predict-response.bin", tmp / "model-infer-response.bin")
    for file, message in zip(files, (predict, infer), strict=True):
        file.write_bytes(message.SerializeToString())
    return files


def peer_venv(name: str, requirements: list[str]) -> Path:
    """A virtualenv under bench/.peers/NAME with ``requirements``, built once and reused while they stay the same."""
    venv = PEERS_CACHE / name
    marker = venv / "bench-requirements.txt"
    if marker.is_file() and marker.read_text() == "\n".join(requirements):
        return venv
    print(f"  building the {name} virtualenv in {venv} ...", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *requirements], check=True)
    marker.write_text("\n".join(requirements))
    return venv


def tensorflow_requirement() -> str:
    """The peers run the TensorFlow the bench's own environment has, so the model costs the same everywhere."""
    return f"tensorflow-cpu=={importlib.metadata.version('tensorflow-cpu')}"


def echo_target(tmp: Path, version: str) -> OipTarget:
    port = free_port()
    predict, infer = echo_responses(tmp, version)
    argv = [sys.executable, str(ROOT / "bench" / "echo_server.py"), str(port), str(predict), str(infer)]
    return OipTarget("echo servicer (grpc.aio)", argv, port, check_answer=False)


def tensorgate_target(repository: Path, name: str, *extra: str, connections: int = 1, rest: bool = False) -> OipTarget:
    """tensorgate without Envoy: the OIP service is on the server's own gRPC port; with ``rest``, its REST APIs are
    loaded too, on their own ports."""
    port = free_port_block(16)  # room for --workers N taking metrics_port + i, as replicas do
    argv = [*CLI, "serve", "--model-repository", str(repository)]
    argv += ["--no-gateway", "--port", str(port), "--metrics-port", str(port + 8)]
    argv += ["--rest-port", str(port + 4), "--tfserving-rest-port", str(port + 6), *extra]
    one_process = "--workers" not in extra  # with workers, one metrics port sees only its own process
    return OipTarget(
        name,
        argv,
        port,
        metrics_port=port + 8 if one_process else None,
        connections=connections,
        rest_port=port + 4 if rest else None,
        tfserving_rest_port=port + 6 if rest else None,
    )


def mlserver_target(model_dir: Path, tmp: Path) -> OipTarget:
    """MLServer 1.7.1, adaptive batching (64 / 2 ms), no parallel workers, our SavedModel runtime."""
    venv = peer_venv("mlserver", ["mlserver==1.7.1", "uvloop<0.22", tensorflow_requirement()])
    folder = tmp / "mlserver" / MODEL  # the model's folder is named after it, as MLServer expects
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "peers" / "mlserver_runtime.py", folder)
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    settings = {"host": "127.0.0.1", "http_port": http_port, "grpc_port": port, "metrics_port": metrics_port}
    settings |= {"parallel_workers": 0, "debug": False}
    model: dict[str, Any] = {
        "name": MODEL,
        "implementation": "mlserver_runtime.SavedModelRuntime",
        "parameters": {"uri": str(model_dir)},
    }
    model |= {"max_batch_size": 64, "max_batch_time": 0.002}
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(json.dumps(model))
    argv = [str(venv / "bin" / "mlserver"), "start", "."]
    return OipTarget("MLServer 1.7.1 (adaptive batching)", argv, port, folder, rest_port=http_port)


def kserve_target(model_dir: Path, tmp: Path) -> OipTarget:
    """KServe 0.21's Python model server (no batching there: KServe batches in its Go sidecar) with our model."""
    venv = peer_venv("kserve", ["kserve==0.21.*", tensorflow_requirement()])
    port, http_port = free_port(), free_port()
    argv = [str(venv / "bin" / "python"), str(ROOT / "bench" / "peers" / "kserve_server.py"), str(model_dir)]
    argv += ["--model_name", MODEL, "--grpc_port", str(port), "--http_port", str(http_port), "--workers", "1"]
    argv += ["--enable_latency_logging", "false"]
    return OipTarget("KServe 0.21", argv, port, tmp, rest_port=http_port)


def wait_model_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def ready() -> bool:
            try:
                return bool(stub.ModelReady(ModelReadyRequest(name=MODEL), timeout=1).ready)
            except grpc.RpcError:
                return False

        wait_until(ready, process, timeout_s, f"model {MODEL} ready on port {port}")


def check_model_infer(port: int, request: ModelInferRequest, expected: int) -> None:
    """One real ModelInfer: the answer's argmax must be the in-process one (h2load sees only HTTP statuses)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    output = response.outputs[0]
    if response.raw_output_contents:
        scores = np.frombuffer(response.raw_output_contents[0], np.float32)
    else:
        scores = np.array(output.contents.fp32_contents, np.float32)
    if output.datatype != "FP32" or scores.size != 10 or int(scores.argmax()) != expected:
        raise AssertionError(f"wrong answer: {output.datatype} {list(output.shape)} {scores}, expected {expected}")


def rest_runs(
    target: OipTarget, loads: dict[str, RestLoad], expected: int, server_pid: int, seconds: int, tmp: Path
) -> dict[str, Any]:
    """Each REST load the target has a port for: one request checked (the answer's class must be the in-process
    one), then wrk at c = 1 and 64 with the server's CPU per request. A load the target refuses is reported with
    its error and the others go on."""
    ports = {"v2": target.rest_port, "tfserving": target.tfserving_rest_port}
    runs: dict[str, Any] = {}
    for key, load in loads.items():
        port = ports[load.api]
        if port is None:
            continue
        try:
            got = rest_answer_class(load, port)
            if got != expected:
                raise AssertionError(f"wrong answer: class {got}, expected {expected}")
            runs[key] = {
                c: wrk(port, load.body, c, seconds, tmp, server_pid=server_pid, path=load.path, headers=load.headers)
                for c in REST_CONCURRENCY
            }
        except Exception as error:  # e.g. a peer without the binary extension: reported, the others go on
            print(f"  {target.name}, {load.name} failed: {error}", flush=True)
            runs[key] = {"error": str(error)[:300]}
    return runs


def run_oip_target(
    target: OipTarget,
    body: Path,
    request: ModelInferRequest,
    expected: int,
    seconds: int,
    tmp: Path,
    log: Path,
    loads: dict[str, RestLoad],
) -> dict[str, Any]:
    """Start, wait until the model is ready, check one answer, h2load at each concurrency with the server's CPU,
    then the REST loads on the target's REST ports, peak RSS, stop. A target that fails is reported with its error
    and the table goes on."""
    print(f"  {target.name} ...", flush=True)
    with log.open("ab") as out:
        out.write(f"\n=== {target.name}: {' '.join(target.argv)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            target.argv, cwd=target.cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        started = time.monotonic()
        wait_model_ready(target.port, process)
        result: dict[str, Any] = {"start_s": time.monotonic() - started, "runs": {}}
        if target.check_answer:
            check_model_infer(target.port, request, expected)
        for concurrency in OIP_CONCURRENCY:
            before = [metric_sum(target.metrics_port, name) for name in BATCH_METRICS] if target.metrics_port else []
            log_file = tmp / f"oip-{target.port}-{concurrency}.log"
            connections = min(target.connections, concurrency)
            run = h2load(
                target.port,
                body,
                concurrency // connections,
                seconds,
                log_file,
                connections=connections,
                path=OIP_PATH,
                server_pid=process.pid,
            )
            if target.metrics_port:
                ran, batches = (
                    metric_sum(target.metrics_port, n) - b for n, b in zip(BATCH_METRICS, before, strict=True)
                )
                run["answers_not_run_by_model"] = max(0, int(run["done"] - ran))
                run["mean_batch"] = ran / batches if batches else 0.0
            result["runs"][concurrency] = run
        result["rest"] = rest_runs(target, loads, expected, process.pid, seconds, tmp)
        result["peak_rss_mb"] = peak_rss_per_process_mb(process.pid)
        return result
    except Exception as error:  # one broken peer must not cost the rest of the table
        print(f"  {target.name} failed: {error} (server output in {log})", flush=True)
        return {"error": str(error)}
    finally:
        stop_group(process)


def oip_side_by_side(
    repository: Path, version_dir: Path, x: np.ndarray, peers: bool, seconds: int, tmp: Path, log: Path
) -> dict[str, Any]:
    """Every target under the same ModelInfer body at c = 1, 8, 64. tensorgate --workers 2 and --runtime tensorflow
    only when `serve --help` lists those flags; MLServer and KServe only with ``peers``."""
    request = model_infer_request(x[:1])
    body = tmp / "model-infer.body"
    body.write_bytes(grpc_frame(request.SerializeToString()))
    expected = int(np.argmax(signature_runtime(version_dir).predict({"keras_tensor": x[:1]})["output_0"]))
    flags = serve_flags()
    # Each target is made just before it runs: its ports are free then, and a peer's virtualenv is built then.
    targets: dict[str, Callable[[], OipTarget]] = {
        "echo": lambda: echo_target(tmp, version_dir.name),
        "tensorgate": lambda: tensorgate_target(repository, "tensorgate", rest=True),
    }
    notes = []
    if "--runtime" in flags:
        targets["tensorgate_tf"] = lambda: tensorgate_target(
            repository, "tensorgate --runtime tensorflow", "--runtime", "tensorflow"
        )
    else:
        notes.append("tensorgate --runtime tensorflow: skipped, `tensorgate serve --help` has no --runtime")
    if "--workers" in flags:
        # A connection stays on the process the kernel hashed it to (SO_REUSEPORT): two workers need several
        # connections to share the load evenly, and the process they are compared with gets the same.
        targets["tensorgate_8_connections"] = lambda: tensorgate_target(
            repository, "tensorgate, 8 connections", connections=WORKER_CONNECTIONS
        )
        targets["tensorgate_workers_2"] = lambda: tensorgate_target(
            repository, "tensorgate --workers 2, 8 connections", "--workers", "2", connections=WORKER_CONNECTIONS
        )
    else:
        notes.append("tensorgate --workers 2: skipped, `tensorgate serve --help` has no --workers")
    if peers:
        targets["mlserver"] = lambda: mlserver_target(version_dir, tmp)
        targets["kserve"] = lambda: kserve_target(version_dir, tmp)
    else:
        notes.append("MLServer and KServe: not run (add --peers)")
    for note in notes:
        print(f"  {note}", flush=True)
    results: dict[str, Any] = {"notes": notes, "targets": {}}
    for key, make_target in targets.items():
        try:
            target = make_target()
        except Exception as error:  # a peer whose virtualenv cannot be built: reported, the table goes on
            print(f"  {key} could not be set up: {error}", flush=True)
            results["targets"][key] = {"name": key, "error": str(error)}
            continue
        results["targets"][key] = {"name": target.name} | run_oip_target(
            target, body, request, expected, seconds, tmp, log, rest_loads(x[:1])
        )
    return results


def ensure_model(repository: Path) -> Path:
    model_dir = repository / "mnist"
    if not model_dir.is_dir() or not any(p.name.isdigit() for p in model_dir.iterdir()):
        from tensorgate.server.reference.training import train_mnist

        train_mnist(repository)
    return max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--duration", type=int, default=5, help="seconds per load point (after 1 s of warm-up)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--only", choices=["replicas", "tls", "peers"], help="run one case alone")
    parser.add_argument("--peers", action="store_true", help="add MLServer 1.7.1 and KServe 0.21 to the OIP table")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    version_dir = ensure_model(args.repository)
    mnist = load_mnist()
    x = to_model_input(mnist.x_test, np.dtype(np.float32))
    tmp = Path(tempfile.mkdtemp(prefix="tensorgate-bench-"))
    log = tmp / "servers.log"
    request = PredictRequest(model=MODEL)
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
    if args.only == "peers":
        print("OIP ModelInfer side by side ...", flush=True)
        results = {"oip": oip_side_by_side(args.repository, version_dir, x, args.peers, args.duration, tmp, log)}
        finish(results, args.output, log)
        return 0

    serving_runtime = "tflite" if "--runtime" in serve_flags() else "signature"
    print("in-process limit ...", flush=True)
    in_process = in_process_limit(version_dir, x, args.duration / 2)

    print("echo servicer ...", flush=True)
    echo_server = echo_target(tmp, version_dir.name)
    echo = subprocess.Popen(echo_server.argv, stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
        echo_runs = {
            c: h2load(echo_server.port, body, c, args.duration, tmp / f"echo-{c}.log", server_pid=echo.pid)
            for c in CONCURRENCY
        }
    finally:
        echo.send_signal(signal.SIGTERM)
        echo.wait(30)

    from tensorgate.server.config import BatchingConfig

    results = {
        "in_process_examples_per_s": in_process,
        "serving_runtime": serving_runtime,
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
                results["stream"] = streaming_run(server, x, mnist.y_test)
                results["rest"] = {
                    c: wrk(server.gateway_port, rest_body, c, args.duration, tmp, server_pid=server.process.pid)
                    for c in (1, 64)
                }
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
    print("OIP ModelInfer side by side ...", flush=True)
    results["oip"] = oip_side_by_side(args.repository, version_dir, x, args.peers, args.duration, tmp, log)
    print_table(results)
    print_replicas_table(results["replicas"])
    print_tls_table(results["tls"])
    finish(results, args.output, log)
    return 0


def finish(results: dict[str, Any], output: Path, log: Path) -> None:
    """The OIP table, the targets with pass/miss, and the JSON (ratios and targets included)."""
    results["ratios"] = ratios(results)
    results["targets"] = [goal._asdict() | {"result": goal.result()} for goal in goals(results)]
    output.write_text(json.dumps(results, indent=2))
    print_oip_table(results["oip"])
    only_oip = set(results) == {"oip", "ratios", "targets"}
    print_goals([goal for goal in goals(results) if goal.oip or not only_oip])
    print(f"\nJSON: {output}\nservers' output: {log}")


def _at(tree: Any, *keys: Any) -> Any:
    """``tree[k1][k2]...``, or None where a part was not run (missing, or a target that failed)."""
    for key in keys:
        if not isinstance(tree, dict) or "error" in tree or key not in tree:
            return None
        tree = tree[key]
    return tree


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def ratios(r: dict[str, Any]) -> dict[str, float | None]:
    """Every ratio the targets are stated in; None where one side was not run."""
    oip = _at(r, "oip", "targets") or {}

    def vs(target: str, other: str, concurrency: int, key: str) -> float | None:
        return _ratio(_at(oip, target, "runs", concurrency, key), _at(oip, other, "runs", concurrency, key))

    def run(*keys: Any) -> float | None:
        return _at(r, *keys)  # type: ignore[no-any-return]

    def rest(target: str, load: str) -> float | None:
        return _at(oip, target, "rest", load, 64, "requests_per_s")  # type: ignore[no-any-return]

    def faster_peer(*loads: str) -> float | None:
        figures = [rest(peer, load) for peer in ("mlserver", "kserve") for load in loads]
        return max((f for f in figures if f is not None), default=None)

    rps = "requests_per_s"
    stream, in_process = run("stream", 256, "images_per_s"), r.get("in_process_examples_per_s", {})
    on64: dict[str, float] | None = _at(r, "batching_on", 64)
    return {
        "tensorgate_vs_mlserver_c64_rps": vs("tensorgate", "mlserver", 64, rps),
        "tensorgate_vs_mlserver_c64_p99": vs("tensorgate", "mlserver", 64, "p99_ms"),
        "tensorgate_vs_kserve_c64_rps": vs("tensorgate", "kserve", 64, rps),
        "tensorgate_tf_vs_mlserver_c64_rps": vs("tensorgate_tf", "mlserver", 64, rps),
        "tensorgate_vs_echo_cpu_us_c64": vs("tensorgate", "echo", 64, "cpu_us_per_request"),
        "tensorgate_vs_echo_c1_p50": vs("tensorgate", "echo", 1, "p50_ms"),
        "workers_2_vs_1_c64_rps": vs("tensorgate_workers_2", "tensorgate_8_connections", 64, rps),
        "v2_rest_binary_vs_grpc_c64_rps": _ratio(
            rest("tensorgate", "v2_binary"), _at(oip, "tensorgate", "runs", 64, rps)
        ),
        "v2_rest_binary_vs_peer_c64_rps": _ratio(rest("tensorgate", "v2_binary"), faster_peer("v2_binary", "v2_json")),
        "v2_rest_json_vs_peer_c64_rps": _ratio(rest("tensorgate", "v2_json"), faster_peer("v2_json")),
        "tfserving_rest_vs_peer_json_c64_rps": _ratio(rest("tensorgate", "tfserving"), faster_peer("v2_json")),
        "stream_vs_in_process_256": _ratio(stream, _at(in_process, r.get("serving_runtime"), 256)),
        "stream_vs_signature_256": _ratio(stream, _at(in_process, "signature", 256)),
        "stream_vs_tflite_256": _ratio(stream, _at(in_process, "tflite", 256)),
        "unary_c64_vs_echo": _ratio(run("batching_on", 64, rps), run("echo", 64, rps)),
        "batching_on_vs_off_c64": _ratio(run("batching_on", 64, rps), run("batching_off", 64, rps)),
        "p99_c64_budget_ms": r["max_queue_delay_ms"] + 3 * on64["mean_batch_compute_ms"] if on64 else None,
        "rest_vs_grpc_c64_rps": _ratio(run("rest", 64, rps), run("batching_on", 64, rps)),
        "rest_vs_grpc_c64_p99": _ratio(run("rest", 64, "p99_ms"), run("batching_on", 64, "p99_ms")),
        "rest_added_p50_ms_c1": r["rest"][1]["p50_ms"] - r["batching_on"][1]["p50_ms"] if "rest" in r else None,
        "reload_p99_vs_steady": _ratio(run("reload", "switching", "p99_ms"), run("reload", "steady", "p99_ms")),
        "tracing_10pct_vs_off": _ratio(run("tracing", "sampled_10pct", rps), run("tracing", "off", rps)),
        "grpc_2_replicas_vs_1": _ratio(run("replicas", "2", "grpc_c64", rps), run("replicas", "1", "grpc_c64", rps)),
    }


class Goal(NamedTuple):
    """One line of the targets table: a measured figure against a goal (``op`` None: shown, no goal)."""

    name: str
    measured: float | None
    op: str | None = None
    goal: float = 0.0
    unit: str = ""
    oip: bool = False  # from the OIP side-by-side table (what `--only peers` prints)

    def result(self) -> str:
        if self.measured is None:
            return "not run"
        if self.op is None:
            return "-"
        met = self.measured >= self.goal if self.op == ">=" else self.measured <= self.goal
        return "pass" if met else "MISS"


def goals(r: dict[str, Any]) -> list[Goal]:
    """Issue #13's targets (first block) and the earlier ones, from the ratios and the runs."""
    q = r.get("ratios") or ratios(r)
    switching = _at(r, "reload", "switching")
    oip = _at(r, "oip", "targets") or {}
    rss = [_at(oip[key], "peak_rss_mb") for key in oip if key.startswith("tensorgate")] + [r.get("server_peak_rss_mb")]
    rss = [value for value in rss if value is not None]
    return [
        Goal("OIP c64 req/s: tensorgate / MLServer", q["tensorgate_vs_mlserver_c64_rps"], ">=", 2.0, oip=True),
        Goal("OIP c64 p99: tensorgate / MLServer", q["tensorgate_vs_mlserver_c64_p99"], "<=", 0.5, oip=True),
        Goal("OIP c64 req/s: tensorgate --runtime tensorflow / MLServer", q["tensorgate_tf_vs_mlserver_c64_rps"],
             ">=", 1.2, oip=True),
        Goal("OIP c64 CPU/request: tensorgate / echo", q["tensorgate_vs_echo_cpu_us_c64"], "<=", 1.8, oip=True),
        Goal("OIP c1 p50: tensorgate / echo", q["tensorgate_vs_echo_c1_p50"], "<=", 1.3, oip=True),
        Goal(f"StreamPredict / in-process batch 256 ({r.get('serving_runtime', 'signature')})",
             q["stream_vs_in_process_256"], ">=", 0.5),
        Goal("REST c64 / direct gRPC c64, req/s", q["rest_vs_grpc_c64_rps"], ">=", 0.8),
        Goal("REST c64 / direct gRPC c64, p99", q["rest_vs_grpc_c64_p99"], "<=", 1.5),
        Goal("OIP c64 req/s: tensorgate --workers 2 / 1 process", q["workers_2_vs_1_c64_rps"], oip=True),
        Goal("OIP c64 req/s: tensorgate / KServe", q["tensorgate_vs_kserve_c64_rps"], oip=True),
        Goal("v2 REST binary c64 / OIP gRPC c64, req/s", q["v2_rest_binary_vs_grpc_c64_rps"], ">=", 0.7, oip=True),
        Goal("v2 REST binary c64 / faster peer's v2 REST", q["v2_rest_binary_vs_peer_c64_rps"], ">=", 1.5, oip=True),
        Goal("v2 REST JSON c64 / faster peer's v2 JSON", q["v2_rest_json_vs_peer_c64_rps"], ">=", 1.5, oip=True),
        Goal("TF Serving REST c64 / faster peer's v2 JSON", q["tfserving_rest_vs_peer_json_c64_rps"], ">=", 1.5,
             oip=True),
        Goal("throughput with tracing at 10% / off (c16)", q["tracing_10pct_vs_off"], ">=", 0.95),
        Goal("peak RSS per server process (tensorgate)", max(rss) if rss else None, "<=", 1024, " MB", oip=True),
        Goal("unary c64 (batching on) / echo servicer", q["unary_c64_vs_echo"], ">=", 0.7),
        Goal("batching on / off at c64", q["batching_on_vs_off_c64"], ">=", 1.8),
        Goal("p99 at c64, batching on", _at(r, "batching_on", 64, "p99_ms"), "<=", q["p99_c64_budget_ms"] or 0, " ms"),
        Goal("REST added p50 at c1", q["rest_added_p50_ms_c1"], "<=", 1.0, " ms"),
        Goal("p99 during a version switch / steady (c16)", q["reload_p99_vs_steady"], "<=", 2.0),
        Goal(
            "failed requests during the switch",
            switching["errors"] + switching["answers_not_run_by_model"] if switching else None, "<=", 0,
        ),
        Goal("gRPC through Envoy c64: 2 replicas / 1", q["grpc_2_replicas_vs_1"]),
    ]  # fmt: skip


def print_goals(rows: list[Goal]) -> None:
    print("\n| target | measured | goal | result |")
    print("|---|---:|---|---|")
    for row in rows:
        measured = "" if row.measured is None else f"{_number(row.measured)}{row.unit}"
        goal = f"{row.op} {_number(row.goal)}{row.unit}" if row.op else ""
        print(f"| {row.name} | {measured} | {goal} | {row.result()} |")


def print_oip_table(oip: dict[str, Any]) -> None:
    print(
        "\n| OIP ModelInfer, 1 image, h2load | c | req/s | p50 ms | p99 ms | errors | mean batch | CPU µs/req "
        "| peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for target in oip["targets"].values():
        if "error" in target:
            print(f"| {target['name']} | | failed: {target['error'][:80]} | | | | | | |")
            continue
        for c, run in target["runs"].items():
            errors = run["errors"] + run.get("answers_not_run_by_model", 0)
            mean_batch = f"{run['mean_batch']:.1f}" if "mean_batch" in run else ""
            print(
                f"| {target['name']} | {c} | {run['requests_per_s']:,.0f} | {run['p50_ms']:.2f} | "
                f"{run['p99_ms']:.2f} | {errors} | {mean_batch} | {run['cpu_us_per_request']:.0f} | "
                f"{target['peak_rss_mb']:.0f} |"
            )
    for note in oip["notes"]:
        print(f"| {note} | | | | | | | | |")
    print_rest_table(oip)


def print_rest_table(oip: dict[str, Any]) -> None:
    """The REST loads of the targets that have REST ports (wrk, one connection per concurrent request)."""
    print("\n| REST, 1 image, wrk | API | c | req/s | p50 ms | p99 ms | errors | CPU µs/req |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for target in oip["targets"].values():
        for key, runs in target.get("rest", {}).items():
            if "error" in runs:
                print(f"| {target['name']} | {key} | | failed: {runs['error'][:80]} | | | | |")
                continue
            for c, run in runs.items():
                print(
                    f"| {target['name']} | {key} | {c} | {run['requests_per_s']:,.0f} | {run['p50_ms']:.2f} | "
                    f"{run['p99_ms']:.2f} | {run['errors']} | {_cpu(run)} |"
                )


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


def _cpu(run: dict[str, float]) -> str:
    """Server CPU per request (its whole process tree: Envoy and the supervisor included where they run)."""
    return f"{run['cpu_us_per_request']:.0f}" if "cpu_us_per_request" in run else ""


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def print_table(r: dict[str, Any]) -> None:
    print("\n| measurement | req/s or examples/s | p50 ms | p99 ms | errors | mean batch | CPU µs/req |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for runtime, rates in r["in_process_examples_per_s"].items():
        for batch, rate in rates.items():
            print(f"| in-process {runtime}, batch {batch} | {rate:,.0f} | | | | {batch} | |")
    for name in ("echo", "batching_on", "batching_off"):
        for c, run in r[name].items():
            errors = run["errors"] + run.get("answers_not_run_by_model", 0)
            mean_batch = f"{run['mean_batch']:.1f}" if "mean_batch" in run else ""
            print(
                f"| {name.replace('_', ' ')} unary, concurrency {c} | {run['requests_per_s']:,.0f} | "
                f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {errors} | {mean_batch} | {_cpu(run)} |"
            )
    for c, run in r["rest"].items():
        print(
            f"| REST through Envoy (wrk), concurrency {c} | {run['requests_per_s']:,.0f} | "
            f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['errors']} | | |"
        )
    for per_message, run in r["stream"].items():
        print(
            f"| StreamPredict 10,000 images, {per_message}/message (images/s; server / client CPU s) | "
            f"{run['images_per_s']:,.0f} | | | | | {run['server_cpu_s']:.2f} / {run['client_cpu_s']:.2f} |"
        )
    for phase, run in r["tracing"].items():
        print(
            f"| unary c16, tracing {phase.replace('_', ' ')} | {run['requests_per_s']:,.0f} | "
            f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['errors']} | | {_cpu(run)} |"
        )
    for phase in ("steady", "switching"):
        run = r["reload"][phase]
        errors = run["errors"] + run["answers_not_run_by_model"]
        print(
            f"| unary c16, {phase} (reload case) | {run['requests_per_s']:,.0f} | "
            f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {errors} | | {_cpu(run)} |"
        )
    print(f"| server peak RSS | {r['server_peak_rss_mb']:.0f} MB | | | | | |")


if __name__ == "__main__":
    sys.exit(main())
