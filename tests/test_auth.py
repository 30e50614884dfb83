"""API keys and scopes, on direct gRPC and through Envoy; rotation without restart; keys never logged."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tensorgate.clients.client import TensorgateClient
from tensorgate.v1 import model_service_pb2_grpc
from tensorgate.v1.model_service_pb2 import ReloadModelRequest

from conftest import CLI, ServerProcess, start_server

X = np.zeros((1, 28, 28), np.float32)


def add_key(keys_file: Path, name: str, scopes: str) -> str:
    result = subprocess.run(
        [*CLI, "keys", "add", name, "--scopes", scopes, "--file", str(keys_file)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def secured(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path, dict]]:
    root = tmp_path_factory.mktemp("auth-repository")
    shutil.copytree(repository / "mnist", root / "mnist")
    keys_file = tmp_path_factory.mktemp("auth") / "keys.toml"
    keys = {"predict": add_key(keys_file, "batch-job", "predict"), "admin": add_key(keys_file, "ops", "predict,admin")}
    assert keys["predict"] not in keys_file.read_text()  # only hashes are stored
    limits = ("--rate-limit-per-key", "50", "--rate-limit-burst", "50")
    stack = start_server(root, keys_file.parent / "stack.log", "--api-keys-file", str(keys_file), *limits, gateway=True)
    yield stack, keys_file, keys
    assert stack.stop() == 0
    log = stack.log()
    assert keys["predict"] not in log and keys["admin"] not in log  # keys never reach the logs


def rest(stack: ServerProcess, method: str, path: str, key: str | None, body: dict | None = None) -> tuple[int, dict]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{stack.gateway_url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_grpc_needs_a_key_with_the_right_scope(secured: tuple[ServerProcess, Path, dict]) -> None:
    stack, _, keys = secured
    for key in (None, "tg_not-a-key"):
        with TensorgateClient(stack.target, api_key=key) as client, pytest.raises(grpc.RpcError) as raised:
            client.predict_tensors("mnist", {"keras_tensor": X})
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with TensorgateClient(stack.target) as client, pytest.raises(grpc.RpcError) as raised:
        list(client.stream_predict_batches("mnist", [{"keras_tensor": X}]))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with TensorgateClient(stack.target, api_key=keys["predict"]) as client:
        assert client.predict("mnist", X).shape == (1, 10)
        assert len(list(client.stream_predict("mnist", iter(X)))) == 1
    with grpc.insecure_channel(stack.target) as channel:
        admin = model_service_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            admin.ReloadModel(
                ReloadModelRequest(model="mnist"), metadata=(("authorization", f"Bearer {keys['predict']}"),)
            )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        admin.ReloadModel(ReloadModelRequest(model="mnist"), metadata=(("x-api-key", keys["admin"]),), timeout=60)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # health stays public
    assert stack.metric("tensorgate_requests_rejected_total", reason="unauthenticated") >= 3
    assert stack.metric("tensorgate_requests_rejected_total", reason="unauthorized") >= 1


def test_rest_maps_to_401_and_403(secured: tuple[ServerProcess, Path, dict]) -> None:
    stack, _, keys = secured
    status, body = rest(stack, "GET", "/v1/models", None)
    assert status == 401 and body["code"] == 16
    status, body = rest(stack, "POST", "/v1/models/mnist:reload", keys["predict"], {})
    assert status == 403 and body["code"] == 7 and "admin" in body["message"]
    assert rest(stack, "GET", "/v1/models", keys["predict"])[0] == 200
    assert rest(stack, "GET", "/openapi.json", None)[0] == 200  # the document stays public


def test_keys_rotate_without_restart(secured: tuple[ServerProcess, Path, dict]) -> None:
    stack, keys_file, _ = secured
    fresh = add_key(keys_file, "rotated", "predict")
    deadline = time.monotonic() + 10
    while True:
        try:
            with TensorgateClient(stack.target, api_key=fresh) as client:
                client.predict("mnist", X)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED and time.monotonic() < deadline
            time.sleep(0.3)
    subprocess.run([*CLI, "keys", "revoke", "rotated", "--file", str(keys_file)], check=True)
    while True:
        try:
            with TensorgateClient(stack.target, api_key=fresh) as client:
                client.predict("mnist", X)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        assert time.monotonic() < deadline, "revoked key still accepted"
        time.sleep(0.3)


def test_a_key_over_its_rate_is_refused_and_others_are_not(secured: tuple[ServerProcess, Path, dict]) -> None:
    stack, keys_file, keys = secured
    noisy = add_key(keys_file, "noisy", "predict")
    time.sleep(1.5)  # the server re-reads the key file
    codes = []
    with TensorgateClient(stack.target, api_key=noisy) as client:
        for _ in range(120):
            try:
                client.model_status("mnist")
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert "rate limit of 50 requests/s for 'noisy' exceeded" in exc.details()
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and codes[0] == grpc.StatusCode.OK
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    with TensorgateClient(stack.target, api_key=keys["predict"]) as client:  # another key is unaffected
        assert client.predict("mnist", X).shape == (1, 10)
