"""A real JupyterHub process whose authenticator serves our audit handler.

Until the SMARTAuthenticator lands, the handler is exercised through JupyterHub's
own DummyAuthenticator extended with ``get_handlers`` + ``get_audit_log``: the
same two hooks the SMART authenticator provides. Users and their API tokens are
made through the hub's REST API with an admin service token.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sandbox_process import free_port

CONFIG = """
from jupyterhub.auth import DummyAuthenticator

from jupyterhub_smart.audit import AuditLog
from jupyterhub_smart.hub.audit_handlers import audit_handlers
from jupyterhub_smart.hub.scopes import register_smart_scopes


class AuditTestAuthenticator(DummyAuthenticator):
    _audit_log = None

    def get_audit_log(self):
        if AuditTestAuthenticator._audit_log is None:
            AuditTestAuthenticator._audit_log = AuditLog(
                {audit_path!r}, retry_interval=0.05, max_retry_interval=0.2
            )
        return AuditTestAuthenticator._audit_log

    def get_handlers(self, app):
        register_smart_scopes(app)
        return super().get_handlers(app) + audit_handlers


c.JupyterHub.authenticator_class = AuditTestAuthenticator
c.Authenticator.allow_all = True
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{workdir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/cookie_secret"
c.JupyterHub.pid_file = "{workdir}/jupyterhub.pid"
c.JupyterHub.services = [{{"name": "test-admin", "api_token": {admin_token!r}}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["test-admin"]}}]
"""


@dataclass
class Hub:
    url: str
    admin_token: str
    audit_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def api(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"token {token}"} if token else {}
        return httpx.Client(base_url=f"{self.url}/hub/api", headers=headers, timeout=30)

    def user_token(self, name: str) -> str:
        with self.api(self.admin_token) as client:
            client.post(f"/users/{name}")  # 201, or 409 if it exists
            response = client.post(f"/users/{name}/tokens", json={"note": "audit test"})
            response.raise_for_status()
            return str(response.json()["token"])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def run_hub(workdir: Path, audit_path: Path | None = None, timeout: float = 120.0) -> Iterator[Hub]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    admin_token = secrets.token_hex(24)
    audit_path = audit_path or workdir / "audit" / "jupyterhub-smart-audit.jsonl"
    config = workdir / "jupyterhub_config.py"
    config.write_text(
        textwrap.dedent(
            CONFIG.format(
                audit_path=str(audit_path),
                port=port,
                hub_port=free_port(),
                proxy_api_port=free_port(),
                workdir=workdir,
                admin_token=admin_token,
            )
        )
    )
    log_path = workdir / "jupyterhub.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(config)],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    hub = Hub(f"http://127.0.0.1:{port}", admin_token, audit_path, log_path, process)
    try:
        deadline = time.monotonic() + timeout
        while True:
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
