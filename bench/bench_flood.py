"""Unauthenticated login flood: request rate, audit bytes per second, and a sign-in in flight.

A real JupyterHub with the SMARTAuthenticator and a real sandbox EHR. A user starts
a sign-in and stops on the EHR's page; then CONCURRENCY clients send
``GET /hub/oauth_login?iss=<configured issuer>`` from one address for FLOOD_SECONDS;
then the user finishes the sign-in. Printed: the flood's rate and status codes, the
audit log's growth in bytes per second (and per hour at that rate), and whether the
user's sign-in still completed. ``max_pending_logins`` is 500 here (10,000 by
default) so that an eviction shows within the run.

To measure code from another commit (the "before" figures), check it out and run this
file with that checkout first on the path::

    git worktree add /tmp/old 3d7d503
    cp bench/bench_flood.py /tmp/old/bench/
    cd /tmp/old && PYTHONPATH=/tmp/old /path/to/.venv/bin/python -m bench.bench_flood

Run: ``python -m bench flood`` (or ``python -m bench.bench_flood``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urljoin

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ["PATH"] = f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"

from hub_process import Hub, run_hub  # noqa: E402
from sandbox_process import free_port, run_sandbox  # noqa: E402

CONCURRENCY = 16
FLOOD_SECONDS = 20.0
MAX_PENDING = 500


async def _flood(hub: Hub, iss: str) -> tuple[int, collections.Counter[int], float]:
    statuses: collections.Counter[int] = collections.Counter()
    stop = time.monotonic() + FLOOD_SECONDS
    started = time.monotonic()
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < stop:
                response = await client.get(hub.login_url, params={"iss": iss})
                statuses[response.status_code] += 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return sum(statuses.values()), statuses, time.monotonic() - started


def _machine() -> str:
    one, five, _ = os.getloadavg()
    return f"machine: {os.cpu_count()} CPUs, load average {one:.1f} (1 min) {five:.1f} (5 min)"


def main() -> None:
    import jupyterhub_smart

    print(_machine())
    print(f"code under test: {Path(jupyterhub_smart.__file__).parent}")
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        work = Path(tmp)
        port = free_port()
        hub_url = f"http://127.0.0.1:{port}"
        client = {
            "client_id": "hub-bench",
            "type": "public",
            "redirect_uris": [f"{hub_url}/hub/oauth_callback"],
        }
        with run_sandbox(work / "sandbox", [client]) as sandbox:
            issuers = {sandbox.iss: {"client_id": "hub-bench"}}
            options = {"max_pending_logins": MAX_PENDING}
            extra = 'c.JupyterHub.log_level = "INFO"'
            with (
                run_hub(
                    work / "hub", issuers, port=port, authenticator=options, extra=extra
                ) as hub,
                httpx.Client(timeout=30) as browser,
            ):
                started = browser.get(hub.login_url, params={"iss": sandbox.iss})
                assert started.status_code == 302, started.text[:500]
                authorize = urljoin(str(started.url), started.headers["location"])
                before = hub.audit_path.stat().st_size if hub.audit_path.exists() else 0
                total, statuses, seconds = asyncio.run(_flood(hub, sandbox.iss))
                time.sleep(1)
                grown = hub.audit_path.stat().st_size - before
                hop = browser.get(authorize)
                while hop.status_code in (302, 303) and not hop.headers["location"].startswith(
                    hub.callback_url
                ):
                    hop = browser.get(urljoin(str(hop.url), hop.headers["location"]))
                done = (
                    browser.get(hop.headers["location"]) if hop.status_code in (302, 303) else hop
                )
                completed = done.status_code == 302
        rate = total / seconds
        print(
            f"flood: {total} requests in {seconds:.1f} s from one address, "
            f"{CONCURRENCY} at once: {rate:.0f} requests/s; statuses {dict(sorted(statuses.items()))}"
        )
        print(
            f"audit log: +{grown} bytes, {grown / seconds:.0f} bytes/s "
            f"({grown / seconds * 3600 / 1e6:.1f} MB/hour at this rate), "
            f"{grown / max(total, 1):.0f} bytes per flood request"
        )
        print(
            "sign-in started before the flood: "
            + ("completed" if completed else f"FAILED ({done.status_code})")
        )


if __name__ == "__main__":
    main()
