"""``connect()``: the two lines a researcher types.

In a single-user server spawned by a jupyterhub-smart hub, the environment
holds ``SMART_TOKEN_API_URL`` (the hub's token API) and JupyterHub's own
``JUPYTERHUB_API_TOKEN``; ``connect()`` uses them and nothing else (no access
token ever sits in the environment). Anywhere else, pass the FHIR base and a
token, or a function that returns tokens.

``connect()`` fetches the first token at once, so that a problem (not in a
SMART hub, session ended, hub down) shows up on the ``connect()`` line with
what to do, not later in the middle of an analysis. When the EHR asked for a
patient banner (``need_patient_banner``) it displays the banner.

In proxy mode the environment holds ``SMART_FHIR_PROXY_URL`` instead: the
client then talks to the hub's FHIR proxy with the server's API token
(:mod:`.proxied`), and the proxy records each request itself.

In a hub's server, every FHIR request the client makes is also reported to
the hub's audit trail (interaction, resource type, parameter names, count,
status; never a value), unless ``event_sink=`` names another sink: see
:mod:`.reporting`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .client import AsyncSMARTClient, SMARTClient
from .context import display_banner, in_notebook
from .errors import TokenUnavailable
from .events import EventSink
from .proxied import PROXY_URL_ENV, ProxySessionProvider
from .tokens import (
    CallableTokenProvider,
    HubTokenProvider,
    StaticTokenProvider,
    TokenLike,
    TokenProvider,
)

__all__ = ["connect", "connect_async", "default_event_sink", "make_provider"]

TOKEN_API_ENV = "SMART_TOKEN_API_URL"  # noqa: S105 - a variable name
API_TOKEN_ENV = "JUPYTERHUB_API_TOKEN"  # noqa: S105 - a variable name


def make_provider(
    fhir_base_url: str | None = None,
    token: str | None = None,
    token_provider: TokenProvider | Callable[[], TokenLike] | None = None,
    patient: str | None = None,
) -> TokenProvider:
    """The token provider ``connect()`` would use for these arguments and this environment."""
    from .errors import NotInSMARTHub

    if token is not None and token_provider is not None:
        raise TypeError("pass either token= or token_provider=, not both")
    if token is not None:
        if not fhir_base_url:
            raise TypeError("connect(token=...) also needs fhir_base_url=... (where to use it)")
        return StaticTokenProvider(token, fhir_base_url, patient=patient)
    if patient is not None:
        raise TypeError("patient= goes with token=; a token provider returns its own 'patient'")
    if token_provider is not None:
        if isinstance(token_provider, TokenProvider):
            return token_provider
        return CallableTokenProvider(token_provider, fhir_base_url)
    url = os.environ.get(TOKEN_API_ENV, "").strip()
    api_token = os.environ.get(API_TOKEN_ENV, "").strip()
    proxy_url = os.environ.get(PROXY_URL_ENV, "").strip()
    if proxy_url and api_token:  # the hub's FHIR proxy mode: no EHR token in this kernel
        return ProxySessionProvider(proxy_url, api_token)
    missing = [
        name for name, value in ((TOKEN_API_ENV, url), (API_TOKEN_ENV, api_token)) if not value
    ]
    if missing:
        raise NotInSMARTHub(missing)
    return HubTokenProvider(url, api_token)


def default_event_sink(provider: TokenProvider, given: EventSink | None) -> EventSink | None:
    """``given``, else the hub's audit reporter when tokens come from a jupyterhub-smart hub.

    Outside a hub (a fixed token, a token function) there is no audit endpoint
    to report to, and nothing is reported unless the caller passes a sink.
    """
    if given is not None or not isinstance(provider, HubTokenProvider):
        return given
    from .reporting import hub_reporter

    return hub_reporter()


def connect(
    fhir_base_url: str | None = None,
    token: str | None = None,
    token_provider: TokenProvider | Callable[[], TokenLike] | None = None,
    *,
    patient: str | None = None,
    show_banner: bool | None = None,
    **options: Any,
) -> SMARTClient:
    """A :class:`SMARTClient` for this session.

    - ``connect()`` in a jupyterhub-smart single-user server;
    - ``connect(fhir_base_url=..., token=...)`` with a fixed access token
      (``patient=`` names the patient it is about, for ``observations()``
      and the banner);
    - ``connect(fhir_base_url=..., token_provider=fn)`` with a function
      returning a token (string or token-response dict).

    ``show_banner``: ``None`` shows the patient banner when the EHR asks for
    it and this is a notebook; ``True``/``False`` force it. Other keyword
    arguments go to :class:`SMARTClient` (``page_size``, ``retry``,
    ``timeout``, ``check_scopes``, ``event_sink``, ``progress``,
    ``max_response_bytes``, ``max_pages``). In a hub's
    server ``event_sink`` defaults to the hub's audit reporter.
    """
    provider = make_provider(fhir_base_url, token, token_provider, patient)
    if isinstance(provider, ProxySessionProvider):
        options.setdefault("allow_http", True)  # the admin's proxy address, like the hub API's
    if not isinstance(provider, StaticTokenProvider):
        info = provider.get()  # fail here, with what to do, rather than mid-analysis
        if fhir_base_url and info.fhir_base_url and info.fhir_base_url != fhir_base_url.rstrip("/"):
            raise TokenUnavailable(
                f"this session's FHIR server is {info.fhir_base_url}, not {fhir_base_url}; "
                "leave fhir_base_url out to use the session's"
            )
    options["event_sink"] = default_event_sink(provider, options.get("event_sink"))
    client = SMARTClient(provider, fhir_base_url=fhir_base_url, **options)
    wanted = show_banner
    if wanted is None:
        wanted = in_notebook() and client.context.need_patient_banner
    if wanted and client.context.patient:
        display_banner(client.patient_banner())
    return client


def connect_async(
    fhir_base_url: str | None = None,
    token: str | None = None,
    token_provider: TokenProvider | Callable[[], TokenLike] | None = None,
    **options: Any,
) -> AsyncSMARTClient:
    """An :class:`AsyncSMARTClient`; the first token is fetched on first use.

    In a hub's server ``event_sink`` defaults to the hub's audit reporter, as
    for :func:`connect`.
    """
    provider = make_provider(fhir_base_url, token, token_provider)
    if isinstance(provider, ProxySessionProvider):
        options.setdefault("allow_http", True)
    options["event_sink"] = default_event_sink(provider, options.get("event_sink"))
    return AsyncSMARTClient(provider, fhir_base_url=fhir_base_url, **options)
