"""The hub goes away and comes back: the proxy serves its cached token until it expires, then 503.

The sandbox's access tokens live 10 seconds here. The hub is killed (a crash:
JupyterHub does not get to stop its managed services), the orphaned proxy keeps
answering from its cache, answers 503 once the cached token has expired, and
hands over to the proxy the restarted hub starts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import psutil
import pytest
from hub_process import run_hub

from .world import ProxyWorld, proxy_pid, running_world, wait_for_proxy

LIFETIME = 10


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyWorld]:
    with running_world(
        tmp_path_factory.mktemp("proxy-restart"),
        sandbox_args=("--access-token-lifetime", str(LIFETIME)),
        options={"refresh_leeway": 2.0},
    ) as world:
        yield world


def _get(world: ProxyWorld) -> httpx.Response:
    with world.client() as client:
        return client.get(f"Patient/{world.patient}")


@pytest.mark.slow
def test_cached_tokens_serve_while_the_hub_is_down_then_503_then_recovery(
    world: ProxyWorld,
) -> None:
    assert _get(world).status_code == 200
    orphan = psutil.Process(proxy_pid(world))
    world.hub.process.kill()
    world.hub.process.wait(timeout=30)
    try:
        _down_then_back(world)
    finally:  # the old hub's proxy leaves by itself once a hub is back; make sure it is gone
        if orphan.is_running():
            orphan.terminate()
            orphan.wait(timeout=30)


def _down_then_back(world: ProxyWorld) -> None:
    statuses = []
    deadline = time.monotonic() + 3 * LIFETIME
    while time.monotonic() < deadline:
        answer = _get(world)
        statuses.append(answer.status_code)
        if answer.status_code != 200:
            break
        time.sleep(0.5)
    assert statuses[0] == 200, "no answer from the cache while the hub was down"
    assert statuses[-1] == 503, statuses
    assert answer.json()["error"] == "hub_unavailable"
    with run_hub(
        world.hub.workdir,
        {world.sandbox.iss: {"client_id": "hub-public", "client_auth": "public"}},
        port=world.hub.port,
        authenticator={
            "fhir_access": "proxy",
            "fhir_proxy_url": world.proxy_root.split("/services/")[0],
        },
        crypt_key=world.hub.crypt_key,
        hub_port=world.hub.hub_port,
        database=world.hub.database,
    ):
        wait_for_proxy(world.proxy_root)
        deadline = time.monotonic() + 90
        status: int | str = "no answer"
        while status != 200:
            assert time.monotonic() < deadline, f"still {status} after the hub came back"
            time.sleep(0.5)
            try:  # a connection open on the old proxy as it hands over may be cut
                status = _get(world).status_code
            except httpx.TransportError as exc:
                status = type(exc).__name__
