"""deploy/z2jh/values.yaml, checked: the chart's options, real traits, and a real hub started from it.

Zero to JupyterHub's jupyterhub_config.py loads ``hub.config`` with::

    for app, cfg in get_config("hub.config", {}).items():
        # (drops the secrets it sets itself: cookie_secret, proxy auth_token, CryptKeeper.keys)
        c[app].update(cfg)

then runs the ``hub.extraConfig`` snippets in key order (this file has none), after
setting ``c.CryptKeeper.keys`` from ``hub.existingSecret`` when it holds the key, else
from the Secret the chart generates. :data:`CHART_CONFIG` does the
same inside a real hub's configuration; only the addresses (ports, the sandbox as
the EHR, TLS) and file paths are changed afterwards, by :data:`LOCAL_ADJUSTMENTS`.
"""

from __future__ import annotations

import copy
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from cryptography.fernet import InvalidToken
from hub_process import Browser, ehr_launch, open_sealed, patient_ids, run_hub
from jupyterhub.app import JupyterHub
from jupyterhub.auth import Authenticator
from jupyterhub.crypto import CryptKeeper
from jupyterhub.spawner import Spawner
from kubernetes_asyncio.config import kube_config
from kubespawner import KubeSpawner
from leak_scan import saw
from oauthenticator.oauth2 import OAuthenticator
from sandbox_process import free_port, run_sandbox
from traitlets.config import Config, Configurable

from jupyterhub_smart.hub import SMARTAuthenticator
from jupyterhub_smart.smart.keys import write_key_pair

from .conftest import sandbox_client

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "deploy" / "z2jh" / "values.yaml"
CHART_OPTIONS = Path(__file__).with_name("z2jh") / "chart_options.yaml"

#: The classes a hub.config section may name here, as JupyterHub resolves them.
CLASSES: dict[str, type[Configurable]] = {
    cls.__name__: cls
    for cls in (
        JupyterHub,
        SMARTAuthenticator,
        OAuthenticator,
        Authenticator,
        KubeSpawner,
        Spawner,
        CryptKeeper,
    )
}

CHART_CONFIG = """
import json
import os
import yaml

local = json.load(open(cfg["workdir"] + "/z2jh-local.json"))
values = yaml.safe_load(open(local["values"]))


def get_secret_value(key):
    # the chart mounts hub.existingSecret and its own Secret; the first wins
    for folder in (local["existing_secret_dir"], local["chart_secret_dir"]):
        path = os.path.join(folder, key)
        if os.path.exists(path):
            return open(path).read()
    raise KeyError(key)


# What the chart's jupyterhub_config.py does with these values
c.CryptKeeper.keys = get_secret_value("hub.config.CryptKeeper.keys").split(";")
for app, section in values["hub"].get("config", {}).items():
    if app == "JupyterHub":
        section.pop("proxy_auth_token", None)
        section.pop("cookie_secret", None)
        section.pop("services", None)
    elif app == "ConfigurableHTTPProxy":
        section.pop("auth_token", None)
    elif app == "CryptKeeper":
        section.pop("keys", None)
    c[app].update(section)
for key, config_py in sorted(values["hub"].get("extraConfig", {}).items()):
    exec(config_py)
"""

#: Addresses and paths only: this machine instead of the cluster.
LOCAL_ADJUSTMENTS = """
smart = c.SMARTAuthenticator
registration = dict(smart.issuers[local["values_issuer"]])
registration["private_key_path"] = local["private_key_path"]
smart.issuers = {local["issuer"]: registration}
smart.default_issuer = local["issuer"]
smart.oauth_callback_url = cfg["url"] + "/hub/oauth_callback"
smart.audit_log_path = cfg["audit_path"]
smart.admin_users = set()
# no TLS here: iframe cookies (SameSite=None; Secure) would not be sent back over http
smart.frame_ancestors = []
c.JupyterHub.public_url = cfg["url"]
"""


KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: unused, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: unused, user: {token: unused}}]
contexts: [{name: unused, context: {cluster: unused, user: unused}}]
current-context: unused
"""


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kubeconfig for KubeSpawner's constructor, which loads one (never contacted here)."""
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


def _values() -> dict[str, Any]:
    return dict(yaml.safe_load(VALUES.read_text()))


