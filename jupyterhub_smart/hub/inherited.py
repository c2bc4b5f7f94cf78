"""OAuthenticator options that SMARTAuthenticator inherits but does not use.

``SMARTAuthenticator`` subclasses ``OAuthenticator``, so every OAuthenticator
option exists on it. Most keep working (``allowed_users``, ``allow_all``,
``admin_users``, ``allowed_scopes``, ``manage_groups``, ``logout_redirect_url``,
``oauth_callback_url``, ``custom_403_message``, ``modify_auth_state_hook``,
``refresh_user_hook``...). The ones below describe a single OAuth provider
with fixed endpoints and one client, which SMART replaces with per-issuer
registrations and discovery. An admin who follows an OAuthenticator guide and
sets one would otherwise get silence; the hub refuses to start instead, with
a message naming the option and what to use.

The check reuses OAuthenticator's mechanism for deprecated options (an
observer registered before the configuration is loaded, so it sees every value
set from a config file or a keyword argument), and also looks at the
environment variables OAuthenticator reads these options' defaults from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["REFUSED", "Refusal", "markdown_table", "refusal_lines"]

_PER_ISSUER = 'SMARTAuthenticator.issuers["<FHIR base URL>"]'
_DISCOVERED = (
    "nothing: the hub reads each EHR's endpoints from its "
    "<FHIR base URL>/.well-known/smart-configuration"
)
_IDENTITY = (
    "nothing: the user is the verified id_token's fhirUser (or sub); "
    "SMARTAuthenticator.username_mapper maps it to a username"
)


def _always(value: Any) -> bool:
    return True


def _false(value: Any) -> bool:
    return value is False


def _true(value: Any) -> bool:
    return value is True


@dataclass(frozen=True)
class Refusal:
    """Why an inherited option is refused and what replaces it.

    ``refused(value)`` says which values stop the hub: ``enable_pkce = True``
    describes what the hub does anyway, only ``False`` is refused.
    """

    instead: str
    refused: Callable[[Any], bool] = _always
    env: str | None = None  # the environment variable OAuthenticator reads the default from
    what: str = "any value"


REFUSED: Mapping[str, Refusal] = {
    "client_id": Refusal(f'{_PER_ISSUER}["client_id"]', env="OAUTH_CLIENT_ID"),
    "client_secret": Refusal(
        f'{_PER_ISSUER}["client_secret"] with "client_auth": "client_secret_basic"',
        env="OAUTH_CLIENT_SECRET",
    ),
    "basic_auth": Refusal(
        f'{_PER_ISSUER}["client_auth"] ("public", "client_secret_basic" or "private_key_jwt")',
        env="OAUTH2_BASIC_AUTH",
    ),
    "authorize_url": Refusal(_DISCOVERED, env="OAUTH2_AUTHORIZE_URL"),
    "token_url": Refusal(_DISCOVERED, env="OAUTH2_TOKEN_URL"),
    "userdata_url": Refusal(_IDENTITY, env="OAUTH2_USERDATA_URL"),
    "userdata_from_id_token": Refusal(_IDENTITY),
    "userdata_params": Refusal(_IDENTITY),
    "userdata_token_method": Refusal(_IDENTITY, env="OAUTH2_USERDATA_REQUEST_TYPE"),
    "username_claim": Refusal("SMARTAuthenticator.username_mapper", env="OAUTH2_USERNAME_KEY"),
    "token_params": Refusal(
        "nothing: the hub sends the token requests SMART App Launch defines, nothing more"
    ),
    "extra_authorize_params": Refusal(
        "nothing: the hub sends the authorization parameters SMART App Launch defines "
        f'(scopes: SMARTAuthenticator.scope or {_PER_ISSUER}["scope"])'
    ),
    "http_request_kwargs": Refusal(
        "SMARTAuthenticator.http_timeout (requests to EHRs use the hub's own HTTP client; "
        "SSL_CERT_FILE in the hub's environment adds a private CA)"
    ),
    "enable_pkce": Refusal(
        "nothing: SMART App Launch requires PKCE (S256) and the hub always uses it",
        refused=_false,
        what="False",
    ),
    "validate_server_cert": Refusal(
        "nothing: the hub always verifies EHR certificates (SSL_CERT_FILE in the hub's "
        "environment adds a private CA)",
        refused=_false,
        what="False",
    ),
    "request_otp": Refusal(
        "nothing: the EHR signs the user in, the hub shows no password form",
        refused=_true,
        what="True",
    ),
}


def refusal_lines(
    observed: Iterable[str],
    current: Callable[[str], Any],
    environ: Mapping[str, str] = os.environ,
) -> list[str]:
    """The start-up error's lines, one per refused setting (empty: nothing refused).

    ``observed``: options set from the configuration with a refused value (seen
    by an observer); ``current(name)``: an option's value now, which catches a
    refused value that equals the trait's static default and so fired no
    observer (``validate_server_cert`` computes its default from
    ``OAUTH_TLS_VERIFY``).
    """
    names = list(dict.fromkeys(observed))
    names += [
        name
        for name, refusal in REFUSED.items()
        if refusal.refused is not _always and name not in names and refusal.refused(current(name))
    ]
    lines = [
        f"SMARTAuthenticator.{name} is an inherited option SMARTAuthenticator does not use; "
        f"use {REFUSED[name].instead} instead."
        for name in names
    ]
    return lines + [
        f"The environment variable {refusal.env} sets OAuthenticator's {name}, which "
        f"SMARTAuthenticator does not use; unset it and use {refusal.instead} instead."
        for name, refusal in REFUSED.items()
        if refusal.env and environ.get(refusal.env, "").lower() not in ("", "0", "false")
    ]


def markdown_table() -> str:
    """The refused options as a Markdown table (for the configuration reference)."""
    rows = [
        f"| `{name}` | {refusal.what} | {refusal.instead.replace('<', '&lt;')} |"
        for name, refusal in REFUSED.items()
    ]
    return "\n".join(
        ["| Inherited option | Refused when set to | Use instead |", "| --- | --- | --- |", *rows]
    )
