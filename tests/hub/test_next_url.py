"""The ``next`` URL after login: only on-site paths are kept."""

from __future__ import annotations

import pytest

from jupyterhub_smart.hub.pages import safe_next_url


@pytest.mark.parametrize(
    "value",
    [
        "//evil",
        "\\\\evil",
        "/\\evil",
        "/%2F%2Fevil",
        "https://evil/x",
        "/%5C%5Cevil",
        "javascript:x",
        "/a\nb",
        "evil",
    ],
)
def test_off_site_next_is_refused(value: str) -> None:
    assert safe_next_url(value) == ""


@pytest.mark.parametrize("value", ["/hub/home", "/user/x/lab?reset", "/hub/token#t"])
def test_on_site_next_is_kept(value: str) -> None:
    assert safe_next_url(value) == value
