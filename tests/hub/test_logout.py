"""Sign-out is a same-site POST with JupyterHub's _xsrf token; a GET ends nothing.

Another site can make a signed-in browser GET ``/hub/logout`` (a link, an
image, a redirect) or POST a form there, but it cannot read the hub's
``_xsrf`` token. Neither may end the user's session or their EHR grant; the
hub's own sign-out page (GET, then its form) ends both.
"""

from __future__ import annotations

import json
import re

import httpx
from hub_process import Browser, ehr_launch, patient_ids

from .conftest import SmartEnv

CROSS_SITE = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}


def _active_at_the_ehr(env: SmartEnv, refresh_token: str) -> bool:
    """The sandbox's own view of the refresh token (RFC 7662 introspection)."""
    answer = httpx.post(
        f"{env.public.origin}/auth/introspect",
        data={"token": refresh_token, "client_id": "hub-public"},
        timeout=30,
    )
    answer.raise_for_status()
    return bool(answer.json()["active"])


def _logouts(env: SmartEnv, name: str) -> list[str]:
    records = [json.loads(line) for line in env.hub.audit_path.read_text().splitlines() if line]
    return [
        json.dumps(r)
        for r in records
        if r.get("subtype", [{}])[0].get("code") == "logout" and name in json.dumps(r["agent"])
    ]


def test_cross_site_get_or_post_to_logout_ends_nothing(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    with Browser() as browser:
        assert ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[2]).status_code == 302
        with hub.api(hub.admin_token) as api:
            name = next(
                u["name"]
                for u in api.get("/users").json()
                if u["name"].endswith(f"-{sandbox.port}-fhir")
            )
        refresh_token = hub.auth_state(name)["refresh_token"]
        # the hub is shared with other tests, which may have signed this user out before
        earlier = len(_logouts(smart_env, name))
        # a link or image on another site: the sign-out page, nothing more
        page = browser.get(f"{hub.url}/hub/logout", headers=CROSS_SITE)
        assert page.status_code == 200
        assert re.search(r'<form method="post" action="/hub/logout"', page.text)
        assert 'name="_xsrf"' in page.text
        # a form on another site posts without the token (it cannot read it): 403
        forged = browser.client.post(f"{hub.url}/hub/logout", headers=CROSS_SITE, data={})
        assert forged.status_code == 403
        # even with a valid token, a POST the browser marks cross-site is refused
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        assert xsrf
        marked = browser.client.post(
            f"{hub.url}/hub/logout", headers=CROSS_SITE, data={"_xsrf": xsrf.group(1)}
        )
        assert marked.status_code == 403
        # still signed in, the EHR grant alive, nothing recorded as a logout
        assert browser.get(f"{hub.url}/hub/home").status_code == 200
        assert hub.auth_state(name)["refresh_token"] == refresh_token
        assert _active_at_the_ehr(smart_env, refresh_token)
        assert _logouts(smart_env, name)[earlier:] == []

        # the hub's own page: its form ends the session and the grant
        out = browser.logout(hub.url)
        assert out.status_code in (200, 302)
        assert browser.get(f"{hub.url}/hub/home").status_code == 302
    assert not _active_at_the_ehr(smart_env, refresh_token)
    assert "refresh_token" not in hub.auth_state(name)
    (logout,) = _logouts(smart_env, name)[earlier:]
    assert "EHR grant revoked" in logout


def test_logout_page_for_a_browser_not_signed_in_is_jupyterhubs(smart_env: SmartEnv) -> None:
    """Nobody to sign out: JupyterHub's answer (on to the login page), no form."""
    answer = httpx.get(f"{smart_env.hub.url}/hub/logout", timeout=30)
    assert answer.status_code == 302
    assert "/hub/login" in answer.headers["location"]
