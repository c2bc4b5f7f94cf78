"""Token endpoint: code exchange, refresh, revocation, and a validated token response.

What comes back from a token endpoint is checked before anyone uses it: a JSON
object with a non-empty ``access_token`` and a ``Bearer`` ``token_type``;
``expires_in`` turned into an absolute ``expires_at`` (OAuthenticator keeps only
``expires_in``, which means nothing once stored); ``scope`` split into a tuple.

Failures become :class:`TokenEndpointError` with a status the hub can answer:

* an OAuth error response keeps its ``error`` code in ``oauth_error``;
  ``invalid_grant`` (code used, expired, PKCE mismatch, refresh token revoked)
  is 400 (the user should sign in again), every other OAuth error is 502 (this
  hub and the EHR disagree about the registration);
* 5xx, HTML, non-JSON, a JSON object without ``access_token``: 502;
* no answer in time: 504.

No message ever includes the response body (it may hold tokens); the one piece
of a body we show, ``error_description``, is cut, stripped of control
characters and has every credential we sent redacted from it.

Missing ``scope`` in a response: RFC 6749 5.1 says it then equals the request,
SMART says servers must send it. We take the caller's word: pass
``requested_scope`` and a missing ``scope`` means that; leave it out and a
missing ``scope`` means "nothing granted" (the safe reading, which makes a
required-scope check fail loudly instead of assuming a grant).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._http import BodyTooLarge, Fetched, FetchTimeout, fetch, transport_failure
from .client_auth import ClientAuthentication
from .discovery import SMARTConfiguration
from .errors import TokenEndpointError, redact, safe_text

__all__ = [
    "TokenResponse",
    "exchange_code",
    "parse_token_response",
    "refresh_access_token",
    "revoke_token",
]

#: RFC 6749 5.2: error codes are limited to these characters.
_OAUTH_ERROR_CODE = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}$")
_MAX_TOKEN_RESPONSE_BYTES = 1 << 20


@dataclass(frozen=True)
class TokenResponse:
    """A validated token endpoint answer. Its ``repr`` shows no token."""

    access_token: str = field(repr=False)
    token_type: str
    #: Unix time at which the access token expires; ``None`` if the server did not say.
    expires_at: float | None
    refresh_token: str | None = field(repr=False)
    #: Granted scopes (see the module docstring for a missing ``scope``).
    scope: tuple[str, ...]
    id_token: str | None = field(repr=False)
    #: The whole response, tokens included; the hub filters what it keeps.
    raw: Mapping[str, Any] = field(repr=False)

    def expires_within(self, seconds: float, *, now: float | None = None) -> bool:
        """True when the access token expires within ``seconds`` (never, if unknown)."""
        if self.expires_at is None:
            return False
        return self.expires_at - (time.time() if now is None else now) <= seconds


def _scope_tuple(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split() if isinstance(value, str) else [s for v in value for s in v.split()]
    return tuple(dict.fromkeys(items))


def parse_token_response(
    data: object,
    *,
    requested_scope: str | Iterable[str] | None = None,
    now: float | None = None,
) -> TokenResponse:
    """Validate a successful token response body (already parsed JSON)."""
    if not isinstance(data, dict):
        raise TokenEndpointError("The token endpoint answered JSON that is not an object.")
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise TokenEndpointError("The token endpoint's response has no access_token.")
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or not token_type:
        raise TokenEndpointError("The token endpoint's response has no token_type.")
    if token_type.lower() != "bearer":
        raise TokenEndpointError(
            f"The token endpoint issued a {safe_text(token_type, 20)!r} token; only Bearer is supported."
        )
    expires_in = data.get("expires_in")
    expires_at: float | None = None
    if expires_in is not None:
        if isinstance(expires_in, str) and expires_in.strip().isdigit():
            expires_in = int(expires_in)
        if (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, (int, float))
            or expires_in < 0
        ):
            raise TokenEndpointError("The token endpoint's expires_in is not a number of seconds.")
        expires_at = (time.time() if now is None else now) + float(expires_in)
    refresh_token = data.get("refresh_token")
    if refresh_token is not None and (not isinstance(refresh_token, str) or not refresh_token):
        raise TokenEndpointError("The token endpoint's refresh_token is not a string.")
    id_token = data.get("id_token")
    if id_token is not None and (not isinstance(id_token, str) or not id_token):
        raise TokenEndpointError("The token endpoint's id_token is not a string.")
    raw_scope = data.get("scope")
    scope: tuple[str, ...]
    if raw_scope is None:
        scope = _scope_tuple(requested_scope) or ()
    elif isinstance(raw_scope, str):
        scope = _scope_tuple(raw_scope) or ()
    else:
        raise TokenEndpointError("The token endpoint's scope is not a space-separated string.")
    return TokenResponse(
        access_token=access_token,
        token_type="Bearer",  # noqa: S106 - a token type, not a secret
        expires_at=expires_at,
        refresh_token=refresh_token,
        scope=scope,
        id_token=id_token,
        raw=data,
    )


def _oauth_error(
    response: Fetched, what: str, sent: Iterable[str | None]
) -> TokenEndpointError | None:
    """An OAuth error response (RFC 6749 5.2) as an error, or None if it is not one."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return None
    code = body["error"]
    if not _OAUTH_ERROR_CODE.match(code):
        code = "invalid_error_code"
    message = f"The {what} refused the request: {code}"
    description = body.get("error_description")
    if isinstance(description, str) and description:
        message += f" ({safe_text(redact(description, sent), 200)})"
    status = 400 if code == "invalid_grant" else 502
    return TokenEndpointError(message + ".", oauth_error=code, status=status)


