"""A real JupyterHub process for a test, and a browser driven by hand.

``run_hub`` writes a ``jupyterhub_config.py`` (settings from a JSON file, so no
value is pasted into Python source), starts ``python -m jupyterhub`` on free
loopback ports with ``JUPYTERHUB_CRYPT_KEY`` set and its database (SQLite in the
work directory, or a fresh PostgreSQL database when ``SMART_TEST_DB=postgresql``:
:mod:`pg_process`), waits for the API to answer, and keeps the hub's log in a file. The
log, the audit trail and the database go to the session's secret scan
(``leak_scan``), and so does every secret the hub and the browser handle. With ``issuers`` the hub runs the
SMARTAuthenticator; without, JupyterHub's DummyAuthenticator extended with the
two hooks through which the SMART authenticator serves the audit endpoint
(``get_handlers`` and ``get_audit_log``), for tests of that endpoint alone.

``Browser`` is an ``httpx.Client`` with a cookie jar that follows redirects one
at a time, so tests can stop and look at each hop.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from leak_scan import hub_wrote, saw
from pg_process import HubDatabase, new_database, selected_database, shared_server
from sandbox_process import SandboxProcess, free_port

COMMON_CONFIG = """
import json
cfg = json.load(open({settings!r}))
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = cfg["port"]
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = cfg["hub_port"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:%d" % cfg["proxy_api_port"]
c.JupyterHub.db_url = cfg["db_url"]
c.JupyterHub.cookie_secret_file = cfg["workdir"] + "/cookie_secret"
c.JupyterHub.pid_file = cfg["workdir"] + "/jupyterhub.pid"
c.JupyterHub.redirect_to_server = False
c.JupyterHub.log_level = "DEBUG"
c.JupyterHub.spawner_class = "simple"
c.Spawner.cmd = [{python!r}, "-m", "jupyterhub.singleuser"]
c.Spawner.default_url = "/tree"
c.Spawner.args = ["--allow-root"]
c.JupyterHub.services = [{{"name": "test-admin", "api_token": cfg["admin_token"]}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["test-admin"]}}]
"""

SMART_CONFIG = """
c.JupyterHub.authenticator_class = "smart"
c.SMARTAuthenticator.issuers = cfg["issuers"]
c.SMARTAuthenticator.allow_all = True
c.SMARTAuthenticator.oauth_callback_url = cfg["url"] + "/hub/oauth_callback"
c.SMARTAuthenticator.audit_log_path = cfg["audit_path"]
for key, value in cfg["authenticator"].items():
    setattr(c.SMARTAuthenticator, key, value)
"""

AUDIT_ONLY_CONFIG = """
from jupyterhub.auth import DummyAuthenticator

from jupyterhub_smart.audit import AuditLog
from jupyterhub_smart.hub.audit_handlers import audit_handlers
from jupyterhub_smart.hub.scopes import register_smart_scopes


class AuditTestAuthenticator(DummyAuthenticator):
    _audit_log = None

    def get_audit_log(self):
        if AuditTestAuthenticator._audit_log is None:
            AuditTestAuthenticator._audit_log = AuditLog(
                cfg["audit_path"], retry_interval=0.05, max_retry_interval=0.2
            )
        return AuditTestAuthenticator._audit_log

    def get_handlers(self, app):
        register_smart_scopes(app)
        return super().get_handlers(app) + audit_handlers


c.JupyterHub.authenticator_class = AuditTestAuthenticator
c.Authenticator.allow_all = True
"""


#: Extra config for ``run_hub(issuers=None)``: the audit page and the alert rules wired in as
#: SMARTAuthenticator wires them; ``officer`` holds custom:smart:audit-read, ``chief`` is an
#: admin; ``authenticator={"webhook": URL}`` (may be "") sets the alert webhook; alert
#: limits: 3 distinct patients, 2 refused tokens.
AUDIT_REVIEW_CONFIG = """
from jupyterhub_smart.hub.audit_page import audit_page_handlers
from jupyterhub_smart.hub.audit_review import AuditReviewSettings
from jupyterhub_smart.hub.scopes import define_smart_scopes

