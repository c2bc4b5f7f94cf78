"""An EHR over TLS with a certificate from an internal CA, reached by the hub and the proxy.

The front (:mod:`.ehr_front`) serves HTTPS on loopback with a certificate for
127.0.0.1 signed by a test CA (:mod:`pki`) that neither certifi nor the system
trusts; the sandbox publishes the front's https URL as its issuer. With
``ehr_ca_bundle`` naming that CA, a sign-in (discovery, token endpoint, JWKS,
all over TLS) and a notebook-style request through the proxy (its own TLS
pool) work; without it the sign-in stops with a page that names the
certificate problem and the option, not a 500.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hub_process import Browser, ehr_launch, run_hub
from pki import Pki, make_pki
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.smart.issuer_key import issuer_key

from .ehr_front import Front, run_front
from .world import wait_for_proxy


@dataclass
class TLSEHR:
    front: Front
    sandbox: SandboxProcess
    pki: Pki
    hub_port: int

    def browser(self) -> Browser:
        """A browser that trusts the test CA (as the hospital's managed browsers do)."""
        return Browser(verify=ssl.create_default_context(cafile=str(self.pki.ca)))

    def patient(self) -> str:
        # the sandbox's own plain-HTTP port: the test's helpers do not trust the test CA
        page = httpx.get(f"http://127.0.0.1:{self.sandbox.port}/ehr", timeout=30).text
        return re.findall(r'name="patient" value="([^"]+)"', page)[0]


@pytest.fixture(scope="module")
def tls_ehr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSEHR]:
    work = tmp_path_factory.mktemp("tls-ehr")
    pki = make_pki(work / "pki")
    hub_port, sandbox_port = free_port(), free_port()
    client = {
        "client_id": "hub-public",
        "type": "public",
        "redirect_uris": [f"http://127.0.0.1:{hub_port}/hub/oauth_callback"],
    }
    with (
        run_front(
            free_port(),
            f"http://127.0.0.1:{sandbox_port}",
            free_port(),
            tls=(pki.server_cert, pki.server_key),
        ) as front,
        run_sandbox(
            work / "sandbox",
            [client],
            port=sandbox_port,
            extra_args=["--public-url", front.origin],
        ) as sandbox,
    ):
        assert sandbox.iss.startswith("https://127.0.0.1:")
        yield TLSEHR(front, sandbox, pki, hub_port)


def test_with_the_ca_bundle_sign_in_and_the_proxy_reach_the_ehr_over_tls(
    tls_ehr: TLSEHR, tmp_path: Path
) -> None:
    proxy_port = free_port()
    issuers = {tls_ehr.sandbox.iss: {"client_id": "hub-public", "client_auth": "public"}}
    options = {
        "fhir_access": "proxy",
        "fhir_proxy_url": f"http://127.0.0.1:{proxy_port}",
        "ehr_ca_bundle": str(tls_ehr.pki.ca),
    }
    with run_hub(tmp_path, issuers, port=tls_ehr.hub_port, authenticator=options) as hub:
        root = f"http://127.0.0.1:{proxy_port}/services/smart-fhir/"
        wait_for_proxy(root)
        patient = tls_ehr.patient()
        with tls_ehr.browser() as browser:
            answer = ehr_launch(browser, tls_ehr.sandbox, hub, patient)
            assert answer.status_code == 302, answer.text[:1000]
        users = hub.api(hub.admin_token).get("/users").json()
        (name,) = [u["name"] for u in users if u["name"] != "admin"]
        token = hub.user_token(name)
        # what a notebook does in proxy mode: its JupyterHub token, the proxy's URL
        response = httpx.get(
            f"{root}{issuer_key(tls_ehr.sandbox.iss)}/Patient/{patient}",
            headers={"Authorization": f"token {token}"},
            timeout=30,
            trust_env=False,
        )
        assert response.status_code == 200, response.text[:1000]
        assert response.json()["id"] == patient
        # it went through the TLS front, with the EHR token the proxy holds
        forwarded = [r for r in tls_ehr.front.received if r["path"].endswith(f"/{patient}")]
        assert forwarded and forwarded[-1]["headers"]["Authorization"].startswith("Bearer ")


def test_without_the_ca_bundle_sign_in_fails_naming_the_certificate(
    tls_ehr: TLSEHR, tmp_path: Path
) -> None:
    issuers = {tls_ehr.sandbox.iss: {"client_id": "hub-public", "client_auth": "public"}}
    with run_hub(tmp_path, issuers, port=tls_ehr.hub_port) as hub:
        with tls_ehr.browser() as browser:
            start = httpx.URL(
                tls_ehr.sandbox.origin + "/ehr/launch",
                params={"app": hub.login_url, "patient": tls_ehr.patient()},
            )
            page = browser.follow(str(start))
        assert page.status_code == 502, page.text[:2000]
        assert str(page.url).startswith(hub.login_url)  # the hub refused: discovery failed
        assert "TLS certificate is not trusted" in page.text, page.text[:2000]
        assert "ehr_ca_bundle" in page.text
