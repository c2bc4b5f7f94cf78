"""A private Debian rsyslog on loopback, with certificates the test makes.

Never the system's syslog: its own config file, work directory, pid file and
output file under the test's temporary directory, on free unprivileged ports.
Inputs: RFC 5425 TLS (gtls driver, mutual TLS: the client certificate must be
signed by the test CA), plain TCP and UDP. Each received message is written as
one line: ``severity facility msgid app-name msg``. Certificates: :mod:`pki`.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from pki import Pki
from sandbox_process import free_port

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def available() -> bool:
    """rsyslogd and its GnuTLS driver are installed (``make test`` installs them)."""
    return Path(RSYSLOGD).exists() and any(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so"))


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
