"""Hub restarts: what an admin changes between two starts, and a hub killed mid-session.

One real sandbox registers the hub as a ``private_key_jwt`` client by its JWK
Set URL (``/hub/smart/jwks.json``), which it fetches, caches, and fetches again
when an assertion names a ``kid`` it does not know. The hub is restarted on the
same address with the same database and crypt key, each run with its own log
and audit trail (the secrets test reads them all).

A second sandbox (the hub as a public client) serves the sessions that a hub
stopped with SIGTERM or killed with SIGKILL must keep, on SQLite and on a
real PostgreSQL (:mod:`pg_process`): there the audit trail is one file across
the restarts, and its chain must go on and verify.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jupyterhub
import pytest
from hub_process import (
    Browser,
    Hub,
    default_database,
    ehr_launch,
    launch_until_callback,
    patient_ids,
    run_hub,
)
from pg_process import HubDatabase, new_database, run_postgres
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.audit.verify import verify
from jupyterhub_smart.hub.published_keys import PRIVATE_MEMBERS
from jupyterhub_smart.smart.keys import write_key_pair

from .conftest import sandbox_client

SHARED = """
c.JupyterHub.cookie_secret_file = "{shared}/cookie_secret"
c.ConfigurableHTTPProxy.pid_file = "{shared}/proxy.pid"
"""


@dataclass
class Site:
    work: Path
    port: int
    sandbox: SandboxProcess
    keys: Path
    crypt_key: str
    database: HubDatabase
    runs: int = 0
    audit_path: Path | None = None  # None: each run its own trail

    @contextmanager
    def hub(
        self,
        issuers: Mapping[str, Mapping[str, Any]],
        published: list[str] | None = None,
        expect_failure: bool = False,
    ) -> Iterator[Hub]:
        """The hub, (re)started on the same port, database, cookie secret and crypt key."""
        self.runs += 1
        extra = SHARED.format(shared=self.work)
        options = {"published_jwks": published} if published is not None else {}
        with run_hub(
            self.work / f"hub-{self.runs}",
            issuers,
            port=self.port,
            authenticator=options,
            extra=extra,
            crypt_key=self.crypt_key,
            expect_failure=expect_failure,
            database=self.database,
            audit_path=self.audit_path,
        ) as hub:
            yield hub

    def issuers(self, key_path: Path) -> dict[str, dict[str, str]]:
        return {
            self.sandbox.iss: {
                "client_id": "hub-rotate",
                "client_auth": "private_key_jwt",
                "private_key_path": str(key_path),
            }
        }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("restart-env")
    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    client = sandbox_client(
        "hub-rotate",
        hub_url,
        type="confidential-asymmetric",
        jwks_uri=f"{hub_url}/hub/smart/jwks.json",
    )
    with run_sandbox(work / "sandbox", [client]) as sandbox:
        yield Site(
            work, port, sandbox, work / "keys", secrets.token_hex(32), default_database(work)
        )


def _login(site: Site, hub: Hub) -> str:
    """An EHR launch signed with the hub's current key; the username."""
    with Browser() as browser:
        answer = ehr_launch(browser, site.sandbox, hub, patient_ids(site.sandbox)[0])
        assert answer.status_code == 302, answer.text[:2000]
    with hub.api(hub.admin_token) as api:
        return next(u["name"] for u in api.get("/users").json() if u["name"].endswith("-fhir"))


def _kids(hub: Hub) -> list[str]:
    response = httpx.get(f"{hub.url}/hub/smart/jwks.json")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert not [m for jwk in keys for m in PRIVATE_MEMBERS if m in jwk]
    return [jwk["kid"] for jwk in keys]


def _kid(jwks: Path, index: int) -> str:
    return str(json.loads(jwks.read_text())["keys"][index]["kid"])


@pytest.mark.one_pass  # the keys the hub publishes and signs with: not the database's
def test_signing_key_rotation_without_a_failed_login(site: Site) -> None:
    """publish the successor -> switch to it -> keep the old published a while -> remove it."""
    old_pem, jwks = write_key_pair("RS384", site.keys, rsa_bits=2048)
    old = _kid(jwks, 0)
    with site.hub(site.issuers(old_pem)) as hub:  # before: one key, cached by the EHR
        assert _kids(hub) == [old]
        _login(site, hub)

    new_pem, _ = write_key_pair("ES384", site.keys)  # jwks.json now holds old and new
    new = _kid(jwks, 1)
    with site.hub(site.issuers(old_pem), published=[str(jwks)]) as hub:  # 1. publish
        assert _kids(hub) == [old, new]
        _login(site, hub)  # still signed with the old key

    with site.hub(site.issuers(new_pem), published=[str(jwks)]) as hub:  # 2. switch
        assert _kids(hub) == [new, old]  # the old one stays published for a while
        _login(site, hub)  # signed with the new key: the EHR accepts it
        log = hub.log_text()
    assert "invalid_client" not in log and "refused (" not in log

    with site.hub(site.issuers(new_pem)) as hub:  # 3. retire the old key
        assert _kids(hub) == [new]
        _login(site, hub)


