"""Test certificates made with ``cryptography``: a CA, a server pair for loopback, client pairs.

Shared by the tests that need TLS peers (the rsyslog receiver, the EHR front in
TLS mode): every file is written under the test's temporary directory, keys
0600, certificates valid for one day.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "make_pki"]


@dataclass
class Pki:
    """PEM files: a CA, the receiver's certificate, a client pair, and a stranger CA's pair."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path
    stranger_cert: Path
    stranger_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def make_pki(where: Path) -> Pki:
    where.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key, stranger_key = _key(), _key()
    ca = _cert("audit test CA", ca_key, None, ca=True)
    stranger = _cert("some other CA", stranger_key, None, ca=True)
    files = {}
    for name, cert, key in (("ca", ca, ca_key), ("stranger-ca", stranger, stranger_key)):
        (where / f"{name}.pem").write_bytes(cert.public_bytes(pem))
        files[name] = (cert, key)
    pairs = {
        "server": ("localhost", files["ca"], True),
        "client": ("jupyterhub-smart hub", files["ca"], False),
        "stranger": ("jupyterhub-smart hub", files["stranger-ca"], False),
    }
    for name, (subject, issuer, server) in pairs.items():
        key = _key()
        cert = _cert(subject, key, issuer, server=server)
        (where / f"{name}.pem").write_bytes(cert.public_bytes(pem))
        _write_key(key, where / f"{name}-key.pem")
    return Pki(
        ca=where / "ca.pem",
        server_cert=where / "server.pem",
        server_key=where / "server-key.pem",
        client_cert=where / "client.pem",
        client_key=where / "client-key.pem",
        stranger_ca=where / "stranger-ca.pem",
        stranger_cert=where / "stranger.pem",
        stranger_key=where / "stranger-key.pem",
    )
