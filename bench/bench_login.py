"""Login cost: SMARTAuthenticator against OAuthenticator's GenericOAuthenticator.

Both hubs are real JupyterHub processes signing users in with the same real
sandbox EHR (auto-approve), driven by plain HTTP clients that follow every
redirect by hand (hub -> authorize -> callback -> login cookie), with N logins
in flight at once. Both run with auth_state encrypted and PKCE, at log level
INFO. Side by side, interleaved rounds, medians:

* GenericOAuthenticator: plain OAuth + OIDC, id_token *decoded without
  signature check*, one shared state cookie;
* SMARTAuthenticator, standalone launch (the same hops as generic): discovery
  and JWKS cached, per-login server-side state, verified id_token, scope and
  launch-context checks, audit trail (fsynced) for launch and login;
* SMARTAuthenticator, EHR launch: one more hop (the EHR's /ehr/launch).

Also counted, from the sandbox's request log: back-channel requests (token,
JWKS, discovery) per SMART login once the caches are warm. Goal: exactly 1.

Run: ``python -m bench login`` (or ``python -m bench.bench_login``).
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urljoin

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ["PATH"] = f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"

from hub_process import Hub, run_hub  # noqa: E402
from sandbox_process import SandboxProcess, free_port, run_sandbox  # noqa: E402

CONCURRENCY = 8
LOGINS_PER_ROUND = 48
ROUNDS = 3
SCOPE = ["openid", "fhirUser", "launch/patient", "offline_access", "patient/*.rs"]
GENERIC_SECRET = "bench-generic-secret-0123456789abcdef"  # noqa: S105 - a local test client

GENERIC = """
c.JupyterHub.authenticator_class = "generic-oauth"
c.GenericOAuthenticator.client_id = "hub-generic"
c.GenericOAuthenticator.client_secret = {secret!r}
c.GenericOAuthenticator.authorize_url = {origin!r} + "/auth/authorize"
c.GenericOAuthenticator.token_url = {origin!r} + "/auth/token"
c.GenericOAuthenticator.userdata_from_id_token = True
c.GenericOAuthenticator.username_claim = lambda claims: claims["sub"].replace("/", "-")
c.GenericOAuthenticator.scope = {scope!r}
c.GenericOAuthenticator.extra_authorize_params = {{"aud": {iss!r}}}
c.GenericOAuthenticator.oauth_callback_url = {url!r} + "/hub/oauth_callback"
c.GenericOAuthenticator.allow_all = True
c.GenericOAuthenticator.enable_auth_state = True
c.GenericOAuthenticator.basic_auth = True
c.JupyterHub.log_level = "INFO"
"""


async def _walk(client: httpx.AsyncClient, url: str, hub: Hub) -> None:
    """Follow redirects until the hub has set its login cookie (the callback answered 302)."""
    for _ in range(10):
        response = await client.get(url)
        if response.status_code != 302:
            raise RuntimeError(f"login stopped at {response.status_code} {response.url.path}")
        if response.url.path == "/hub/oauth_callback":
            if "jupyterhub-session-id" not in client.cookies and not any(
                c.startswith("jupyterhub-hub-login") for c in client.cookies
            ):
                raise RuntimeError("callback answered without a login cookie")
            return
        url = urljoin(str(response.url), response.headers["location"])
    raise RuntimeError("too many redirects")


async def _logins(start: Callable[[], str], hub: Hub, total: int, concurrency: int) -> float:
    """Run ``total`` logins, ``concurrency`` at a time; logins per second."""
    queue = list(range(total))

    async def worker() -> None:
        while queue:
            queue.pop()
            async with httpx.AsyncClient(timeout=60) as client:  # a fresh browser per login
                await _walk(client, start(), hub)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - began)


def _back_channel(sandbox: SandboxProcess) -> int:
    text = sandbox.log_text()
    return len(
        re.findall(
            r"(POST /auth/token|GET /auth/jwks|GET /fhir/\.well-known|GET /fhir/metadata)", text
        )
    )


def _machine() -> str:
    """CPU count and load: these figures depend on what else the machine is doing."""
    one, five, _ = os.getloadavg()
    return f"machine: {os.cpu_count()} CPUs, load average {one:.1f} (1 min) {five:.1f} (5 min)"


def main() -> None:
    print(_machine())
    with tempfile.TemporaryDirectory(prefix="bench-login-") as tmp:
        work = Path(os.environ.get("BENCH_WORKDIR") or tmp)
        smart_port, generic_port = free_port(), free_port()
        smart_url = f"http://127.0.0.1:{smart_port}"
        generic_url = f"http://127.0.0.1:{generic_port}"
        clients = [
            {
                "client_id": "hub-smart",
                "type": "public",
                "redirect_uris": [f"{smart_url}/hub/oauth_callback"],
            },
            {
                "client_id": "hub-generic",
                "type": "confidential-symmetric",
                "client_secret": GENERIC_SECRET,
                "redirect_uris": [f"{generic_url}/hub/oauth_callback"],
            },
        ]
        with run_sandbox(work / "sandbox", clients) as sandbox:
            issuers = {sandbox.iss: {"client_id": "hub-smart", "scope": SCOPE}}
            extra_info = 'c.JupyterHub.log_level = "INFO"'
            generic_extra = GENERIC.format(
                secret=GENERIC_SECRET,
                origin=sandbox.origin,
                scope=SCOPE,
                iss=sandbox.iss,
                url=generic_url,
            )
            with (
                run_hub(work / "smart", issuers, port=smart_port, extra=extra_info) as smart,
                run_hub(
                    work / "generic", issuers, port=generic_port, extra=generic_extra
                ) as generic,
            ):
                patient = re.findall(
                    r'name="patient" value="([^"]+)"', httpx.get(sandbox.origin + "/ehr").text
                )[0]
                ehr_start = str(
                    httpx.URL(
                        sandbox.origin + "/ehr/launch",
                        params={"app": f"{smart_url}/hub/oauth_login", "patient": patient},
                    )
                )
                variants: dict[str, tuple[Callable[[], str], Hub]] = {
                    "generic (GenericOAuthenticator)": (
                        lambda: f"{generic_url}/hub/oauth_login",
                        generic,
                    ),
                    "smart standalone": (
                        lambda: f"{smart_url}/hub/oauth_login?iss={sandbox.iss}",
                        smart,
                    ),
                    "smart EHR launch": (lambda: ehr_start, smart),
                }

                def run(coro: Awaitable[float]) -> float:
                    return asyncio.run(coro)  # type: ignore[arg-type]

                # warm-up: caches, JIT-less imports, SQLite pages
                for start, hub in variants.values():
                    run(_logins(start, hub, 4, 2))
                before = _back_channel(sandbox)
                run(_logins(variants["smart standalone"][0], smart, 10, 1))
                per_login = (_back_channel(sandbox) - before) / 10

                rates: dict[str, list[float]] = {name: [] for name in variants}
                for _ in range(ROUNDS):
                    for name, (start, hub) in variants.items():
                        rates[name].append(run(_logins(start, hub, LOGINS_PER_ROUND, CONCURRENCY)))
    print(
        f"{LOGINS_PER_ROUND} logins x {ROUNDS} rounds per variant, {CONCURRENCY} in flight, "
        "median logins/s (each login = fresh browser, all redirects, login cookie set):"
    )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        spread = ", ".join(f"{v:.1f}" for v in rates[name])
        print(f"  {name:34s} {value:7.1f} /s   (rounds: {spread})")
    base = medians["generic (GenericOAuthenticator)"]
    cost = 1 - medians["smart standalone"] / base
    print(
        f"SMART standalone vs generic: {medians['smart standalone'] / base:.2f}x throughput "
        f"({cost * 100:+.0f}% cost of SMART's checks; goal < 15%)"
    )
    print(f"back-channel requests per SMART login with warm caches: {per_login:g} (goal: 1)")
    print(_machine())


if __name__ == "__main__":
    main()
