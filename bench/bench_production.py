"""Production load: 200 concurrent EHR launches, then the token API for 200 users at 500 req/s.

One real sandbox EHR (auto-approve, access tokens living ``LIFETIME`` s) and one
real JupyterHub with the SMARTAuthenticator, on the hub database named by
``BENCH_DB``: ``sqlite`` (the default) or ``postgresql`` (a server the test harness
starts from the machine's PostgreSQL, ``make postgresql``).

1. *Launches*: ``LAUNCHES`` EHR launches start at the same moment, each a browser
   of its own (cookie jar) walking every hop by plain HTTP: the EHR's
   ``/ehr/launch`` -> hub ``/hub/oauth_login`` -> sandbox authorize (auto-approve)
   -> hub ``/hub/oauth_callback`` (code exchange, id_token, audit, session).
   Printed: how many completed (goal: all), launches/s over the whole burst,
   p50/p99 of one launch's duration. The hub's readiness probe runs first, so the
   EHR's SMART configuration is cached, as on a hub Kubernetes has probed. Every launch becomes its own hub user (a
   bench-only ``username_mapper``: the sandbox has four practitioners).
2. *Token API*: each of the ``USERS`` users' API token asks for its SMART token,
   open loop at ``RATE`` requests/s for ``SECONDS`` s, round-robin over users,
   sent to the hub's internal API address (as notebooks do). Access tokens expire
   during the run, so each user's token is refreshed several times. Printed:
   achieved rate, p50/p99/max latency, errors (goal 0), refreshes the hub made
   (its ``jupyterhub_smart_refreshes_total`` metric and the EHR's token requests)
   against the access-token changes the clients saw: exactly one refresh per
   expiry per user means refreshes == changes for every user.

Run: ``python -m bench production`` (``BENCH_DB=postgresql`` for PostgreSQL).
The machine's load is printed before and after: other processes skew latency.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urljoin

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ["PATH"] = f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"

from hub_process import Hub, run_hub  # noqa: E402
from sandbox_process import SandboxProcess, free_port, run_sandbox  # noqa: E402

from bench.keepalive import KeepAlivePool, get_request  # noqa: E402

LAUNCHES = int(os.environ.get("BENCH_LAUNCHES", 200))
USERS = LAUNCHES
RATE = int(os.environ.get("BENCH_RATE", 500))
SECONDS = float(os.environ.get("BENCH_SECONDS", 60))
LIFETIME = 20  # seconds; the hub refreshes in the last half: ~6 refreshes per user per minute

BENCH_CONFIG = """
import itertools
_bench_names = itertools.count()
# bench only: every sign-in is a user of its own (the sandbox has four practitioners)
c.SMARTAuthenticator.username_mapper = lambda iss, fhir_user, claims: (
    "bench-user-%04d" % next(_bench_names)
)
c.JupyterHub.log_level = "INFO"
"""


async def _launch(sandbox: SandboxProcess, hub: Hub, patient: str) -> float:
    """One EHR launch in a browser of its own; its duration in seconds."""
    url = str(
        httpx.URL(
            sandbox.origin + "/ehr/launch",
            params={"app": f"{hub.url}/hub/oauth_login", "patient": patient},
        )
    )
    began = time.perf_counter()
    # No idle keep-alive connections: the sandbox (waitress) accepts 100 connections at
    # once, and 200 idle browsers would hold them while the hub's back-channel requests
    # to the same EHR wait (a real EHR's front end accepts far more).
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as browser:
        for _ in range(10):
            response = await browser.get(url)
            if response.status_code != 302:
                raise RuntimeError(f"launch stopped at {response.status_code} {response.url.path}")
            if response.url.path == "/hub/oauth_callback":
                return time.perf_counter() - began
            url = urljoin(str(response.url), response.headers["location"])
    raise RuntimeError("launch: too many redirects")


async def _burst(sandbox: SandboxProcess, hub: Hub, patients: list[str]) -> list[float | str]:
    async def one(n: int) -> float | str:
        try:
            return await _launch(sandbox, hub, patients[n % len(patients)])
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:200]

    return await asyncio.gather(*(one(n) for n in range(LAUNCHES)))


async def _token_load(
    url: str, tokens: list[str], seen: dict[int, list[str]]
) -> tuple[list[float], collections.Counter[str], float]:
    """Open loop over users: (latencies ms, errors by kind, achieved req/s).

    ``seen[user]`` starts with the user's access token before the load and gets
    each new one a client receives. Sent with :class:`bench.keepalive.KeepAlivePool`.
    """
    pool = KeepAlivePool(url)
    requests = [get_request(url, token) for token in tokens]
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()

    async def one(user: int) -> None:
        began = time.perf_counter()
        try:
            head, body = await pool.send(requests[user])
        except (OSError, EOFError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            return
        if not head.startswith(b"HTTP/1.1 200 "):
            errors[f"{head[9:12].decode()} {orjson.loads(body).get('error')}"] += 1
            return
        latencies.append((time.perf_counter() - began) * 1000)
        access = orjson.loads(body)["access_token"]
        if not seen[user] or seen[user][-1] != access:
            seen[user].append(access)

    total = int(RATE * SECONDS)
    tasks = []
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i % len(tokens))))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    pool.close()
    return latencies, errors, total / elapsed


def _metric(hub: Hub, name: str, **labels: str) -> float:
    text = httpx.get(
        f"{hub.url}/hub/metrics", headers={"Authorization": f"token {hub.admin_token}"}
    ).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def _token_posts(sandbox: SandboxProcess) -> int:
    return len(re.findall(r"POST /auth/token 200", sandbox.log_text()))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _machine() -> str:
    one, five, _ = os.getloadavg()
    return f"machine: {os.cpu_count()} CPUs, load average {one:.1f} (1 min) {five:.1f} (5 min)"


def hub_database() -> str:
    """The hub database named by BENCH_DB: run_hub starts PostgreSQL (tests/pg_process.py)."""
    wanted = os.environ.get("BENCH_DB", "sqlite")
    if wanted not in ("sqlite", "postgresql"):
        raise SystemExit(f"BENCH_DB={wanted!r}: 'sqlite' or 'postgresql'")
    os.environ["SMART_TEST_DB"] = wanted
    return {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[wanted]


def main() -> None:
    print(_machine())
    with tempfile.TemporaryDirectory(prefix="bench-production-") as tmp:
        work = Path(os.environ.get("BENCH_WORKDIR") or tmp)
        db_label = hub_database()
        port = free_port()
        client = {
            "client_id": "hub-bench",
            "type": "public",
            "redirect_uris": [f"http://127.0.0.1:{port}/hub/oauth_callback"],
        }
        with run_sandbox(
            work / "sandbox",
            [client],
            patients=20,
            extra_args=["--access-token-lifetime", str(LIFETIME)],
        ) as sandbox:
            issuers = {sandbox.iss: {"client_id": "hub-bench"}}
            # BENCH_HTTP_TIMEOUT: seconds the hub waits on the EHR (default 10, as in
            # production); the sandbox shares the machine's cores with the hub and the load
            options = {
                "max_pending_logins_per_client": 10 * LAUNCHES,
                "http_timeout": float(os.environ.get("BENCH_HTTP_TIMEOUT", 10)),
            }
            with run_hub(
                work / "hub",
                issuers,
                port=port,
                authenticator=options,
                extra=BENCH_CONFIG,
            ) as hub:
                page = httpx.get(sandbox.origin + "/ehr", timeout=60).text
                patients = list(dict.fromkeys(re.findall(r'name="patient" value="([^"]+)"', page)))
                print(f"hub database: {db_label}; http_timeout {options['http_timeout']:g} s")
                # the readiness probe fetches the EHR's SMART configuration, as Kubernetes'
                # probes do before traffic arrives: the burst does not wait on one discovery
                for _ in range(600):
                    health = httpx.get(f"{hub.url}/hub/api/smart/health", timeout=60)
                    if health.status_code == 200:
                        break
                    time.sleep(0.1)
                print(f"/hub/api/smart/health before the burst: {health.status_code}")

                # 1. launches
                began = time.perf_counter()
                results = asyncio.run(_burst(sandbox, hub, patients))
                wall = time.perf_counter() - began
                durations = [r for r in results if isinstance(r, float)]
                failures = collections.Counter(r for r in results if isinstance(r, str))
                print(
                    f"{LAUNCHES} concurrent EHR launches: {len(durations)} completed "
                    f"(goal: all), {LAUNCHES / wall:.1f} launches/s over {wall:.1f} s; "
                    f"one launch p50 {1000 * statistics.median(durations):.0f} ms, "
                    f"p99 {1000 * _pct(durations, 0.99):.0f} ms"
                )
                for failure, count in failures.most_common(5):
                    print(f"  failed x{count}: {failure}")

                # 2. token API: one API token per user
                with hub.api(hub.admin_token) as api:
                    names = sorted(
                        u["name"]
                        for u in api.get("/users").json()
                        if u["name"].startswith("bench-user-")
                    )[:USERS]
                tokens = [hub.user_token(name) for name in names]
                hub_port = json.loads((hub.workdir / "settings.json").read_text())["hub_port"]
                internal = f"http://127.0.0.1:{hub_port}/hub/api/smart/token"
                refreshed = _metric(hub, "jupyterhub_smart_refreshes_total", outcome="success")
                failed = _metric(hub, "jupyterhub_smart_refreshes_total", outcome="failed")
                posts = _token_posts(sandbox)
                seen = {
                    n: [hub.rest_auth_state(name)["access_token"]] for n, name in enumerate(names)
                }
                log_start = len(hub.log_text())
                latencies, errors, achieved = asyncio.run(_token_load(internal, tokens, seen))
                time.sleep(1.0)  # the sandbox's request log lands after its answers
                refreshes = (
                    _metric(hub, "jupyterhub_smart_refreshes_total", outcome="success") - refreshed
                )
                refresh_failures = (
                    _metric(hub, "jupyterhub_smart_refreshes_total", outcome="failed") - failed
                )
                changes = sum(len(tokens_seen) - 1 for tokens_seen in seen.values())
                refresh_times: dict[str, list[datetime]] = collections.defaultdict(list)
                for stamp, user in re.findall(
                    r"\[I (\S+ \S+) [^\]]*\] Refreshed the SMART access token of (bench-user-\d+)",
                    hub.log_text()[log_start:],
                ):
                    refresh_times[user].append(datetime.fromisoformat(stamp))
                per_user = collections.Counter({u: len(t) for u, t in refresh_times.items()})
                # a fresh token is due again only after half its life (LIFETIME / 2); two
                # refreshes for one expiry would come close together: flag gaps under a
                # quarter of the lifetime (a slow log line can shorten a real gap a little)
                doubled = [
                    user
                    for user, times in refresh_times.items()
                    if any(
                        (later - earlier).total_seconds() < LIFETIME / 4
                        for earlier, later in itertools.pairwise(times)
                    )
                ]
                mismatched = [
                    name for n, name in enumerate(names) if per_user[name] != len(seen[n]) - 1
                ]
                ehr_posts = _token_posts(sandbox) - posts
                print(
                    f"token API, {len(tokens)} users, {RATE} req/s offered for {SECONDS:g} s: "
                    f"achieved {achieved:.0f} req/s, {len(latencies)} ok, "
                    f"{sum(errors.values())} errors (goal 0); latency "
                    f"p50 {statistics.median(latencies):.1f} ms, "
                    f"p99 {_pct(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms"
                )
                for kind, count in errors.most_common():
                    print(f"  error x{count}: {kind}")
                print(
                    f"refreshes: {refreshes:.0f} by the hub ({refresh_failures:.0f} failed), "
                    f"{ehr_posts} token requests at the EHR, {changes} access-token changes "
                    f"seen by the clients (goal: refreshes == changes, one per expiry per user; "
                    f"about {len(tokens) * SECONDS / (LIFETIME / 2):.0f} expected); users whose "
                    f"refresh count differs from their token changes: {len(mismatched)} (a "
                    f"client that gave up on an answer misses its change); users refreshed "
                    f"twice within {LIFETIME / 4:g} s (two refreshes for one expiry): "
                    f"{len(doubled)} (goal 0)"
                )
                print(_machine())


if __name__ == "__main__":
    main()