@pytest.mark.one_pass  # the authenticator's own check (a refused start-up runs in both passes)
def test_private_key_named_for_publication_stops_the_hub(site: Site) -> None:
    """The wrong file in published_jwks (the private key itself): refused, never served."""
    pem, _jwks = write_key_pair("RS384", site.keys / "leak", rsa_bits=2048)
    private_json = site.keys / "leak" / "private.json"
    from joserfc.jwk import RSAKey

    jwk = RSAKey.import_key(pem.read_bytes()).as_dict(private=True)
    private_json.write_text(json.dumps({"keys": [jwk]}))
    for wrong in (pem, private_json):
        with site.hub(site.issuers(pem), [str(wrong)], expect_failure=True) as hub:
            hub.process.wait(timeout=60)
            assert hub.process.returncode != 0
            log = hub.log_text()
            assert "published_jwks file" in log and "private key" in log, log[-3000:]
            assert str(jwk["d"])[:40] not in log


def test_removed_ehr_gets_no_token_after_the_restart(site: Site) -> None:
    """The admin removes an EHR and restarts the hub: its users' notebooks are told to sign
    in again at once, although their access tokens would still be valid for an hour."""
    pem, _jwks = write_key_pair("ES384", site.keys / "removed")
    with site.hub(site.issuers(pem)) as hub:
        name = _login(site, hub)
        token = hub.user_token(name)
        before = httpx.get(
            f"{hub.url}/hub/api/smart/token", headers={"Authorization": f"token {token}"}
        )
        assert before.status_code == 200
    with site.hub({}) as hub:
        response = httpx.get(
            f"{hub.url}/hub/api/smart/token", headers={"Authorization": f"token {token}"}
        )
        assert response.status_code == 401, response.text
        body = response.json()
        assert body["error"] == "reauthentication_required"
        assert "access_token" not in body
        if jupyterhub.version_info >= (6,):
            assert "no longer configured" in body["message"]
        else:  # JupyterHub 5 runs refresh_user first on API requests and ends the session itself
            assert "sign in again" in body["message"]
        records = [json.loads(line) for line in hub.audit_path.read_text().splitlines()]
        refused = [r for r in records if r["subtype"][0]["code"] == "reauthentication-required"]
        assert len(refused) == 1 and refused[0]["agent"][0]["altId"] == name
        assert hub.alive()


# SQLite restarts run once (JupyterHub 6); PostgreSQL ones on both JupyterHub versions
@pytest.fixture(
    scope="module",
    params=[pytest.param("sqlite", marks=pytest.mark.one_pass), "postgresql"],
)
def session_site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """A hub (public client of its own sandbox) to restart, on SQLite or PostgreSQL."""
    work = tmp_path_factory.mktemp(f"restart-{request.param}")
    port = free_port()
    client = sandbox_client("hub-restart", f"http://127.0.0.1:{port}", type="public")
    with run_sandbox(work / "sandbox", [client]) as sandbox:
        key, trail = secrets.token_hex(32), work / "audit.jsonl"
        if request.param == "sqlite":
            database = HubDatabase("sqlite:///" + str(work / "jupyterhub.sqlite"))
            yield Site(work, port, sandbox, work / "keys", key, database, audit_path=trail)
        else:
            with run_postgres() as server:
                database = new_database(server)
                yield Site(work, port, sandbox, work / "keys", key, database, audit_path=trail)


def _token_api(hub: Hub, token: str, **params: str) -> httpx.Response:
    return httpx.get(
        f"{hub.url}/hub/api/smart/token",
        params=params,
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )


def _stop(hub: Hub, sig: signal.Signals) -> None:
    hub.process.send_signal(sig)
    hub.process.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_restart_keeps_every_session(session_site: Site, sig: signal.Signals) -> None:
    """Stop the hub mid-session: its users stay signed in, notebooks get tokens at once,
    a sign-in waiting at the EHR completes or is told to start again, the trail goes on."""
    site = session_site
    issuers = {site.sandbox.iss: {"client_id": "hub-restart", "client_auth": "public"}}
    patients = patient_ids(site.sandbox)
    with Browser() as signed_in, Browser() as pending:
        with site.hub(issuers) as hub:
            answer = ehr_launch(signed_in, site.sandbox, hub, patients[0])
            assert answer.status_code == 302, answer.text[:2000]
            name = signed_in.get(f"{hub.url}/hub/api/user").json()["name"]
            notebook = hub.user_token(name)
            before = _token_api(hub, notebook)
            assert before.status_code == 200, before.text
            # a second sign-in, at the EHR's consent step when the hub goes away
            callback = launch_until_callback(pending, site.sandbox, hub, patients[1])
            _stop(hub, sig)
        with site.hub(issuers) as hub:
            # no one signed out: the browser's cookie and the notebook's token still work
            whoami = signed_in.get(f"{hub.url}/hub/api/user")
            assert whoami.status_code == 200 and whoami.json()["name"] == name
            after = _token_api(hub, notebook)
            assert after.status_code == 200, after.text
            assert after.json()["fhir_base_url"] == before.json()["fhir_base_url"]
            # the stored (sealed) refresh token still opens: a forced refresh rotates it
            rejected = hashlib.sha256(after.json()["access_token"].encode()).hexdigest()
            forced = _token_api(hub, notebook, rejected=rejected)
            assert forced.status_code == 200, forced.text
            assert forced.json()["access_token"] != after.json()["access_token"]
            # the sign-in that waited at the EHR: never a 500
            finished = pending.get(callback)
            assert finished.status_code in (302, 400), finished.text[:2000]
            if finished.status_code == 400:
                assert "Launch the app again from the EHR" in finished.text
            assert hub.alive()
    assert site.audit_path is not None
    report = verify([site.audit_path])
    records = [json.loads(line) for line in site.audit_path.read_text().splitlines()]
    actions = [r["subtype"][0]["code"] for r in records]
    assert report.records == len(records) and actions.count("token-refreshed") >= 1
