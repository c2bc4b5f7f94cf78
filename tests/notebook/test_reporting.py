"""The kernel-side reporter's reaction to a hub that is busy or broken (faults: MockTransport)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
import orjson
import pytest

from jupyterhub_smart.audit import data_access_event
from jupyterhub_smart.notebook.reporting import HubAuditReporter, to_report


@dataclass
class Event:
    action: str = "search"
    resource_type: str = "Condition"
    status: int = 200
    count: int = 2
    patient: str | None = "p9"
    resource_id: str | None = None
    params: tuple[tuple[str, str], ...] = (("code", "E11.9"), ("onset-date", "ge2020"))
    url: str = "http://ehr/fhir/Condition?code=E11.9"


def test_only_names_leave_the_kernel() -> None:
    report = to_report(Event())
    assert report == {
        "interaction": "search-type",
        "resource_type": "Condition",
        "search_params": ["code", "onset-date"],
        "count": 2,
        "status": 200,
        "patient": "p9",
    }
    assert "E11.9" not in orjson.dumps(report).decode()
    assert to_report(Event(action="expunge")) is None
    deleted = to_report(Event(action="delete", resource_id="c1"))
    assert deleted is not None and deleted["interaction"] == "delete"


def test_what_the_hub_would_refuse_is_left_out_not_the_whole_batch() -> None:
    """The hub refuses a batch as a whole: one odd event must not cost the others."""
    odd = Event(
        params=(("__odd", "1"), ("x" * 101, "2"), ("code", "3")),
        patient="Patient/../x",
        count=-1,
        status=42,
    )
    assert to_report(odd) == {
        "interaction": "search-type",
        "resource_type": "Condition",
        "search_params": ["code"],
    }
    assert to_report(Event(resource_type="X")) is None  # not a type the hub accepts
    assert to_report(Event(action="operation"))["interaction"] == "operation"  # type: ignore[index]
    assert to_report(Event(patient="Patient/p9"))["patient"] == "Patient/p9"  # type: ignore[index]


@pytest.mark.parametrize(
    "event",
    [
        Event(),
        Event(params=(("x" * 100, "1"), ("_has:Observation:patient:code", "2"))),
        Event(action="read", resource_id="c.1-2", params=()),
        Event(patient="Patient/p9"),
        Event(status=599, count=0),
    ],
)
def test_what_the_kernel_reports_the_hub_accepts(event: Event) -> None:
    """Both sides check with the same rules: a report the kernel sends is never refused."""
    report = to_report(event)
    assert report is not None
    record = data_access_event(**report)
    assert record["entity"][-1]["name"] == event.resource_type


def test_waits_on_429_and_retries_503_then_delivers(caplog: pytest.LogCaptureFixture) -> None:
    answers = iter([(429, {"Retry-After": "1"}), (503, {}), (201, {})])
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        status, headers = next(answers)
        bodies.append(orjson.loads(request.content))
        assert request.headers["Authorization"] == "token user-token-123456"
        return httpx.Response(status, headers=headers, json={"message": "x"})

    reporter = HubAuditReporter(
        "http://hub/hub/api/smart/audit",
        "user-token-123456",
        flush_interval=0.01,
        transport=httpx.MockTransport(handler),
    )
    try:
        reporter(Event())
        reporter(Event(action="read", resource_id="c1", params=()))
        assert reporter.flush(30)
    finally:
        reporter.close()
    assert len(bodies) == 3 and bodies[0] == bodies[2]  # the same batch, in order
    assert [e["interaction"] for e in bodies[2]["events"]] == ["search-type", "read"]
    assert "answered 503" in caplog.text
    assert "user-token-123456" not in caplog.text and "user-token" not in repr(reporter)


def test_a_refused_batch_is_dropped_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(400, json={"message": "events[0]: bad"})

    reporter = HubAuditReporter(
        "http://hub/x", "t" * 20, flush_interval=0.01, transport=httpx.MockTransport(handler)
    )
    try:
        reporter(Event())
        assert reporter.flush(10)
    finally:
        reporter.close()
    assert len(calls) == 1
    assert "refused an audit report (400: events[0]: bad)" in caplog.text


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    assert HubAuditReporter.from_environment() is None
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:9/hub/api/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "abc")
    reporter = HubAuditReporter.from_environment()
    assert reporter is not None and reporter.url == "http://127.0.0.1:9/hub/api/smart/audit"
    reporter.close(timeout=0.1)


def test_close_says_how_many_reports_it_could_not_deliver(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("hub down", request=request)

    reporter = HubAuditReporter(
        "http://hub/hub/api/smart/audit",
        "user-token-abcdef",
        flush_interval=0.01,
        transport=httpx.MockTransport(handler),
    )
    reporter(Event())
    reporter(Event(action="read", resource_id="c1", params=()))
    assert reporter.flush(0.2) is False and reporter.pending == 2
    reporter.close(timeout=0.2)
    assert reporter.closed
    assert "2 data-access report(s) could not be delivered" in caplog.text
    assert "user-token-abcdef" not in caplog.text
