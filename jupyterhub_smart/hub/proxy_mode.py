"""FHIR proxy mode, hub side: the options, the managed service, and who may get tokens.

With ``c.SMARTAuthenticator.fhir_access = "proxy"`` kernels hold no EHR token.
The hub runs ``jupyterhub_smart.proxy`` as a JupyterHub-managed service (its own
process, so the hub's event loop never carries FHIR data); the single-user
environment names the proxy instead of the token API, and the token API answers
only the proxy, which proves itself with its own JupyterHub service token in a
second header while the caller's token still goes through every usual check
(:class:`~.token_api.SMARTTokenAPIHandler`). Nothing here imports the proxy
package: the hub only starts it as a command.
"""

from __future__ import annotations

import hmac
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jupyterhub import orm
from jupyterhub.utils import url_path_join
from traitlets import Dict, Float, Integer, Unicode, validate
from traitlets.config import LoggingConfigurable

from ..smart.issuer_key import issuer_keys

__all__ = [
    "CONFIG_ENV",
    "PROXY_CREDENTIAL_HEADER",
    "PROXY_URL_ENV",
    "FHIRAccessOptions",
    "is_proxy_request",
    "proxy_environment",
    "register_proxy_service",
]

#: Environment variable of the proxy process holding its settings (JSON, no secrets).
CONFIG_ENV = "SMART_FHIR_PROXY_CONFIG"
#: Environment variable of single-user servers in proxy mode: the proxy's base URL.
PROXY_URL_ENV = "SMART_FHIR_PROXY_URL"
#: Header in which the proxy sends its own service token to the token API.
PROXY_CREDENTIAL_HEADER = "X-SMART-Proxy-Authorization"


class FHIRAccessOptions(LoggingConfigurable):
    """The options of how notebooks reach the EHR (mixed into SMARTAuthenticator)."""

    fhir_access = Unicode(
        "token",
        config=True,
        help="""How notebooks reach the EHR's FHIR server. "token" (default): the token API
        hands each notebook short-lived EHR access tokens and the notebook calls the FHIR
        server itself (lowest latency; the trail knows of a data access when the notebook
        client reports it). "proxy": kernels never hold an EHR token; every FHIR request goes
        through the hub's FHIR proxy service (/services/<fhir_proxy_service_name>/), which
        enforces the granted scopes and has the hub record each request in its audit trail
        (before the answer completes); the token
        API then answers only the proxy. See docs/admin-guide.md, "Token mode or proxy mode".""",
    )

    @validate("fhir_access")
    def _validate_fhir_access(self, proposal: Any) -> str:
        value = str(proposal["value"])
        if value not in ("token", "proxy"):
            raise ValueError(
                f'SMARTAuthenticator.fhir_access must be "token" or "proxy", not {value!r}'
            )
        return value

    fhir_proxy_service_name = Unicode(
        "smart-fhir",
        config=True,
        help="""Name of the JupyterHub service that is the FHIR proxy: it serves
        /services/<name>/<issuer key>/<FHIR path>. If JupyterHub.services already defines a
        service of this name (for instance one run outside the hub, without "command"), the
        hub uses that definition instead of starting its own.""",
    )

    fhir_proxy_url = Unicode(
        "http://127.0.0.1:8765",
        config=True,
        help="""Where the FHIR proxy listens (http://host:port), and the address kernels use
        to reach it (the single-user environment's SMART_FHIR_PROXY_URL is this plus
        /services/<name>/). On Kubernetes, an address of the hub pod that user pods can
        reach.""",
    )

    fhir_proxy_max_concurrent = Integer(
        8,
        min=1,
        config=True,
        help="""FHIR requests one user may have in flight through the proxy at once. One
        more is answered 429 with Retry-After, so that one notebook cannot take all of the
        proxy's (or the EHR's) capacity.""",
    )

    fhir_proxy_rate = Float(
        50.0,
        min=0.1,
        config=True,
        help="""FHIR requests per second one user may send through the proxy on average
        (a token bucket of fhir_proxy_burst requests). Beyond it: 429 with Retry-After.""",
    )

    fhir_proxy_burst = Integer(
        100,
        min=1,
        config=True,
        help="Requests one user may send at once before fhir_proxy_rate applies.",
    )

    fhir_proxy_timeout = Float(
        60.0,
        min=1.0,
        config=True,
        help="""Seconds the proxy waits for the EHR to start answering (connect and first
        byte) and between two chunks of its answer. Past it the caller gets 504 (or, mid-
        answer, a cut connection).""",
    )

    fhir_proxy_settings = Dict(
        config=True,
        help="""Further settings passed to the proxy process as they are (see
        jupyterhub_smart.proxy.config.ProxyConfig), e.g. {"max_request_body": 10485760}.""",
    )


def proxy_config(authenticator: Any) -> dict[str, Any]:
    """The proxy process's settings, from the authenticator's options (no secrets)."""
    keys = issuer_keys(authenticator.ehr.policy.issuers)
    return {
        **dict(authenticator.fhir_proxy_settings),
        "issuers": keys,
        "max_concurrent": authenticator.fhir_proxy_max_concurrent,
        "rate": authenticator.fhir_proxy_rate,
        "burst": authenticator.fhir_proxy_burst,
        "timeout": authenticator.fhir_proxy_timeout,
        "allow_insecure_http": authenticator.allow_insecure_http,
        # the hub has checked the file; absolute, as the service may run elsewhere on disk
        "ehr_ca_bundle": (
            str(Path(authenticator.ehr_ca_bundle).expanduser().absolute())
            if authenticator.ehr_ca_bundle
            else ""
        ),
        "managed": True,
    }


def register_proxy_service(authenticator: Any, app: Any) -> None:
    """Add the proxy to ``app.services`` (before JupyterHub reads them) unless it is there."""
    name = authenticator.fhir_proxy_service_name
    if any(spec.get("name") == name for spec in app.services):
        authenticator.log.info("FHIR proxy: using the service %r from JupyterHub.services", name)
        return
    url = authenticator.fhir_proxy_url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.port or parts.path not in ("", "/"):
        raise ValueError(
            "SMARTAuthenticator.fhir_proxy_url must be http(s)://host:port (with a port, no "
            f"path), not {url!r}"
        )
    spec = {
        "name": name,
        "url": url,
        "command": [sys.executable, "-m", "jupyterhub_smart.proxy"],
        "environment": {CONFIG_ENV: json.dumps(proxy_config(authenticator))},
        "display": False,
    }
    app.services = [*app.services, spec]
    authenticator.log.info("FHIR proxy mode: the hub runs the service %r at %s", name, url)


def proxy_environment(authenticator: Any) -> dict[str, str]:
    """What a single-user server gets in proxy mode: where the proxy is (never a token)."""
    name = authenticator.fhir_proxy_service_name
    base = url_path_join(authenticator.fhir_proxy_url.rstrip("/"), "services", name) + "/"
    return {PROXY_URL_ENV: base}


def is_proxy_request(handler: Any, service_name: str) -> bool:
    """True when the request carries the proxy service's own JupyterHub token.

    The value is looked up in JupyterHub's database, so a rotated or revoked
    service token stops working at once; only the service named
    ``service_name`` qualifies.
    """
    header = handler.request.headers.get(PROXY_CREDENTIAL_HEADER, "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() not in ("token", "bearer") or not value.strip():
        return False
    token = orm.APIToken.find(handler.db, value.strip())
    service = getattr(token, "service", None) if token is not None else None
    return service is not None and hmac.compare_digest(str(service.name), service_name)
