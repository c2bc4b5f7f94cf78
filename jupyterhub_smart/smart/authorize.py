"""The front channel: building the authorization request, reading its response.

Both halves are small but easy to get subtly wrong, so they live here rather
than in each caller:

* :func:`authorization_url` always sends PKCE S256, ``aud`` (SMART requires
  the FHIR base URL), and ``launch`` for an EHR launch; it keeps any query
  the EHR's authorization endpoint already has.
* :func:`check_response_issuer` is the RFC 9207 mix-up check: when the
  server advertises ``authorization_response_iss_parameter_supported``, or the
  response carries ``iss`` anyway, it must equal the issuer pinned from
  discovery (which is the authorization server, not the FHIR base URL).
* :func:`authorization_error` turns an ``error`` redirect into words a
  clinician understands, without echoing attacker-controllable text verbatim.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .discovery import SMARTConfiguration
from .errors import SMARTError, safe_text

__all__ = [
    "AuthorizationResponseError",
    "authorization_error",
    "authorization_url",
    "check_response_issuer",
]


class AuthorizationResponseError(SMARTError):
    """The authorization response (the callback) is wrong or reports an error."""

    status = 400
    error = "invalid_authorization_response"


def authorization_url(
    config: SMARTConfiguration,
    *,
    client_id: str,
    redirect_uri: str,
    scope: str,
    state: str,
    code_challenge: str,
    nonce: str | None = None,
    launch: str | None = None,
    aud: str | None = None,
) -> str:
    """The URL to send the browser to; ``aud`` defaults to the FHIR base URL."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "aud": aud or config.fhir_base_url,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
    }
    if nonce:
        params["nonce"] = nonce
    if launch:
        params["launch"] = launch
    parts = urlsplit(config.authorization_endpoint)
    existing = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params
    ]
    query = urlencode([*existing, *params.items()])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def check_response_issuer(config: SMARTConfiguration, iss: str | None) -> None:
    """RFC 9207: refuse a callback whose ``iss`` is not this EHR's authorization server.

    Missing ``iss`` is refused only when the server advertised that it sends
    one (RFC 9207 2.4); without a discovered ``issuer`` there is nothing to
    compare with, and the id_token's ``iss`` check does the job.
    """
    if iss is None or iss == "":
        if config.authorization_response_iss_parameter_supported:
            raise AuthorizationResponseError(
                "The EHR's response has no 'iss' although its configuration promises one; "
                "launch the app again."
            )
        return
    if config.issuer is not None and iss != config.issuer:
        raise AuthorizationResponseError(
            f"The authorization response came from {safe_text(iss)!r}, not from this EHR's "
            f"authorization server {config.issuer!r} (possible mix-up attack); launch the app again."
        )


_ERROR_WORDS = {
    "access_denied": "You declined access in the EHR, so the hub cannot sign you in.",
    "invalid_scope": "The EHR refused the access this hub asks for (invalid_scope); "
    "ask the hub's administrators to check the configured scopes.",
    "unauthorized_client": "The EHR does not allow this hub to sign users in this way "
    "(unauthorized_client); ask the hub's administrators to check the registration.",
    "invalid_request": "The EHR refused the sign-in request as malformed (invalid_request); "
    "launch the app again, and tell the hub's administrators if it keeps happening.",
    "unsupported_response_type": "The EHR does not support this hub's sign-in flow "
    "(unsupported_response_type).",
    "server_error": "The EHR had an internal error; try again in a moment.",
    "temporarily_unavailable": "The EHR is temporarily unavailable; try again in a moment.",
    "login_required": "You need to be signed in to the EHR first.",
    "consent_required": "The EHR needs your consent before the hub can sign you in.",
    "interaction_required": "The EHR needs you to interact with it before the hub can sign you in.",
}


def authorization_error(error: str, description: str | None = None) -> AuthorizationResponseError:
    """An error for an ``error=...`` callback, worded for the person in front of the screen.

    ``access_denied`` becomes 403 (a refusal, not bad input); EHR outages 502.
    The EHR's ``error_description`` is appended cut and sanitised: it is
    attacker-controllable text (anyone can craft a callback URL).
    """
    code = safe_text(error, 64)
    message = _ERROR_WORDS.get(error, f"The EHR reported an error ({code}); launch the app again.")
    if description:
        message += f" The EHR said: {safe_text(description, 200)}"
    status = (
        403
        if error == "access_denied"
        else 502
        if error in ("server_error", "temporarily_unavailable")
        else 400
    )
    return AuthorizationResponseError(
        message, status=status, error=code if error in _ERROR_WORDS else "authorization_error"
    )
