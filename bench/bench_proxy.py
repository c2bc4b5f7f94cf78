"""FHIR proxy mode against direct access, in one run: throughput, added latency, memory, fairness.

Setup: a real sandbox with a ``dense`` patient of ``BENCH_OBSERVATIONS``
Observations (default 100,000), a real JupyterHub in proxy mode (the proxy is
its managed service), a practitioner signed in by EHR launch for ``dense``.
Direct access uses that session's EHR access token (read from auth_state with
the admin token, as no notebook can in proxy mode); proxied access uses the
user's JupyterHub token.

1. *Paging*: every Observation of ``dense``, ``_count=1000``, following ``next``
   links over one keep-alive connection, direct then proxied, ``ROUNDS`` times
   each, interleaved. Printed: resources/s of each and the ratio (goal >= 0.8),
   per-page p50/p99 of each and what the proxy adds (goal p99 < 5 ms on a quiet
   machine), and the CPU time per page of the proxy, the hub and the sandbox
   (from ``/proc``: on a shared machine wall-clock includes waiting for a core,
   CPU time does not) with the load average.
2. *Memory*: the proxy's peak resident memory (``VmHWM``) before and after
   streaming one 10 MB and one 100 MB Bundle (served by the tests' fault front
   in front of a second sandbox): flat means the 100 MB answer adds no more
   than the 10 MB one.
3. *Fairness*: ``NOTEBOOKS`` concurrent notebooks (threads), spread over the
   sandbox's practitioners (one hub user each), each paging ``PAGES`` pages of
   100; a 429 is retried after its Retry-After, as the notebook client does.
   Printed: errors (goal 0), pages per user, min/max share.

Run: ``python -m bench proxy``. ``BENCH_DATA_DIR`` keeps the generated store.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ["PATH"] = f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"

from hub_process import Browser, Hub, location, run_hub  # noqa: E402
from sandbox_process import SandboxProcess, free_port, run_sandbox  # noqa: E402

from jupyterhub_smart.smart.issuer_key import issuer_key  # noqa: E402

OBSERVATIONS = int(os.environ.get("BENCH_OBSERVATIONS", "100000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
NOTEBOOKS = 50
PAGES = 10


def _login(hub: Hub, sandbox: SandboxProcess, patient: str, practitioner: str | None) -> str:
    """EHR launch (auto-approved); the hub user's name."""
    params = {"app": hub.login_url, "patient": patient}
    if practitioner:
        params["practitioner"] = practitioner
    with Browser() as browser:
        hop = browser.follow(
            str(httpx.URL(sandbox.origin + "/ehr/launch", params=params)), stop_at=hub.callback_url
        )
        answer = browser.get(location(hop))
        assert answer.status_code == 302, answer.text[:500]
        who = browser.client.get(f"{hub.url}/hub/api/user")
        if who.status_code == 200:
            return str(who.json()["name"])
    users = httpx.get(
        f"{hub.url}/hub/api/users", headers={"Authorization": f"token {hub.admin_token}"}
    ).json()
    return str(users[-1]["name"])


