"""The development PKI: certificate contents, CA reuse, and real mutual-TLS handshakes with a gRPC server."""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tensorgate.server.commands.certs import CertPair, DevPki, create_dev_pki

SERVER_AUTH, CLIENT_AUTH = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return create_dev_pki(tmp_path_factory.mktemp("pki") / "certs")


@pytest.fixture(scope="module")
def port(pki: DevPki) -> Iterator[int]:
    """A gRPC server on loopback that serves health over TLS with the `server` pair and requires a client
    certificate signed by the dev CA."""
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key.read_bytes(), pki.server.cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield bound
    finally:
        server.stop(grace=None)


def check(channel: grpc.Channel) -> health_pb2.HealthCheckResponse.ServingStatus:
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3).status


def tls_channel(port: int, ca: Path, pair: CertPair | None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=pair.key.read_bytes() if pair else None,
        certificate_chain=pair.cert.read_bytes() if pair else None,
    )
    # 127.0.0.1, not localhost: the server's certificate must match by its IP address SAN.
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def test_certificates(pki: DevPki) -> None:
    ca = load(pki.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).critical
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key_usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert key_usage.key_cert_sign and key_usage.crl_sign
    assert ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    ca.verify_directly_issued_by(ca)

    expected_usages = {"server": [SERVER_AUTH], "gateway": [SERVER_AUTH, CLIENT_AUTH], "client": [CLIENT_AUTH]}
    for name, usages in expected_usages.items():
        pair: CertPair = getattr(pki, name)
        cert = load(pair.cert)
        cert.verify_directly_issued_by(ca)
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert mode(pair.key) == 0o600
        assert mode(pair.cert) == 0o644
        if name != "client":
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
            assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    client_cn = load(pki.client.cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert client_cn == "tensorgate-client"
    assert mode(pki.ca_key) == 0o600
    assert mode(pki.ca) == 0o644


def test_custom_hosts(tmp_path: Path) -> None:
    pki = create_dev_pki(tmp_path, hosts=["tensorgate.internal", "10.0.0.5", "::1"], days=7)
    sans = load(pki.gateway.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["tensorgate.internal"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("::1")]
    with pytest.raises(ValueError, match="hosts"):
        create_dev_pki(tmp_path, hosts="localhost")


def test_second_run_keeps_the_ca_and_issues_new_leaves(tmp_path: Path) -> None:
    first = create_dev_pki(tmp_path)
    ca_bytes, ca_key_bytes = first.ca.read_bytes(), first.ca_key.read_bytes()
    old_serials = {name: load(getattr(first, name).cert).serial_number for name in ("server", "gateway", "client")}
    first.server.key.chmod(0o644)  # an existing key file with a loose mode is tightened when it is rewritten

    second = create_dev_pki(tmp_path)

    assert second == first
    assert second.ca.read_bytes() == ca_bytes
    assert second.ca_key.read_bytes() == ca_key_bytes
    ca = load(second.ca)
    for name, old_serial in old_serials.items():
        cert = load(getattr(second, name).cert)
        assert cert.serial_number != old_serial
        cert.verify_directly_issued_by(ca)
    assert mode(second.server.key) == 0o600


def test_mutual_tls_with_the_client_certificate(pki: DevPki, port: int) -> None:
    assert check(tls_channel(port, pki.ca, pki.client)) == health_pb2.HealthCheckResponse.SERVING


def test_mutual_tls_with_the_gateway_certificate(pki: DevPki, port: int) -> None:
    """Envoy uses the gateway pair as its client certificate towards the server."""
    assert check(tls_channel(port, pki.ca, pki.gateway)) == health_pb2.HealthCheckResponse.SERVING


def test_no_client_certificate_is_refused(pki: DevPki, port: int) -> None:
    with pytest.raises(grpc.RpcError) as error:
        check(tls_channel(port, pki.ca, None))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_of_another_ca_is_refused(pki: DevPki, port: int, tmp_path: Path) -> None:
    other = create_dev_pki(tmp_path)
    with pytest.raises(grpc.RpcError) as error:
        check(tls_channel(port, pki.ca, other.client))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_certificate_is_refused_as_client_certificate(pki: DevPki, port: int) -> None:
    """The server pair has no clientAuth usage, and BoringSSL enforces it ("unsupported certificate purpose")."""
    with pytest.raises(grpc.RpcError) as error:
        check(tls_channel(port, pki.ca, pki.server))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_server_of_another_ca(pki: DevPki, port: int, tmp_path: Path) -> None:
    other = create_dev_pki(tmp_path)
    with pytest.raises(grpc.RpcError) as error:
        check(tls_channel(port, other.ca, pki.client))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in (error.value.details() or "")


def test_plaintext_is_refused(port: int) -> None:
    with pytest.raises(grpc.RpcError) as error:
        check(grpc.insecure_channel(f"127.0.0.1:{port}"))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
