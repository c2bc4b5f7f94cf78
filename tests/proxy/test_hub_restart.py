"""The hub goes away and comes back: no record, no data, then the proxy serves again.

The proxy's records go into the hub's audit chain, so while the hub is down
(killed: a crash, JupyterHub does not get to stop its managed services) the
orphaned proxy forwards nothing: the request that finds the hub gone gets 503
``audit_unavailable`` instead of its answer, and later ones are refused before
the EHR is asked. Once a hub is back, the old proxy hands over to the one the
new hub starts, and requests are answered (and recorded) again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import psutil
import pytest
from hub_process import run_hub

from .world import ProxyWorld, proxy_pid, proxy_records, running_world, wait_for_proxy


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyWorld]:
    with running_world(tmp_path_factory.mktemp("proxy-restart")) as world:
        yield world


def _get(world: ProxyWorld) -> httpx.Response:
    with world.client() as client:
        return client.get(f"Patient/{world.patient}")


@pytest.mark.slow
def test_while_the_hub_is_down_nothing_is_forwarded_then_recovery(
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
    # Forwarded (the proxy did not know yet) but not recorded, so never a complete answer:
    # 503, or a cut connection if the EHR's answer came in two reads and the first had
    # already gone out.
    try:
        first = _get(world)
    except httpx.TransportError:
        pass
    else:
        assert first.status_code == 503, first.text
        assert first.json()["error"] == "audit_unavailable"
    seen = len(world.front.received)
    second = _get(world)  # refused before the EHR is asked
    assert (second.status_code, second.json()["error"]) == (503, "audit_unavailable")
    assert len(world.front.received) == seen
    before = len(proxy_records(world))
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
        assert len(proxy_records(world)) > before
