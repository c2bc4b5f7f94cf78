"""The authenticator's audit destination settings: documented, checked, wired to the log."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyterhub.crypto import CryptKeeper
from traitlets import TraitError

from jupyterhub_smart.audit import SyslogSink
from jupyterhub_smart.audit.alerts import AlertSink
from jupyterhub_smart.hub import SMARTAuthenticator
from jupyterhub_smart.hub.audit_settings import AuditSettings

EHR = "https://ehr.example/fhir"


@pytest.fixture
def crypt_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", secrets.token_hex(32))
    CryptKeeper.clear_instance()
    yield
    CryptKeeper.clear_instance()


def test_every_audit_setting_has_help() -> None:
    own = AuditSettings.class_traits(config=True)
    assert "audit_syslog_url" in own
    assert all(trait.help and len(trait.help) > 20 for trait in own.values())
    assert set(own) <= set(SMARTAuthenticator.class_traits(config=True))


@pytest.mark.parametrize("url", ["http://siem:514", "syslog.example:6514", "ftp://x"])
def test_a_syslog_url_without_a_known_transport_is_refused(crypt_key: None, url: str) -> None:
    with pytest.raises(TraitError, match="tls://HOST:PORT"):
        SMARTAuthenticator(issuers={EHR: {"client_id": "hub"}}, audit_syslog_url=url)


def test_syslog_settings_attach_a_syslog_sink_to_the_hub_log(
    crypt_key: None, tmp_path: Path
) -> None:
    auth = SMARTAuthenticator(
        issuers={EHR: {"client_id": "hub"}},
        audit_log_path=str(tmp_path / "audit.jsonl"),
        audit_syslog_url="tcp://127.0.0.1:9",
        audit_syslog_facility=13,
    )
    assert auth.audit_syslog_sinks() == [
        {"type": "syslog", "url": "tcp://127.0.0.1:9", "facility": 13}
    ]
    log = auth.get_audit_log()
    try:
        [sink] = [s for s in log.sinks if not isinstance(s, AlertSink)]  # alerts: always there
        assert isinstance(sink, SyslogSink)
        assert (sink.transport, sink.port, sink.facility) == ("tcp", 9, 13)
        assert sink.spool == tmp_path / "sink-0"
    finally:
        log.close()