define_smart_scopes()


class ReviewTestAuthenticator(AuditReviewSettings, AuditTestAuthenticator):
    audit_log_path = cfg["audit_path"]

    def get_audit_log(self):
        if AuditTestAuthenticator._audit_log is None:
            alerts = self.alert_sink()
            log = AuditLog(cfg["audit_path"], sinks=[alerts])
            alerts.attach(log)
            AuditTestAuthenticator._audit_log = log
        return AuditTestAuthenticator._audit_log

    def get_handlers(self, app):
        return super().get_handlers(app) + audit_page_handlers


c.JupyterHub.authenticator_class = ReviewTestAuthenticator
c.ReviewTestAuthenticator.audit_alert_patient_limit = 3
c.ReviewTestAuthenticator.audit_alert_refused_limit = 2
c.ReviewTestAuthenticator.audit_alert_webhook = cfg["authenticator"].get("webhook", "")
c.Authenticator.admin_users = {"chief"}
c.JupyterHub.load_roles = [
    {"name": "admin", "services": ["test-admin"]},
    {"name": "privacy-officer", "scopes": ["custom:smart:audit-read"], "users": ["officer"]},
]
"""


@dataclass
class Hub:
    """A running hub: its URL, admin token, files and process."""

    url: str
    port: int
    admin_token: str
    workdir: Path
    audit_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    database: HubDatabase
    crypt_key: str = field(repr=False, default="")
    #: Port of the hub's own API (what services and servers connect to).
    hub_port: int = 0

    @property
    def login_url(self) -> str:
        return f"{self.url}/hub/oauth_login"

    @property
    def callback_url(self) -> str:
        return f"{self.url}/hub/oauth_callback"

    @property
    def db_path(self) -> Path:
        """The SQLite file, or (PostgreSQL) the dump written when the hub stops."""
        return self.database.file_in(self.workdir)

    def api(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"token {token}"} if token else {}
        return httpx.Client(base_url=f"{self.url}/hub/api", headers=headers, timeout=30)

    def user_token(self, name: str, *, create: bool = False, **body: Any) -> str:
        """An API token of ``name`` made by the admin service (default permissions).

        ``create``: make the user first (one who never signed in), if not there yet.
        """
        with self.api(self.admin_token) as client:
            if create:
                made = client.post(f"/users/{name}")
                if made.status_code != 409:  # 409: the user exists already
                    made.raise_for_status()
            response = client.post(f"/users/{name}/tokens", json={"note": "test", **body})
            response.raise_for_status()
            token = str(response.json()["token"])
        saw(token, kind="hub API token")
        return token

    def rest_auth_state(self, name: str) -> dict[str, Any]:
        """auth_state as JupyterHub's REST API shows it to an ``admin:auth_state`` holder."""
        with self.api(self.admin_token) as client:
            response = client.get(f"/users/{name}")
            response.raise_for_status()
            return dict(response.json().get("auth_state") or {})

    def auth_state(self, name: str) -> dict[str, Any]:
        """auth_state with the sealed refresh token opened, as the hub itself sees it.

        Opened here from JUPYTERHUB_CRYPT_KEY with the derivation docs/security.md
        documents (HKDF-SHA256, info ``jupyterhub-smart refresh-token v1``, Fernet), not
        with the hub's code.
        """
        state = self.rest_auth_state(name)
        sealed = state.pop("sealed_refresh_token", None)
        if sealed:
            state["refresh_token"] = open_sealed(self.crypt_key, sealed)
        for key in ("access_token", "refresh_token", "id_token"):
            saw(state.get(key), kind=key.replace("_", " "))
        return state

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> str:
        """The log once it contains ``text`` (a request's line lands just after its answer)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log_text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} did not appear in {self.log_path}")
            time.sleep(0.05)
        return log

    def alive(self) -> bool:
        return self.process.poll() is None and httpx.get(f"{self.url}/hub/api/").status_code == 200


@contextmanager
def run_hub(
    workdir: Path,
    issuers: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    port: int | None = None,
    authenticator: Mapping[str, Any] | None = None,
    extra: str = "",
    crypt_key: str | None = None,
    audit_path: Path | None = None,
    timeout: float = 120.0,
    expect_failure: bool = False,
    database: HubDatabase | None = None,
    hub_port: int | None = None,
) -> Iterator[Hub]:
    """Run JupyterHub until the block ends: the SMARTAuthenticator for ``issuers``,
    or (``issuers=None``) the audit endpoint alone on the DummyAuthenticator.

    ``database``: the hub's database (pass the same one again to restart a hub on
    it); by default a new one, of the kind ``SMART_TEST_DB`` names."""
    workdir.mkdir(parents=True, exist_ok=True)
    database = database or default_database(workdir)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    admin_token = secrets.token_hex(24)
    audit_path = audit_path or workdir / "jupyterhub-smart-audit.jsonl"
    settings = workdir / "settings.json"
    settings.write_text(
        json.dumps(
            {
                "issuers": dict(issuers or {}),
                "authenticator": dict(authenticator or {}),
                "url": url,
                "port": port,
                "hub_port": hub_port or free_port(),
                "proxy_api_port": free_port(),
                "workdir": str(workdir),
                "audit_path": str(audit_path),
                "admin_token": admin_token,
                "db_url": database.url,
            }
        )
    )
    auth_config = AUDIT_ONLY_CONFIG if issuers is None else SMART_CONFIG
    config = workdir / "jupyterhub_config.py"
    config.write_text(
        COMMON_CONFIG.format(settings=str(settings), python=sys.executable) + auth_config + extra
    )
    log_path = workdir / "jupyterhub.log"
    log = log_path.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("JUPYTERHUB_CRYPT_KEY", None)
    key = secrets.token_hex(32) if crypt_key is None else crypt_key
    saw(key, kind="crypt key")
    saw(admin_token, kind="hub API token")
    hub_wrote(log_path, audit_path, database.file_in(workdir))
    if key:
        env["JUPYTERHUB_CRYPT_KEY"] = key
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(config)],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    hub = Hub(url, port, admin_token, workdir, audit_path, log_path, process, database, key)
    hub.hub_port = json.loads(settings.read_text())["hub_port"]
    try:
        deadline = time.monotonic() + timeout
        while not expect_failure:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("JupyterHub did not start:\n" + hub.log_text()[-4000:])
            try:
                if httpx.get(f"{hub.url}/hub/api/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield hub
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log.close()
        database.dump_for_scan(hub.db_path)


#: PostgreSQL databases by the work folder of the hub that made them (see default_database).
_POSTGRES_BY_WORKDIR: dict[Path, HubDatabase] = {}


def default_database(workdir: Path) -> HubDatabase:
    """The hub database of ``workdir``: SQLite in it, or PostgreSQL when SMART_TEST_DB says so.

    As with the SQLite file, a hub started again in the same folder (a restart) finds
    the same database.
    """
    if selected_database() == "postgresql":
        key = workdir.resolve()
        if key not in _POSTGRES_BY_WORKDIR:
            _POSTGRES_BY_WORKDIR[key] = new_database(shared_server())
        return _POSTGRES_BY_WORKDIR[key]
    return HubDatabase("sqlite:///" + str(workdir / "jupyterhub.sqlite"))


def open_sealed(crypt_key: str, sealed: str) -> str:
    """A sealed refresh token opened with any of the ``;``-separated hex crypt keys."""
    keys = []
    for key in crypt_key.split(";"):
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"jupyterhub-smart refresh-token v1",
        )
        keys.append(Fernet(base64.urlsafe_b64encode(hkdf.derive(bytes.fromhex(key)))))
    return MultiFernet(keys).decrypt(sealed.encode("ascii")).decode("utf-8")


#: Query parameters of the OAuth flow that carry a secret, and what each is.
SECRET_PARAMS = {"code": "authorization code", "nonce": "nonce", "code_verifier": "code verifier"}


def _saw_secrets_in(url: str | httpx.URL) -> None:
    """Report the codes and nonces in a URL (a request, or where a redirect points)."""
    for name, value in httpx.URL(url).params.multi_items():
        if name in SECRET_PARAMS:
            saw(value, kind=SECRET_PARAMS[name])


class Browser:
    """A cookie-keeping HTTP client that follows redirects one hop at a time."""

    def __init__(self, verify: ssl.SSLContext | bool = True) -> None:
        # verify: a context trusting a test CA, for an EHR served over TLS
        self.client = httpx.Client(follow_redirects=False, timeout=30, verify=verify)
        self.visited: list[str] = []

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        self.visited.append(url)
        response = self.client.get(url, **kwargs)
        _saw_secrets_in(response.request.url)
        if "location" in response.headers:
            _saw_secrets_in(location(response))
        return response

    def logout(self, hub_url: str) -> httpx.Response:
        """Sign out as a user does: open ``/hub/logout``, then submit its form (POST, ``_xsrf``).

        Returns the answer to the POST.
        """
        page = self.get(f"{hub_url}/hub/logout")
        assert page.status_code == 200, page.text[:1000]
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        assert xsrf, page.text[:2000]
        return self.client.post(f"{hub_url}/hub/logout", data={"_xsrf": xsrf.group(1)})

    def follow(self, url: str, *, stop_at: str | None = None, max_hops: int = 12) -> httpx.Response:
        """GET ``url`` and follow redirects; stop before requesting a URL starting with ``stop_at``.

        When stopping, the last response (whose Location starts with ``stop_at``) is returned.
        """
        response = self.get(url)
        for _ in range(max_hops):
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            target = urljoin(str(response.url), response.headers["location"])
            if stop_at and target.startswith(stop_at):
                return response
            response = self.get(target)
        raise AssertionError(f"too many redirects: {self.visited[-max_hops:]}")


def location(response: httpx.Response) -> str:
    return urljoin(str(response.url), response.headers["location"])


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def patient_ids(sandbox: SandboxProcess) -> list[str]:
    page = httpx.get(sandbox.origin + "/ehr", timeout=30).text
    return list(dict.fromkeys(re.findall(r'name="patient" value="([^"]+)"', page)))


def practitioner_ids(sandbox: SandboxProcess) -> list[str]:
    """The practitioners the sandbox's EHR page offers to launch as."""
    page = httpx.get(sandbox.origin + "/ehr", timeout=30).text
    select = page.split('name="practitioner"', 1)[1].split("</select>", 1)[0]
    return [p for p in dict.fromkeys(re.findall(r'<option value="([^"]*)"', select)) if p]