def _page_all(client: httpx.Client, first: str) -> tuple[int, list[float]]:
    """Resources read and per-page seconds, following next links."""
    url: str | None = first
    count, times = 0, []
    while url:
        started = time.perf_counter()
        response = client.get(url)
        body = response.json()
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text[:300]
        count += len(body.get("entry", []))
        url = next(
            (link["url"] for link in body.get("link", []) if link["relation"] == "next"), None
        )
    return count, times


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds each process has used so far: ``name`` user + system, ``name sys`` system."""
    import psutil

    out = {}
    for name, pid in pids.items():
        times = psutil.Process(pid).cpu_times()
        out[name] = times.user + times.system
        out[f"{name} sys"] = times.system
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _paging(hub: Hub, sandbox: SandboxProcess, proxy_root: str) -> None:
    user = _login(hub, sandbox, "dense", None)
    token = hub.user_token(user)
    access = hub.auth_state(user)["access_token"]
    base = proxy_root + issuer_key(sandbox.iss)
    query = "Observation?patient=dense&_count=1000"
    direct = httpx.Client(
        headers={"Authorization": f"Bearer {access}"}, timeout=120, trust_env=False
    )
    proxied = httpx.Client(
        headers={"Authorization": f"token {token}"}, timeout=120, trust_env=False
    )
    results: dict[str, list[tuple[int, float, list[float]]]] = {"direct": [], "proxy": []}
    warm = proxied.get(f"{base}/Observation?patient=dense&_count=10")  # the token cache, once
    assert warm.status_code == 200, warm.text[:300]
    from proxy.world import proxy_pid

    pids = {
        "proxy": proxy_pid(_RootOnly(proxy_root)),  # type: ignore[arg-type]
        "hub": hub.process.pid,
        "sandbox": sandbox.process.pid,
    }
    cpu: dict[str, dict[str, float]] = {"direct": {}, "proxy": {}}
    for _ in range(ROUNDS):
        for name, client, url in (
            ("direct", direct, f"{sandbox.iss}/{query}"),
            ("proxy", proxied, f"{base}/{query}"),
        ):
            before = _cpu(pids)
            started = time.perf_counter()
            count, times = _page_all(client, url)
            results[name].append((count, time.perf_counter() - started, times))
            after = _cpu(pids)
            for process in after:
                spent = after[process] - before[process]
                cpu[name][process] = cpu[name].get(process, 0.0) + spent
    direct.close()
    proxied.close()
    rates = {n: max(c / s for c, s, _ in runs) for n, runs in results.items()}
    pages = {n: [t for _, _, ts in runs for t in ts] for n, runs in results.items()}
    print(f"paging {results['direct'][0][0]} Observations, pages of 1000, best of {ROUNDS}:")
    for name in ("direct", "proxy"):
        print(
            f"  {name:7s} {rates[name]:9.0f} resources/s   page p50 {1000 * statistics.median(pages[name]):6.1f} ms"
            f"   p99 {1000 * _pct(pages[name], 0.99):6.1f} ms"
        )
    print(f"  throughput ratio proxy/direct: {rates['proxy'] / rates['direct']:.2f} (goal >= 0.8)")
    for name in ("direct", "proxy"):
        per_page = {p: 1000 * c / len(pages[name]) for p, c in cpu[name].items()}
        print(
            f"  CPU per page, {name:6s}: "
            + ", ".join(f"{p} {ms:5.1f} ms" for p, ms in per_page.items())
        )
    print(f"  load average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"  added per page: p50 {1000 * (statistics.median(pages['proxy']) - statistics.median(pages['direct'])):+.1f} ms,"
        f" p99 {1000 * (_pct(pages['proxy'], 0.99) - _pct(pages['direct'], 0.99)):+.1f} ms (goal p99 < 5 ms)"
    )
    for name in ("direct", "proxy"):
        # Where the tail is: (round, page number, ms) of the slowest pages.
        slowest = sorted(
            ((t, r, i) for r, (_, _, ts) in enumerate(results[name]) for i, t in enumerate(ts)),
            reverse=True,
        )[:4]
        print(
            f"  slowest pages, {name:6s}: "
            + ", ".join(f"round {r} page {i} {1000 * t:.1f} ms" for t, r, i in slowest)
        )


class _RootOnly:
    """What :func:`proxy.world.proxy_pid` reads of a world: the proxy's root URL."""

    def __init__(self, proxy_root: str) -> None:
        self.proxy_root = proxy_root