async def _post(
    http: httpx.AsyncClient,
    url: str,
    form: dict[str, str],
    client: ClientAuthentication,
    *,
    what: str,
    timeout: float,
    audience: str | None = None,
) -> Fetched:
    """POST a form with client authentication; map transport failures; return the response.

    ``audience``: the ``aud`` of a client assertion when it is not ``url`` itself.
    """
    headers = {"Accept": "application/json"}
    client.apply(audience or url, form, headers)
    sent: list[str | None] = [*form.values(), headers.get("Authorization")]
    sent.extend(client.sensitive_values())
    try:
        response = await fetch(
            http,
            "POST",
            url,
            headers=headers,
            data=form,
            timeout=timeout,
            max_bytes=_MAX_TOKEN_RESPONSE_BYTES,
        )
    except FetchTimeout:
        raise TokenEndpointError(
            f"The {what} ({url}) did not answer within {timeout:g} s.", status=504
        ) from None
    except BodyTooLarge:
        raise TokenEndpointError(f"The {what} ({url}) answered with an oversized body.") from None
    except httpx.HTTPError as exc:
        raise TokenEndpointError(
            f"The {what} ({url}) could not be reached ({transport_failure(exc)})."
        ) from None
    if response.status >= 300:
        error = _oauth_error(response, what, sent) if 400 <= response.status < 500 else None
        if error is not None:
            raise error
        raise TokenEndpointError(f"The {what} ({url}) answered HTTP {response.status}.")
    return response


def _json_object(response: Fetched, what: str) -> object:
    try:
        return response.json()
    except ValueError:
        raise TokenEndpointError(
            f"The {what} answered {response.media_type} instead of JSON."
        ) from None


async def exchange_code(
    http: httpx.AsyncClient,
    config: SMARTConfiguration,
    client: ClientAuthentication,
    *,
    code: str,
    redirect_uri: str,
    code_verifier: str,
    requested_scope: str | Iterable[str] | None = None,
    timeout: float = 10.0,
) -> TokenResponse:
    """Exchange an authorization code (with its PKCE verifier) for tokens."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    response = await _post(
        http, config.token_endpoint, form, client, what="token endpoint", timeout=timeout
    )
    return parse_token_response(
        _json_object(response, "token endpoint"), requested_scope=requested_scope
    )


async def refresh_access_token(
    http: httpx.AsyncClient,
    config: SMARTConfiguration,
    client: ClientAuthentication,
    refresh_token: str,
    *,
    scope: str | Iterable[str] | None = None,
    requested_scope: str | Iterable[str] | None = None,
    timeout: float = 10.0,
) -> TokenResponse:
    """Use a refresh token; ``scope`` narrows the request (RFC 6749 6).

    A response without ``refresh_token`` means the old one stays valid (no
    rotation): the caller must keep it. A missing ``scope`` means ``scope`` if
    given, else ``requested_scope`` (pass the previously granted scope).
    """
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    narrowed = _scope_tuple(scope)
    if narrowed:
        form["scope"] = " ".join(narrowed)
    response = await _post(
        http, config.token_endpoint, form, client, what="token endpoint", timeout=timeout
    )
    return parse_token_response(
        _json_object(response, "token endpoint"),
        requested_scope=narrowed if narrowed else requested_scope,
    )


async def revoke_token(
    http: httpx.AsyncClient,
    config: SMARTConfiguration,
    client: ClientAuthentication,
    token: str,
    token_type_hint: str = "refresh_token",  # noqa: S107 - a hint name, not a secret
    *,
    timeout: float = 10.0,
) -> bool:
    """Revoke a token (RFC 7009). False when the server has no revocation endpoint.

    RFC 7009 answers 200 even for a token it does not know, so True means "the
    server no longer honours it", not "it was valid".
    """
    if not config.revocation_endpoint:
        return False
    form = {"token": token}
    if token_type_hint:
        form["token_type_hint"] = token_type_hint
    await _post(
        http,
        config.revocation_endpoint,
        form,
        client,
        what="revocation endpoint",
        timeout=timeout,
        # SMART's asymmetric profile: a client assertion is addressed to the token
        # endpoint, wherever it is presented (the revocation endpoint included).
        audience=config.token_endpoint,
    )
    return True