def _unknown_traits(values: dict[str, Any]) -> list[str]:
    """``Class.trait`` of every hub.config key that is not a configurable trait."""
    unknown = []
    for section, settings in values["hub"]["config"].items():
        cls = CLASSES.get(section)
        if cls is None:
            unknown.append(f"{section} (not a class this test knows)")
            continue
        traits = cls.class_traits(config=True)
        unknown.extend(f"{section}.{name}" for name in settings if name not in traits)
    return unknown


def test_every_hub_config_key_is_a_trait_of_its_class() -> None:
    values = _values()
    assert _unknown_traits(values) == []
    misspelt = copy.deepcopy(values)
    misspelt["hub"]["config"]["SMARTAuthenticator"]["issuer"] = "https://ehr.example.org/fhir"
    misspelt["hub"]["config"]["KubeSpawner"]["start_timeout_s"] = 600
    assert _unknown_traits(misspelt) == [
        "SMARTAuthenticator.issuer",
        "KubeSpawner.start_timeout_s",
    ]


@pytest.mark.usefixtures("kubeconfig")
async def test_kubespawner_takes_the_kubespawner_section() -> None:
    """The cluster-only section, through KubeSpawner's own trait validation (no cluster)."""
    section = _values()["hub"]["config"]["KubeSpawner"]
    spawner = KubeSpawner(_mock=True, config=Config({"KubeSpawner": section}))
    for name, value in section.items():
        assert getattr(spawner, name) == value


def _chart_schema() -> dict[str, Any]:
    """A JSON Schema built from our record of the chart's options (``z2jh/chart_options.yaml``).

    Each section the record names accepts only the chart's option names there; each option
    it types must have that type or one of its values.
    """
    options = yaml.safe_load(CHART_OPTIONS.read_text())
    schema: dict[str, Any] = {"type": "object"}

    def node(path: str) -> dict[str, Any]:
        here = schema
        for part in filter(None, path.split(".")):
            here = here.setdefault("properties", {}).setdefault(part, {})
        return here

    for section, names in options["names"].items():
        target = node(section)
        target.update(type="object", additionalProperties=False)
        for name in names:
            target.setdefault("properties", {}).setdefault(name, {})
    for path, constraint in options["values"].items():
        node(path).update(constraint)
    return schema


def test_values_use_only_the_charts_options() -> None:
    """Option names and values as the chart's configuration reference gives them."""
    schema = _chart_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    values = _values()
    assert [error.message for error in validator.iter_errors(values)] == []
    misplaced = copy.deepcopy(values)
    misplaced["hub"]["existingSecrets"] = misplaced["hub"].pop("existingSecret")
    misplaced["hub"]["db"]["type"] = "postgresql"
    misplaced["singleuser"]["homeMountPath"] = "/home/jovyan"
    misplaced["ingress"]["pathType"] = "prefix"
    misplaced["ingress"]["enabled"] = "yes"
    errors = [error.message for error in validator.iter_errors(misplaced)]
    assert any("'existingSecrets' was unexpected" in message for message in errors), errors
    assert any("'homeMountPath' was unexpected" in message for message in errors), errors
    assert any("'postgresql' is not one of" in message for message in errors), errors
    assert any("'prefix' is not one of" in message for message in errors), errors
    assert any("'yes' is not of type 'boolean'" in message for message in errors), errors


