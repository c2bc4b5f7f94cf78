"""connect(): the environment of a SMART hub's single-user server, and everywhere else."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sandbox_process import SandboxProcess

from jupyterhub_smart.notebook import (
    HubTokenProvider,
    NotInSMARTHub,
    ReauthenticationRequired,
    SMARTClient,
    TokenUnavailable,
    connect,
    connect_async,
)
from jupyterhub_smart.notebook.reporting import HubAuditReporter

from .fakes import FHIR_BASE, HUB_API, FakeTokenAPI, json_response, secret
from .sandbox_tokens import patient_login

PATIENT = "patient-00001"


class TokenAPIServer:
    """A stand-in for the hub's token API over real HTTP (the hub is built elsewhere).

    It follows the contract: ``Authorization: token <api token>`` -> the
    current SMART token set, or the error answers.
    """

    def __init__(self, api_token: str, answer: dict[str, Any], status: int = 200) -> None:
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.calls += 1
                ok = self.headers.get("Authorization") == f"token {api_token}"
                code, body = (status, answer) if ok else (401, {"message": "Forbidden"})
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hub/api/smart/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def token_api(sandbox: SandboxProcess) -> Iterator[tuple[TokenAPIServer, str]]:
    tokens = patient_login(sandbox, patient=PATIENT)
    api_token = secret("jupyterhub-api")
    answer = {
        "access_token": tokens["access_token"],
        "token_type": "Bearer",
        "expires_at": 4_000_000_000,
        "scope": tokens["scope"].split(),
        "fhir_base_url": sandbox.iss,
        "patient": tokens.get("patient"),
        "encounter": None,
        "fhirUser": "Practitioner/practitioner-1",
        "need_patient_banner": True,
        "smart_style_url": None,
    }
    server = TokenAPIServer(api_token, answer)
    yield server, api_token
    server.close()


def test_connect_in_a_smart_hub_server(
    token_api: tuple[TokenAPIServer, str], monkeypatch: pytest.MonkeyPatch, sandbox: SandboxProcess
) -> None:
    server, api_token = token_api
    monkeypatch.setenv("SMART_TOKEN_API_URL", server.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", api_token)
    with connect() as fhir:
        assert fhir.context.patient == PATIENT
        assert fhir.context.fhir_user == "Practitioner/practitioner-1"
        hr = fhir.observations(code="8867-4").to_pandas()
        assert len(hr) > 0 and set(hr["code"]) == {"8867-4"}
    assert server.calls == 1  # one token, cached for the whole session


def test_connect_shows_the_banner_when_asked(
    token_api: tuple[TokenAPIServer, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, api_token = token_api
    monkeypatch.setenv("SMART_TOKEN_API_URL", server.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", api_token)
    with connect(show_banner=True) as fhir:
        name = fhir.patient["name"][0]["family"]
    assert name in capsys.readouterr().out
    with connect():  # not a notebook: need_patient_banner alone does not print
        pass
    assert capsys.readouterr().out == ""


def test_connect_with_a_mismatching_base_is_refused(
    token_api: tuple[TokenAPIServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, api_token = token_api
    monkeypatch.setenv("SMART_TOKEN_API_URL", server.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", api_token)
    with pytest.raises(TokenUnavailable, match="this session's FHIR server is"):
        connect(fhir_base_url="http://elsewhere.test/fhir")


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, ["SMART_TOKEN_API_URL", "JUPYTERHUB_API_TOKEN"]),
        ({"JUPYTERHUB_API_TOKEN": "x"}, ["SMART_TOKEN_API_URL"]),
        ({"SMART_TOKEN_API_URL": "http://hub/hub/api/smart/token"}, ["JUPYTERHUB_API_TOKEN"]),
    ],
)
def test_outside_a_smart_hub(
    env: dict[str, str], missing: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SMART_TOKEN_API_URL", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(NotInSMARTHub) as info:
        connect()
    assert info.value.missing == missing
    message = str(info.value)
    assert all(name in message for name in missing)
    assert "connect(fhir_base_url=" in message and "token_provider" in message


def test_connect_reports_reauthentication_on_the_connect_line() -> None:
    api = FakeTokenAPI(secret("api"))
    api.answer = lambda r: json_response(
        401, {"error": "reauthentication_required", "login_url": "http://hub.test/hub/login"}
    )
    provider = HubTokenProvider(HUB_API, api.api_token, transport=api.transport())
    with pytest.raises(ReauthenticationRequired, match=r"open http://hub\.test/hub/login"):
        connect(token_provider=provider)


def test_argument_errors() -> None:
    with pytest.raises(TypeError, match="either token= or token_provider="):
        connect(FHIR_BASE, token="a", token_provider=lambda: "b")
    with pytest.raises(TypeError, match="needs fhir_base_url"):
        connect(token=secret("t"))
    fhir = connect(FHIR_BASE, token=secret("t"))
    assert isinstance(fhir, SMARTClient)
    for bad in ("", "observation", "Patient/1", "../x"):
        with pytest.raises(ValueError, match="not a FHIR resource type"):
            fhir.read(bad, "1")
    for bad_id in ("", "../admin", "a/b", "x" * 65, "a b"):
        with pytest.raises(ValueError, match="not a FHIR id"):
            fhir.read("Patient", bad_id)
    with pytest.raises(ValueError, match="not a search parameter name"):
        fhir.search("Patient", params={"a&b": "1"})
    with pytest.raises(ValueError, match="empty value"):
        fhir.search("Patient", name="")
    with pytest.raises(TypeError, match="search values must be"):
        fhir.search("Patient", name=object())
    with pytest.raises(ValueError, match="page_size"):
        connect(FHIR_BASE, token=secret("t"), page_size=0)


def test_in_a_hub_without_its_api_url_nothing_is_reported_and_it_says_so(
    token_api: tuple[TokenAPIServer, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, api_token = token_api
    monkeypatch.setenv("SMART_TOKEN_API_URL", server.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", api_token)
    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    with caplog.at_level(logging.WARNING), connect() as fhir:
        assert fhir.event_sink is None
    assert "JUPYTERHUB_API_URL is not set" in caplog.text
    assert "not reported to the hub's audit trail" in caplog.text


def test_the_hub_reporter_is_the_default_sink_and_an_explicit_sink_replaces_it(
    token_api: tuple[TokenAPIServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, api_token = token_api
    monkeypatch.setenv("SMART_TOKEN_API_URL", server.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", api_token)
    monkeypatch.setenv("JUPYTERHUB_API_URL", server.url.removesuffix("/smart/token"))
    with connect() as fhir:
        reporter = fhir.event_sink
        assert isinstance(reporter, HubAuditReporter)
        assert reporter.url == server.url.replace("/smart/token", "/smart/audit")
        assert api_token not in repr(reporter)
    with connect() as again:  # one reporter per kernel, not one thread per connect()
        assert again.event_sink is reporter
    mine: list[Any] = []
    with connect(event_sink=mine.append) as fhir:
        assert fhir.event_sink == mine.append
        fhir.read("Patient", PATIENT)
    assert [e.action for e in mine] == ["read"]

    async def async_sinks() -> None:
        client = connect_async()
        assert client.event_sink is reporter
        await client.aclose()
        client = connect_async(event_sink=mine.append)
        assert client.event_sink == mine.append
        await client.aclose()

    asyncio.run(async_sinks())


def test_no_hub_reporter_outside_a_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:9/hub/api")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", secret("api"))
    with connect(FHIR_BASE, token=secret("t")) as fhir:  # a fixed token: no hub to report to
        assert fhir.event_sink is None
