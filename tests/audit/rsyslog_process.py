"""A private Debian rsyslog on loopback, with certificates the test makes.

Never the system's syslog: its own config file, work directory, pid file and
output file under the test's temporary directory, on free unprivileged ports.
Inputs: RFC 5425 TLS (gtls driver, mutual TLS: the client certificate must be
signed by the test CA), plain TCP and UDP. Each received message is written as
one line: ``severity facility msgid app-name msg``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def available() -> bool:
    """rsyslogd and its GnuTLS driver are installed (``make test`` installs them)."""
    return Path(RSYSLOGD).exists() and any(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so"))


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


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Rsyslog:
    """One private rsyslogd; :meth:`start` and :meth:`stop` may be called again and again."""

    def __init__(self, where: Path, pki: Pki) -> None:
        self.where = where
        self.pki = pki
        self.tls_port = free_port()
        self.tcp_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.output = where / "received.log"
        self.config = where / "rsyslog.conf"
        self.pidfile = where / "rsyslogd.pid"
        self.stderr = where / "rsyslogd.stderr"
        (where / "work").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"""
global(
  workDirectory="{where / "work"}"
  defaultNetstreamDriverCAFile="{pki.ca}"
  defaultNetstreamDriverCertFile="{pki.server_cert}"
  defaultNetstreamDriverKeyFile="{pki.server_key}"
)
module(load="imtcp" maxSessions="20")
module(load="imudp")
input(type="imtcp" port="{self.tls_port}" address="127.0.0.1" name="tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
input(type="imtcp" port="{self.tcp_port}" address="127.0.0.1" name="tcp")
input(type="imudp" port="{self.udp_port}" address="127.0.0.1" name="udp")
template(name="audit" type="string"
         string="%syslogseverity% %syslogfacility% %msgid% %app-name% %msg%\\n")
action(type="omfile" file="{self.output}" template="audit" flushOnTXEnd="on")
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.pidfile.unlink(missing_ok=True)
        with self.stderr.open("ab") as err:
            self.process = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.config), "-i", str(self.pidfile)],
                stdout=err,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {self.stderr.read_text()[-2000:]}")
            try:
                for port in (self.tls_port, self.tcp_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                if self._udp_bound():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("rsyslogd did not start listening")

    def _udp_bound(self) -> bool:
        """A datagram to a port nobody has bound comes back as ICMP 'port unreachable'."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("127.0.0.1", self.udp_port))
            probe.settimeout(0.2)
            probe.send(b"<14>1 - - readiness-probe - - - ready")
            try:
                probe.recv(1)
            except ConnectionRefusedError:
                return False
            except TimeoutError:
                return True
            return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def lines(self) -> list[str]:
        if not self.output.exists():
            return []
        return self.output.read_text(encoding="utf-8").splitlines()
