"""Audit writer throughput with the syslog and FHIR sinks attached, against none.

The sinks read their backlog from the log itself, each from its own thread
with its own durable cursor: the writer only wakes them after each durable
batch (no copy, no fsync on its thread). Side by side, 64 concurrent callers
recording for a few seconds each:

* no sink;
* the syslog sink (TCP, RFC 6587 framing) to a receiver process that reads and
  discards;
* the FHIR sink to an HTTP receiver process that answers 201 to every POST;
* both sinks;
* no sink again (the ratios are to the mean of the two runs without sinks).

Printed: events/s acknowledged (durable in the log), the ratio to no sink, and
how long the sinks took, after the callers stopped, to deliver the rest.

Run: ``python -m bench audit_sinks``.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from jupyterhub_smart.audit import AuditLog, FHIRSink, SyslogSink, hub_event

CONCURRENCY = 64
SECONDS = 3.0

_RECEIVERS = {
    "syslog": """
        import socket, sys
        server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
        while True:
            conn, _ = server.accept()
            while conn.recv(1 << 20):
                pass
    """,
    "fhir": """
        import sys
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()
            def log_message(self, *args):
                pass
        ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _event(i: int) -> dict[str, Any]:
    return hub_event(
        "token-issued",
        username=f"user{i % 50}",
        fhir_user=f"Practitioner/{i % 50}",
        patient=f"Patient/{i % 500}",
        issuer="https://ehr.example/fhir",
        client_address="10.0.0.1",
        user_agent="Mozilla/5.0",
        token_hash="ab" * 32,
        server_name="",
    )


async def _throughput(log: AuditLog, seconds: float) -> int:
    done = 0
    stop = time.perf_counter() + seconds

    async def caller(n: int) -> None:
        nonlocal done
        i = n
        while time.perf_counter() < stop:
            await log.record(_event(i))
            done += 1
            i += CONCURRENCY

    await asyncio.gather(*(caller(n) for n in range(CONCURRENCY)))
    return done


def _run(where: Path, kinds: tuple[str, ...], ports: dict[str, int]) -> tuple[float, float]:
    sinks: list[Any] = []
    if "syslog" in kinds:
        sinks.append(SyslogSink(f"tcp://127.0.0.1:{ports['syslog']}", where / "syslog-spool"))
    if "fhir" in kinds:
        sinks.append(FHIRSink(f"http://127.0.0.1:{ports['fhir']}/fhir", where / "fhir-spool"))
    log = AuditLog(where / "audit.jsonl", sinks=sinks)
    try:
        start = time.perf_counter()
        done = asyncio.run(_throughput(log, SECONDS))
        rate = done / (time.perf_counter() - start)
        drained = time.perf_counter()
        while any(s.pending() for s in sinks):
            time.sleep(0.05)
        return rate, time.perf_counter() - drained
    finally:
        log.close()


def main() -> None:
    ports = {kind: _free_port() for kind in _RECEIVERS}
    receivers = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(ports[kind])])
        for kind, code in _RECEIVERS.items()
    ]
    try:
        for kind in _RECEIVERS:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", ports[kind]), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
        print(f"{CONCURRENCY} concurrent callers, {SECONDS:g} s each; durable = fsynced")
        print(f"{'sinks':<14}{'events/s':>10}{'vs none':>10}{'drain after (s)':>18}")
        # "none" runs first and last, and the ratios are to the mean of the two: a busy
        # machine's load drifts over the minute the rows take.
        order: tuple[tuple[str, ...], ...] = ((), ("syslog",), ("fhir",), ("syslog", "fhir"), ())
        results = []
        for kinds in order:
            with tempfile.TemporaryDirectory() as tmp:
                results.append((kinds, *_run(Path(tmp), kinds, ports)))
        base = (results[0][1] + results[-1][1]) / 2
        for kinds, rate, drain in results:
            name = "+".join(kinds) or "none"
            print(f"{name:<14}{rate:>10,.0f}{rate / base:>10.2f}{drain:>18.2f}")
    finally:
        for receiver in receivers:
            receiver.terminate()
            receiver.wait()


if __name__ == "__main__":
    main()
