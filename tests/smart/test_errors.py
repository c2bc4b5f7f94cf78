"""SMARTError: safe messages, statuses and codes the hub can rely on."""

from __future__ import annotations

import pytest

from jupyterhub_smart.smart.errors import (
    DiscoveryError,
    IDTokenError,
    LaunchContextError,
    ScopeError,
    SMARTError,
    TokenEndpointError,
    UnknownIssuer,
    redact,
    safe_text,
)


@pytest.mark.parametrize(
    ("cls", "status", "code"),
    [
        (UnknownIssuer, 400, "unknown_issuer"),
        (DiscoveryError, 502, "discovery_failed"),
        (TokenEndpointError, 502, "token_request_failed"),
        (IDTokenError, 403, "invalid_id_token"),
        (ScopeError, 403, "insufficient_scope"),
        (LaunchContextError, 502, "invalid_launch_context"),
    ],
)
def test_defaults(cls: type[SMARTError], status: int, code: str) -> None:
    err = cls("something went wrong")
    assert isinstance(err, SMARTError)
    assert err.status == status
    assert err.error == code
    assert str(err) == "something went wrong"


def test_status_override_and_extras() -> None:
    err = TokenEndpointError("timed out", status=504, oauth_error=None)
    assert err.status == 504 and err.oauth_error is None
    assert (
        TokenEndpointError("x", oauth_error="invalid_grant", status=400).oauth_error
        == "invalid_grant"
    )
    assert ScopeError("missing", missing=["patient/*.rs"]).missing == ["patient/*.rs"]
    assert "status=504" in repr(err)


def test_safe_text_strips_control_characters_and_truncates() -> None:
    assert safe_text("a\r\nb\x1b[31m") == "a??b?[31m"
    assert safe_text("é") == "?"
    long = safe_text("x" * 500, limit=20)
    assert len(long) == 20 and long.endswith("...")


def test_redact_replaces_every_secret() -> None:
    text = "code abc123code was already used by refresh-xyz"
    assert redact(text, ["abc123code", "refresh-xyz", None, "ab"]) == (
        "code [redacted] was already used by [redacted]"
    )
