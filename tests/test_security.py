"""The secured stack: TLS at Envoy (HTTP/2 by ALPN), mTLS from Envoy to the server, API keys and JWTs
checked at the edge and in the server, scopes per RPC and per model, per-key rate limits; keys and tokens
never logged."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tensorgate.clients.client import ClientTls, TensorgateClient
from tensorgate.v1 import model_service_pb2_grpc
from tensorgate.v1.model_service_pb2 import ReloadModelRequest

from conftest import CLI, ServerProcess, add_key, start_server
from jwt_tokens import TokenIssuer

# A payload value distinctive enough to grep the logs for.
MARKER = 0.123456789
X = np.full((1, 28, 28), MARKER, np.float32)


def wait_until_accepted(secured: Secured, key: str, timeout_s: float = 30) -> None:
    """Until the server has re-read its key file and accepts ``key`` (polled a few times a second: each refusal
    counts against the failed-authentication budget of the test's address)."""
    deadline = time.monotonic() + timeout_s
    with secured.server_client(api_key=key) as client:
        while True:
            try:
                client.model_status("mnist")
                return
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
            assert time.monotonic() < deadline, "the new key was never accepted"
            time.sleep(0.25)


@dataclass
class Secured:
    stack: ServerProcess
    keys_file: Path
    keys: dict[str, str]
    issuer: TokenIssuer
    certs: Path
    secrets: list[str]  # every key and token handed out, to grep the logs for at the end

    def server_client(self, **credentials: str) -> TensorgateClient:
        """Straight to the server's mTLS port, with the client certificate."""
        return TensorgateClient(self.stack.target, tls=self.stack.tls, **credentials)

    def gateway_client(self, **credentials: str) -> TensorgateClient:
        """gRPC through Envoy's TLS listener (no client certificate needed there)."""
        return TensorgateClient(self.stack.gateway_target, tls=ClientTls(self.certs / "ca.pem"), **credentials)

    def token(self, **claims: object) -> str:
        token = self.issuer.token(**claims)  # type: ignore[arg-type]
        self.secrets.append(token)
        return token


@pytest.fixture(scope="module")
def secured(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secure-repository")
    for model in ("mnist", "scorer"):
        shutil.copytree(repository / model, root / model)
    work = tmp_path_factory.mktemp("security")
    certs = work / "certs"
    subprocess.run([*CLI, "certs", "--out", str(certs)], check=True, capture_output=True)
    keys_file = work / "keys.toml"
    keys = {
        "predict": add_key(keys_file, "batch-job", "predict"),
        "admin": add_key(keys_file, "ops", "predict,admin"),
        "mnist-only": add_key(keys_file, "mnist-reader", "predict", models="mnist"),
    }
    assert not any(key in keys_file.read_text() for key in keys.values())  # only hashes are stored
    issuer = TokenIssuer(work / "jwks.json")
    config = work / "tensorgate.toml"
    config.write_text(
        f"""
api_keys_file = "{keys_file}"
rate_limit_per_key = 50
rate_limit_burst = 50

[jwt]
jwks_file = "{work / "jwks.json"}"
issuer = "https://issuer.test"
audiences = ["tensorgate"]

[tls]
cert_file = "{certs / "server.pem"}"
key_file = "{certs / "server-key.pem"}"
ca_file = "{certs / "ca.pem"}"

[gateway_tls]
cert_file = "{certs / "gateway.pem"}"
key_file = "{certs / "gateway-key.pem"}"

[upstream_tls]
cert_file = "{certs / "gateway.pem"}"
key_file = "{certs / "gateway-key.pem"}"
ca_file = "{certs / "ca.pem"}"
"""
    )
    client_tls = ClientTls(certs / "ca.pem", certs / "client.pem", certs / "client-key.pem")
    gateway_ssl = ssl.create_default_context(cafile=certs / "ca.pem")
    stack = start_server(
        root, work / "stack.log", "--config", str(config), gateway=True, tls=client_tls, gateway_ssl=gateway_ssl
    )
    secured = Secured(stack, keys_file, keys, issuer, certs, list(keys.values()))
    yield secured
    assert stack.stop() == 0
    log = stack.log()
    for secret in secured.secrets:
        assert secret not in log, "a key or token reached the logs"
    assert str(MARKER)[:8] not in log, "a tensor payload reached the logs"


def rest(
    secured: Secured, method: str, path: str, body: dict | None = None, **headers: str
) -> tuple[int, dict, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {name.replace("_", "-"): value for name, value in headers.items()}
    request = urllib.request.Request(f"{secured.stack.gateway_url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30, context=secured.stack.gateway_ssl) as response:
            return response.status, _json(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read()), dict(exc.headers)


def _json(raw: bytes) -> dict:
    """A JSON body, or {"text": ...} for the pages and Envoy's plain-text refusals."""
    try:
        return json.loads(raw or b"{}")
    except json.JSONDecodeError:
        return {"text": raw.decode(errors="replace")}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_plaintext_to_tls_listeners_fails(secured: Secured) -> None:
    for target in (secured.stack.target, secured.stack.gateway_target):
        with grpc.insecure_channel(target) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    plain_url = secured.stack.gateway_url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(f"{plain_url}/openapi.json", timeout=5)


def test_server_mtls_port_needs_a_client_certificate(secured: Secured) -> None:
    without_cert = ClientTls(secured.certs / "ca.pem")
    with TensorgateClient(secured.stack.target, tls=without_cert, api_key=secured.keys["predict"]) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.predict("mnist", X)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # A TLS handshake without a certificate is refused by the server itself.
    context = ssl.create_default_context(cafile=secured.certs / "ca.pem")
    context.set_alpn_protocols(["h2"])
    host, port = secured.stack.target.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                answer = tls.recv(1)  # TLS 1.3: the server checks the certificate after the client's Finished
        except (ssl.SSLError, ConnectionError):
            answer = b""
    assert answer == b"", "the server answered a client without a certificate"
    with secured.server_client(api_key=secured.keys["predict"]) as client:  # with one, it works
        assert client.predict("mnist", X).shape == (1, 10)


def test_gateway_negotiates_http2_by_alpn(secured: Secured) -> None:
    context = ssl.create_default_context(cafile=secured.certs / "ca.pem")
    context.set_alpn_protocols(["h2", "http/1.1"])
    host, port = secured.stack.gateway_target.split(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"


def test_no_credentials_is_unauthenticated(secured: Secured) -> None:
    with secured.server_client() as client, pytest.raises(grpc.RpcError) as raised:
        client.predict("mnist", X)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with secured.gateway_client() as client, pytest.raises(grpc.RpcError) as raised:
        list(client.stream_predict_batches("mnist", [{"keras_tensor": X}]))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    status, body, _ = rest(secured, "GET", "/v1/models")
    assert status == 401 and body["code"] == 16
    assert rest(secured, "GET", "/openapi.json")[0] == 200  # the document stays public
    assert rest(secured, "GET", "/docs")[0] == 200
    with grpc.secure_channel(secured.stack.gateway_target, ClientTls(secured.certs / "ca.pem").credentials()) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # health stays public
    assert secured.stack.metric("tensorgate_requests_rejected_total", reason="unauthenticated") >= 2


def test_api_keys_and_scopes(secured: Secured) -> None:
    keys = secured.keys
    for client in (secured.server_client(api_key=keys["predict"]), secured.gateway_client(api_key=keys["predict"])):
        with client:
            assert client.predict("mnist", X).shape == (1, 10)
            assert len(list(client.stream_predict("mnist", iter(X)))) == 1
    with secured.server_client(api_key="tg_not-a-key") as client, pytest.raises(grpc.RpcError) as raised:
        client.predict("mnist", X)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    credentials = secured.stack.tls.credentials() if secured.stack.tls else None
    assert credentials is not None
    with grpc.secure_channel(secured.stack.target, credentials) as channel:
        admin = model_service_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            admin.ReloadModel(ReloadModelRequest(model="mnist"), metadata=(("x-api-key", keys["predict"]),))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        admin.ReloadModel(ReloadModelRequest(model="mnist"), metadata=(("x-api-key", keys["admin"]),), timeout=60)
    status, body, _ = rest(secured, "POST", "/v1/models/mnist:reload", {}, x_api_key=keys["predict"])
    assert status == 403 and body["code"] == 7 and "admin" in body["message"]
    assert rest(secured, "GET", "/v1/models", x_api_key=keys["predict"])[0] == 200
    assert secured.stack.metric("tensorgate_requests_rejected_total", reason="unauthorized") >= 2


def test_a_key_limited_to_one_model(secured: Secured) -> None:
    with secured.gateway_client(api_key=secured.keys["mnist-only"]) as client:
        assert client.predict("mnist", X).shape == (1, 10)
        assert [model.name for model in client.list_models()] == ["mnist"]
        with pytest.raises(grpc.RpcError) as raised:
            client.model_status("scorer")
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as raised:
            client.model_metadata("scorer")
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_valid_jwt_with_its_scopes(secured: Secured) -> None:
    token = secured.token(scopes="predict")
    with secured.server_client(token=token) as client:
        assert client.predict("mnist", X).shape == (1, 10)
    with secured.gateway_client(token=token) as client:
        assert client.predict("mnist", X).shape == (1, 10)
    body = {"inputs": {"keras_tensor": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 28, 28], "floatValues": [0] * 784}}}
    status, answer, _ = rest(secured, "POST", "/v1/models/mnist:predict", body, **bearer(token))
    assert status == 200 and len(answer["outputs"]["output_0"]["floatValues"]) == 10
    status, answer, _ = rest(secured, "POST", "/v1/models/mnist:reload", {}, **bearer(token))
    assert status == 403 and answer["code"] == 7
    admin_token = secured.token(scopes="predict admin")
    assert rest(secured, "POST", "/v1/models/mnist:reload", {}, **bearer(admin_token))[0] == 200


def test_v2_rest_through_the_tls_gateway_with_jwt_and_keys(secured: Secured) -> None:
    """Envoy passes /v2 to the servers' v2 REST ports over mTLS; JWT at the edge, scopes in the server, as for
    every route; the health checks stay public."""
    body = {"inputs": [{"name": "keras_tensor", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    assert rest(secured, "GET", "/v2/health/ready")[:2] == (200, {"ready": True})
    status, answer, _ = rest(secured, "POST", "/v2/models/mnist/infer", body)
    assert status == 401 and list(answer) == ["error"], answer
    token = secured.token(scopes="predict")
    status, answer, _ = rest(secured, "POST", "/v2/models/mnist/infer", body, **bearer(token))
    assert status == 200 and len(answer["outputs"][0]["data"]) == 10, answer
    status, answer, _ = rest(secured, "POST", "/v2/repository/models/mnist/load", {}, x_api_key=secured.keys["predict"])
    assert status == 403 and "admin" in answer["error"], answer
    assert rest(secured, "POST", "/v2/repository/index", {}, x_api_key=secured.keys["predict"])[0] == 200
    expired = secured.issuer.expired()
    secured.secrets.append(expired)
    status, answer, _ = rest(secured, "GET", "/v2/models/mnist", **bearer(expired))
    assert status == 401 and list(answer) == ["error"] and answer["error"], answer  # Envoy's jwt_authn refused it


@pytest.mark.parametrize("attack", ["expired", "wrong_signature", "wrong_audience", "wrong_issuer", "alg_none"])
def test_bad_jwt_is_refused_at_the_edge_and_in_the_server(secured: Secured, attack: str) -> None:
    token = getattr(secured.issuer, attack)()
    secured.secrets.append(token)
    status, body, headers = rest(secured, "GET", "/v1/models", **bearer(token))
    assert status == 401, body
    assert "www-authenticate" in {name.lower() for name in headers}  # Envoy's jwt_authn refused it
    with secured.gateway_client(token=token) as client, pytest.raises(grpc.RpcError) as raised:
        client.list_models()
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with secured.server_client(token=token) as client, pytest.raises(grpc.RpcError) as raised:
        client.list_models()  # straight to the server: its own check refuses it too
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert token not in (raised.value.details() or "")


def test_keys_rotate_without_restart(secured: Secured) -> None:
    fresh = add_key(secured.keys_file, "rotated", "predict")
    secured.secrets.append(fresh)
    deadline = time.monotonic() + 10
    while True:
        try:
            with secured.server_client(api_key=fresh) as client:
                client.predict("mnist", X)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED and time.monotonic() < deadline
            time.sleep(0.3)
    subprocess.run([*CLI, "keys", "revoke", "rotated", "--file", str(secured.keys_file)], check=True)
    while True:
        try:
            with secured.server_client(api_key=fresh) as client:
                client.predict("mnist", X)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        assert time.monotonic() < deadline, "revoked key still accepted"
        time.sleep(0.3)


def test_a_key_over_its_rate_is_refused_and_others_are_not(secured: Secured) -> None:
    noisy = add_key(secured.keys_file, "noisy", "predict")
    secured.secrets.append(noisy)
    wait_until_accepted(secured, noisy)
    codes = []
    with secured.server_client(api_key=noisy) as client:
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
    statuses = [rest(secured, "GET", "/v1/models/mnist", x_api_key=noisy) for _ in range(80)]
    limited = [(body, headers) for status, body, headers in statuses if status == 429]
    assert limited, "REST calls over the rate were not refused"
    body, headers = limited[0]
    assert body["code"] == 8 and int(headers["retry-after"]) >= 1
    assert secured.stack.metric("tensorgate_requests_rejected_total", reason="rate_limited") >= len(limited)
    with secured.gateway_client(api_key=secured.keys["predict"]) as client:  # another key is unaffected
        assert client.predict("mnist", X).shape == (1, 10)
