"""The hub's access log never shows an EHR launch handle or an OpenID nonce."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from hub_process import Browser, ehr_launch, patient_ids
from jupyterhub.log import _scrub_uri

from jupyterhub_smart.hub.access_log import scrub_secret_params

from .conftest import SmartEnv


def test_scrubbing_hides_nonce_and_launch_values_only() -> None:
    scrub_secret_params()
    url = "https://ehr.example/authorize?response_type=code&nonce=n0nce&launch=L4unch&aud=x"
    assert _scrub_uri(url) == (
        "https://ehr.example/authorize?response_type=code&nonce=[secret]&launch=[secret]&aud=x"
    )
    assert _scrub_uri("/hub/oauth_login?iss=https%3A%2F%2Fehr") == (
        "/hub/oauth_login?iss=https%3A%2F%2Fehr"
    )


def test_ehr_launch_leaves_no_nonce_or_launch_in_the_hub_log(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    with Browser() as browser:
        answer = ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[0])
        assert answer.status_code == 302
        authorize = next(u for u in browser.visited if "/authorize?" in u)
    params = parse_qs(urlsplit(authorize).query)
    secrets = [params["nonce"][0], params["launch"][0]]
    log = hub.log_text()
    assert "oauth_login" in log and "nonce=[secret]" in log  # JupyterHub's line is there
    for value in secrets:
        assert value not in log
