"""PKCE S256, state and nonce."""

from __future__ import annotations

import pytest

from jupyterhub_smart.smart.pkce import code_challenge_s256, new_code_verifier, new_nonce, new_state


def test_rfc7636_appendix_b_vector() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge_s256(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifier_shape_and_uniqueness() -> None:
    verifiers = {new_code_verifier() for _ in range(100)}
    assert len(verifiers) == 100
    for v in verifiers:
        assert 43 <= len(v) <= 128
        code_challenge_s256(v)  # accepted


@pytest.mark.parametrize("bad", ["short", "x" * 129, "a" * 42 + "!", "é" * 50])
def test_bad_verifier_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="43-128"):
        code_challenge_s256(bad)


def test_state_and_nonce_have_at_least_128_bits() -> None:
    states = {new_state() for _ in range(100)}
    nonces = {new_nonce() for _ in range(100)}
    assert len(states) == 100 and len(nonces) == 100
    # token_urlsafe(32) = 32 random bytes = 256 bits -> 43 base64url characters
    assert all(len(s) >= 43 for s in states | nonces)