def test_secrets_volumes_and_network_policy_are_where_the_config_expects_them() -> None:
    values = _values()
    hub = values["hub"]
    smart = hub["config"]["SMARTAuthenticator"]
    assert "extraConfig" not in hub  # hub.config only: no Python in the values
    assert hub["existingSecret"]  # the crypt key and database password: the admin's Secret
    assert "password" not in hub["db"] and "@" not in hub["db"]["url"].split("//")[1].split("@")[0]
    volumes = {volume["name"]: volume for volume in hub["extraVolumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in hub["extraVolumeMounts"]}
    # each private key is a file of a mounted Secret
    for registration in smart["issuers"].values():
        if registration.get("client_auth") == "private_key_jwt":
            key_dir = str(Path(registration["private_key_path"]).parent)
            assert "secret" in volumes[mounts[key_dir]]
    # the audit log lives on a persistent volume
    audit_dir = str(Path(smart["audit_log_path"]).parent)
    assert "persistentVolumeClaim" in volumes[mounts[audit_dir]]
    # the hub may reach the EHR on 443, and so may the notebooks (FHIR data)
    for section in (hub, values["singleuser"]):
        ports = [p["port"] for rule in section["networkPolicy"]["egress"] for p in rule["ports"]]
        assert 443 in ports
    assert values["ingress"]["enabled"] is True
    assert smart["oauth_callback_url"].startswith(f"https://{values['ingress']['hosts'][0]}/")


@pytest.mark.usefixtures("kubeconfig", "crypt_key")
async def test_kubespawner_gets_the_token_api_url_and_no_token(tmp_path: Path) -> None:
    """The authenticator's pre_spawn_start on a real KubeSpawner (no cluster needed)."""
    spawner = KubeSpawner(_mock=True)  # KubeSpawner's own stand-ins for the user and the hub
    spawner.hub.api_url = "http://hub:8081/hub/api/"  # the chart's hub_connect_url
    spawner.hub.base_url = "/hub/"
    authenticator = SMARTAuthenticator(audit_log_path=str(tmp_path / "audit.jsonl"))
    await authenticator.pre_spawn_start(spawner.user, spawner)
    env = spawner.get_env()
    assert env["SMART_TOKEN_API_URL"] == "http://hub:8081/hub/api/smart/token"
    assert not any("REFRESH" in name or "ACCESS_TOKEN" in name for name in env)


@pytest.mark.slow
def test_a_hub_starts_from_the_values_and_signs_in_with_the_sandbox(tmp_path: Path) -> None:
    values = _values()
    smart = values["hub"]["config"]["SMARTAuthenticator"]
    values_issuer, registration = next(iter(smart["issuers"].items()))
    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    key_path, _ = write_key_pair(registration["signing_alg"], tmp_path / "keys", rsa_bits=2048)
    client = sandbox_client(
        registration["client_id"],
        hub_url,
        type="confidential-asymmetric",
        jwks_uri=f"{hub_url}/hub/smart/jwks.json",  # through the proxy, as through the ingress
    )
    own_key, chart_key, env_key = (secrets.token_hex(32) for _ in range(3))
    saw(own_key, chart_key, kind="crypt key")
    secret_dirs = {
        "existing_secret_dir": tmp_path / "existing-secret",
        "chart_secret_dir": tmp_path / "chart-secret",
    }
    for folder, key in zip(secret_dirs.values(), (own_key, chart_key), strict=True):
        folder.mkdir()
        (folder / "hub.config.CryptKeeper.keys").write_text(key)
    with run_sandbox(tmp_path / "sandbox", [client]) as sandbox:
        workdir = tmp_path / "hub"
        workdir.mkdir()
        (workdir / "z2jh-local.json").write_text(
            json.dumps(
                {
                    "values": str(VALUES),
                    **{name: str(folder) for name, folder in secret_dirs.items()},
                    "values_issuer": values_issuer,
                    "issuer": sandbox.iss,
                    "private_key_path": str(key_path),
                }
            )
        )
        # the placeholder issuers only satisfy the harness; hub.config replaces them
        placeholder = {sandbox.iss: {"client_id": registration["client_id"]}}
        # JUPYTERHUB_CRYPT_KEY is set too, to show it is not what encrypts (see below)
        extra = CHART_CONFIG + LOCAL_ADJUSTMENTS
        with run_hub(workdir, placeholder, port=port, extra=extra, crypt_key=env_key) as hub:
            keys = httpx.get(f"{hub.url}/hub/smart/jwks.json", timeout=30).json()["keys"]
            assert [key["kid"] for key in keys] == [registration["key_id"]]
            with Browser() as browser:
                answer = ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[0])
                assert answer.status_code == 302, answer.text[:2000]
            with hub.api(hub.admin_token) as api:
                name = next(u["name"] for u in api.get("/users").json() if "@" in u["name"])
            token = hub.user_token(name)
            response = httpx.get(
                f"{hub.url}/hub/api/smart/token",
                headers={"Authorization": f"token {token}"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            saw(response.json()["access_token"], kind="access token")
            # auth_state is encrypted with the key of hub.existingSecret: not the chart's
            # generated one, and not JUPYTERHUB_CRYPT_KEY (c.CryptKeeper.keys outranks it)
            sealed = hub.rest_auth_state(name)["sealed_refresh_token"]
            assert open_sealed(own_key, sealed)
            for other in (chart_key, env_key):
                with pytest.raises(InvalidToken):
                    open_sealed(other, sealed)
            assert hub.audit_path.read_text().count('"login-succeeded"') >= 1
            log = hub.log_text()
            assert "Traceback" not in log and " 500 GET" not in log
