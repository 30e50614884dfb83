"""A local development PKI for TLS and mutual TLS between clients, Envoy and the gRPC server.

`create_dev_pki` writes a self-signed CA and three leaf certificates signed by it:

- ``server``: the gRPC server's certificate (serverAuth).
- ``gateway``: Envoy's certificate (serverAuth and clientAuth): it presents it to REST/gRPC callers,
  and as its client certificate towards the server.
- ``client``: a client certificate (clientAuth) for callers of the server or of Envoy.

This is for development and tests only: the CA key sits unencrypted next to the certificates, and
anyone who holds it can issue certificates that every party here trusts. In production use
certificates from your own PKI (cert-manager, Vault, a cloud CA service, ...).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLOCK_SKEW = datetime.timedelta(minutes=5)  # certificates are valid from this long ago, for machines whose clock lags
ORGANIZATION = "tensorgate (development)"


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class DevPki:
    ca: Path
    ca_key: Path
    server: CertPair
    gateway: CertPair
    client: CertPair


def create_dev_pki(out_dir: Path, hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 365) -> DevPki:
    """Write a CA (``ca.pem``, ``ca-key.pem``) and the ``server``, ``gateway`` and ``client`` certificates to out_dir.

    `hosts` become the subject alternative names of the server and gateway certificates: entries that
    parse as IP addresses are IP address SANs, the others DNS names. If out_dir already holds a CA, it
    is reused and only the leaf certificates are issued again, so clients that trust the CA keep working.
    """
    if isinstance(hosts, str) or not hosts:
        raise ValueError(f"hosts must be a non-empty sequence of host names or IP addresses, got {hosts!r}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_path, ca_key_path = out_dir / "ca.pem", out_dir / "ca-key.pem"
    if ca_path.exists() and ca_key_path.exists():
        ca_cert, ca_key = _load_ca(ca_path, ca_key_path, now)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _create_ca(ca_key, now, days)
        _write_key(ca_key_path, ca_key)
        _write_cert(ca_path, ca_cert)

    sans = [_san(host) for host in hosts]
    server_auth, client_auth = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH

    def issue(
        name: str, common_name: str, usages: list[x509.ObjectIdentifier], alt_names: list[x509.GeneralName]
    ) -> CertPair:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _create_leaf(key.public_key(), common_name, usages, alt_names, ca_cert, ca_key, now, days)
        pair = CertPair(cert=out_dir / f"{name}.pem", key=out_dir / f"{name}-key.pem")
        _write_key(pair.key, key)
        _write_cert(pair.cert, cert)
        return pair

    return DevPki(
        ca=ca_path,
        ca_key=ca_key_path,
        server=issue("server", "tensorgate-server", [server_auth], sans),
        gateway=issue("gateway", "tensorgate-gateway", [server_auth, client_auth], sans),
        client=issue("client", "tensorgate-client", [client_auth], []),
    )


def _load_ca(
    cert_path: Path, key_path: Path, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load an existing CA, refusing one that could only issue certificates nobody can verify."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an ECDSA private key")
    if key.public_key() != cert.public_key():
        raise ValueError(f"{key_path} is not the private key of {cert_path}")
    if cert.not_valid_after_utc <= now:
        raise ValueError(f"the CA {cert_path} has expired; delete it and {key_path} to create a new one")
    return cert, key


def _create_ca(key: ec.EllipticCurvePrivateKey, now: datetime.datetime, days: int) -> x509.Certificate:
    name = _name("tensorgate development CA")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _create_leaf(
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    alt_names: list[x509.GeneralName],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    days: int,
) -> x509.Certificate:
    # A leaf that outlives its (reused) CA could not be verified past the CA's end anyway.
    not_valid_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_valid_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    _write(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write data to path with the given mode, set before any byte is written (an existing file keeps its old
    mode on open, and the umask applies to a new one), so a private key is never readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        os.chmod(path, mode)
        file.write(data)