def launch_until_callback(
    browser: Browser,
    sandbox: SandboxProcess,
    hub: Hub,
    patient: str,
    practitioner: str | None = None,
) -> str:
    """EHR launch by plain HTTP up to the hub's callback: sandbox /ehr/launch -> hub ->
    authorize. Returns the callback URL the EHR redirects to, not yet requested, so a
    test can send it, replay it, or hand it to another browser. ``practitioner``: sign
    in as that one (the sandbox approves as them only with ``--auto-approve``)."""
    params = {"app": hub.login_url, "patient": patient}
    if practitioner is not None:
        params["practitioner"] = practitioner
    start = httpx.URL(sandbox.origin + "/ehr/launch", params=params)
    hop = browser.follow(str(start), stop_at=hub.callback_url)
    assert hop.status_code == 302, hop.text[:2000]
    return location(hop)


def ehr_launch(
    browser: Browser,
    sandbox: SandboxProcess,
    hub: Hub,
    patient: str,
    practitioner: str | None = None,
) -> httpx.Response:
    """EHR launch by plain HTTP: sandbox /ehr/launch -> hub -> authorize -> callback.

    Returns the hub's answer to the callback (not followed further).
    """
    return browser.get(launch_until_callback(browser, sandbox, hub, patient, practitioner))