def _fairness(hub: Hub, sandbox: SandboxProcess, proxy_root: str) -> None:
    users = []
    for practitioner in ("practitioner-1", "practitioner-2", "practitioner-3", "practitioner-4"):
        name = _login(hub, sandbox, "dense", practitioner)
        if name not in users:
            users.append(name)
    tokens = {u: [hub.user_token(u) for _ in range(NOTEBOOKS // len(users) + 1)] for u in users}
    base = proxy_root + issuer_key(sandbox.iss)
    pages_by_user = {u: 0 for u in users}
    errors: list[str] = []
    retries = [0]
    lock = threading.Lock()
    start = threading.Barrier(NOTEBOOKS)

    def notebook(i: int) -> None:
        user = users[i % len(users)]
        token = tokens[user][i // len(users)]
        with httpx.Client(
            headers={"Authorization": f"token {token}"}, timeout=120, trust_env=False
        ) as client:
            url: str | None = f"{base}/Observation?patient=dense&_count=100"
            start.wait()
            done = 0
            while url and done < PAGES:
                answer = client.get(url)
                if answer.status_code == 429:
                    with lock:
                        retries[0] += 1
                    time.sleep(float(answer.headers.get("retry-after", "1")))
                    continue
                if answer.status_code != 200:
                    with lock:
                        errors.append(f"{answer.status_code} {answer.text[:100]}")
                    return
                done += 1
                with lock:
                    pages_by_user[user] += 1
                body = answer.json()
                url = next(
                    (link["url"] for link in body.get("link", []) if link["relation"] == "next"),
                    None,
                )

    threads = [threading.Thread(target=notebook, args=(i,)) for i in range(NOTEBOOKS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    shares = [
        pages_by_user[u] / max(1, sum(1 for i in range(NOTEBOOKS) if users[i % len(users)] == u))
        for u in users
    ]
    print(
        f"{NOTEBOOKS} notebooks over {len(users)} users, {PAGES} pages of 100 each, in {seconds:.1f} s:"
    )
    print(f"  errors {len(errors)} (goal 0), 429s retried {retries[0]}")
    for user in users:
        print(f"  {user}: {pages_by_user[user]} pages")
    print(
        f"  pages per notebook, min/max over users: {min(shares) / max(shares):.2f} (1.00 = equal)"
    )
    for error in errors[:5]:
        print("  error:", error)


def _memory() -> None:
    from proxy.ehr_front import Front  # the tests' fault-injecting front, as a 10/100 MB EHR
    from proxy.world import proxy_pid, running_world

    with tempfile.TemporaryDirectory() as tmp, running_world(Path(tmp)) as world:
        pid = proxy_pid(world)
        front: Front = world.front

        def peak() -> int:
            with open(f"/proc/{pid}/status", encoding="ascii") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

        print("proxy peak memory (VmHWM) streaming one Bundle:")
        for size in (10, 100):
            front.huge_bytes = size * 1024 * 1024
            before = peak()
            received = 0
            with (
                world.client() as client,
                client.stream("GET", "Observation", params={"x-fault": "huge"}) as answer,
            ):
                for chunk in answer.iter_raw():
                    received += len(chunk)
            print(
                f"  {received / 2**20:6.1f} MB answer: peak {peak() / 1024:6.1f} MiB (+{(peak() - before) / 1024:.1f})"
            )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_dir = (
            Path(os.environ["BENCH_DATA_DIR"])
            if os.environ.get("BENCH_DATA_DIR")
            else work / "data"
        )
        hub_port, proxy_port = free_port(), free_port()
        client = {
            "client_id": "hub-public",
            "type": "public",
            "redirect_uris": [f"http://127.0.0.1:{hub_port}/hub/oauth_callback"],
        }
        with run_sandbox(
            work / "sandbox",
            [client],
            patients=20,
            data_dir=data_dir,
            extra_args=["--dense-patient-observations", str(OBSERVATIONS)],
            timeout=1800,
        ) as sandbox:
            options = {
                "fhir_access": "proxy",
                "fhir_proxy_url": f"http://127.0.0.1:{proxy_port}",
                "fhir_proxy_max_concurrent": 16,
                "fhir_proxy_rate": 1000.0,
                "fhir_proxy_burst": 1000,
            }
            with run_hub(
                work / "hub",
                {sandbox.iss: {"client_id": "hub-public", "client_auth": "public"}},
                port=hub_port,
                authenticator=options,
                # JupyterHub's default, as in production and the other benches (the tests'
                # DEBUG adds a log line per record post on the latency path).
                extra='c.JupyterHub.log_level = "INFO"',
            ) as hub:
                root = f"http://127.0.0.1:{proxy_port}/services/smart-fhir/"
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if httpx.get(root, timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "the proxy did not start"
                    time.sleep(0.2)
                assert urlsplit(root).port == proxy_port
                _paging(hub, sandbox, root)
                _fairness(hub, sandbox, root)
    _memory()


if __name__ == "__main__":
    main()
