"""The authenticator's audit destination settings: documented, checked, wired to the log."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyterhub.crypto import CryptKeeper
from traitlets import TraitError

from jupyterhub_smart.audit import SyslogSink, hub_event
from jupyterhub_smart.audit.alerts import AlertSink
from jupyterhub_smart.audit.retention import Retention
from jupyterhub_smart.cli import main
from jupyterhub_smart.hub import SMARTAuthenticator
from jupyterhub_smart.hub.audit_settings import AuditSettings
from jupyterhub_smart.smart.keys import write_key_pair

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
        # alerts and retention are always there too
        [sink] = [s for s in log.sinks if isinstance(s, SyslogSink)]
        assert [type(s) for s in log.sinks if not isinstance(s, SyslogSink)] == [
            AlertSink,
            Retention,
        ]
        assert (sink.transport, sink.port, sink.facility) == ("tcp", 9, 13)
        assert sink.spool == tmp_path / "sink-0"
    finally:
        log.close()


def test_checkpoint_and_retention_settings_sign_the_hub_log(
    crypt_key: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_path, jwks = write_key_pair("ES384", tmp_path / "keys")
    auth = SMARTAuthenticator(
        issuers={EHR: {"client_id": "hub"}},
        audit_log_path=str(tmp_path / "audit.jsonl"),
        audit_checkpoint_key_path=str(key_path),
        audit_checkpoint_interval=0.2,
    )
    log = auth.get_audit_log()
    try:
        log.record_sync(hub_event("logout", username="alice"))
        checkpoints = tmp_path / "audit.jsonl.checkpoints"
        deadline = time.monotonic() + 30  # against a hang, not a timing assertion
        while not (checkpoints.exists() and checkpoints.read_text()):
            assert time.monotonic() < deadline, "no signed checkpoint was written"
            time.sleep(0.05)
    finally:
        log.close()
    args = ["audit", "verify", str(tmp_path / "audit.jsonl")]
    assert main([*args, "--checkpoints", str(checkpoints), "--jwks", str(jwks)]) == 0
    assert "signed checkpoint(s) match the log" in capsys.readouterr().out


def test_without_a_key_there_are_no_checkpoints(crypt_key: None, tmp_path: Path) -> None:
    auth = SMARTAuthenticator(
        issuers={EHR: {"client_id": "hub"}}, audit_log_path=str(tmp_path / "audit.jsonl")
    )
    keepers = auth.audit_keepers(tmp_path / "audit.jsonl", [])
    assert keepers.checkpointer is None and keepers.retention is not None
    with pytest.raises(TraitError):
        SMARTAuthenticator(issuers={EHR: {"client_id": "hub"}}, audit_retention_days=-1)
