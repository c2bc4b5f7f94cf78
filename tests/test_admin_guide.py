"""The admin guide's configuration examples work with the hub's own issuer rules.

A wrong issuer in the guide means a hub that answers every EHR launch with
"unknown issuer": the examples are checked here against :class:`IssuerPolicy`
with the ``iss`` the EHR really sends.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from jupyterhub_smart.smart.issuers import IssuerPolicy

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "admin-guide.md"


def _section(title: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"### {title}")
    following = re.search(r"^#{2,3} ", text[start + 4 :], flags=re.M)
    return text[start : start + 4 + following.start() if following else None]


def _issuers(section: str) -> IssuerPolicy:
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    c = SimpleNamespace(SMARTAuthenticator=SimpleNamespace())
    exec(code, {"c": c})  # noqa: S102 - the guide's own example
    return IssuerPolicy(c.SMARTAuthenticator.issuers)


def test_smart_launcher_example_accepts_the_iss_of_its_ehr_launch() -> None:
    """smart-launcher-v2 sends ``iss=<origin>/v/<fhir version>/fhir`` on an EHR launch
    (the settings travel in ``launch``); ``/v/r4/sim/<settings>/fhir`` is the
    standalone launch's base."""
    policy = _issuers(_section("The public SMART launcher"))
    origin = "https://launch.smarthealthit.org"
    assert policy.get(f"{origin}/v/r4/fhir").client_id == "jupyterhub"
    assert any("/v/r4/sim/" in issuer for issuer in policy.issuers)


@pytest.mark.parametrize(
    ("title", "needed"),
    [
        (
            "The EHR shows an error on its own page",
            ["client_id", "redirect_uri", "oauth_callback_url"],
        ),
        ("The EHR cannot fetch the hub's JWK Set", ["keys generate", "jwks.json", "loopback"]),
    ],
)
def test_troubleshooting_covers_failures_the_hub_never_sees(title: str, needed: list[str]) -> None:
    section = _section(title)
    for word in needed:
        assert word in section, (title, word)
