"""A hub in FHIR proxy mode in front of a sandbox behind a fault-injecting front, and its trail.

:func:`running_world` starts the front (:mod:`.ehr_front`), a sandbox whose
public URL is the front's, and a JupyterHub with ``fhir_access = "proxy"`` that
starts the proxy as its managed service; one practitioner signs in by EHR
launch, and ``token`` is one of their personal JupyterHub API tokens. The
helpers below read the proxy's records back from the hub's audit log (the
proxy sends them there).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from hub_process import Browser, Hub, ehr_launch, patient_ids, run_hub
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.audit.events import RESTFUL_INTERACTION
from jupyterhub_smart.smart.issuer_key import issuer_key

from .ehr_front import Front, run_front

#: Seconds the proxy waits for the EHR in these tests (the "slow" fault waits longer).
EHR_TIMEOUT = 3.0


@dataclass
class ProxyWorld:
    hub: Hub
    sandbox: SandboxProcess
    front: Front
    proxy_root: str  # http://127.0.0.1:PORT/services/smart-fhir/
    user: str
    token: str
    patient: str

    @property
    def base(self) -> str:
        """The proxy URL of the sandbox's FHIR base."""
        return self.proxy_root + issuer_key(self.sandbox.iss)

    @property
    def audit_path(self) -> Path:
        """The hub's audit log, which holds the proxy's records."""
        return self.hub.audit_path

    def client(self, token: str | None = None) -> httpx.Client:
        token = self.token if token is None else token
        headers = {"Authorization": f"token {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60, trust_env=False)


def wait_for_proxy(root: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(root, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the FHIR proxy at {root} did not start")
        time.sleep(0.2)


def signed_in_user(hub: Hub, sandbox: SandboxProcess, patient: str) -> str:
    with Browser() as browser:
        answer = ehr_launch(browser, sandbox, hub, patient)
        assert answer.status_code == 302, answer.text[:1000]
    users = httpx.get(
        f"{hub.url}/hub/api/users", headers={"Authorization": f"token {hub.admin_token}"}
    ).json()
    suffix = f"-{urlsplit(sandbox.iss).port}-fhir"
    names = [u["name"] for u in users if u["name"].endswith(suffix)]
    assert names, users
    return str(names[0])


@contextmanager
def running_world(
    work: Path,
    *,
    sandbox_args: tuple[str, ...] = (),
    options: dict[str, Any] | None = None,
    crypt_key: str | None = None,
) -> Iterator[ProxyWorld]:
    """Front, sandbox and hub in proxy mode, one user signed in, until the block ends."""
    hub_port, proxy_port = free_port(), free_port()
    sandbox_port, front_port, other_port = free_port(), free_port(), free_port()
    client = {
        "client_id": "hub-public",
        "type": "public",
        "redirect_uris": [f"http://127.0.0.1:{hub_port}/hub/oauth_callback"],
    }
    with (
        run_front(front_port, f"http://127.0.0.1:{sandbox_port}", other_port) as front,
        run_sandbox(
            work / "sandbox",
            [client],
            port=sandbox_port,
            extra_args=["--public-url", front.origin, *sandbox_args],
        ) as sandbox,
    ):
        issuers = {sandbox.iss: {"client_id": "hub-public", "client_auth": "public"}}
        options = {
            "fhir_access": "proxy",
            "fhir_proxy_url": f"http://127.0.0.1:{proxy_port}",
            "fhir_proxy_timeout": EHR_TIMEOUT,
            "fhir_proxy_max_concurrent": 4,
            **(options or {}),
        }
        with run_hub(
            work / "hub", issuers, port=hub_port, authenticator=options, crypt_key=crypt_key
        ) as hub:
            root = f"http://127.0.0.1:{proxy_port}/services/smart-fhir/"
            wait_for_proxy(root)
            patient = patient_ids(sandbox)[0]
            user = signed_in_user(hub, sandbox, patient)
            token = hub.user_token(user)
            yield ProxyWorld(hub, sandbox, front, root, user, token, patient)


def proxy_records(world: ProxyWorld) -> list[dict[str, Any]]:
    lines = world.audit_path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [
        r
        for r in records
        if any(
            d.get("valueString") == "fhir-proxy"
            for e in r.get("entity", [])
            for d in e.get("detail", [])
        )
    ]


def details(record: dict[str, Any]) -> dict[str, str]:
    return {
        d["type"]: d["valueString"] for e in record.get("entity", []) for d in e.get("detail", [])
    }


def interaction(record: dict[str, Any]) -> str:
    return next(c["code"] for c in record["subtype"] if c["system"] == RESTFUL_INTERACTION)


def patients(record: dict[str, Any]) -> set[str]:
    return {
        e["what"]["reference"]
        for e in record.get("entity", [])
        if e.get("role", {}).get("code") == "1" and "what" in e
    }


def wait_records(world: ProxyWorld, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The proxy's records once there are ``count`` (the record precedes the last bytes)."""
    deadline = time.monotonic() + timeout
    while len(records := proxy_records(world)) < count:
        assert time.monotonic() < deadline, f"{len(records)} records, expected {count}"
        time.sleep(0.05)
    return records


def proxy_pid(world: ProxyWorld) -> int:
    """The pid of the process listening on the proxy's port (the managed service)."""
    import psutil

    port = urlsplit(world.proxy_root).port
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            assert conn.pid is not None
            return int(conn.pid)
    raise AssertionError("nothing listens on the proxy's port")
