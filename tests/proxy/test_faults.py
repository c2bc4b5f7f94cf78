"""The proxy when the EHR or the caller misbehaves: down, slow, huge, cut short, gone.

The front in front of the sandbox produces each fault on demand (``x-fault``);
the proxy waits 3 s for the EHR in this package. Every case is also checked in
the proxy's trail: a failed request is recorded as a failure, with why.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .world import ProxyWorld, details, patients, proxy_pid, proxy_records, wait_records


def peak_kib(pid: int) -> int:
    """The process's peak resident memory so far (``VmHWM``), KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def last_record_with(world: ProxyWorld, before: int) -> dict[str, str]:
    record = wait_records(world, before + 1)[-1]
    return {
        **details(record),
        "outcomeDesc": record.get("outcomeDesc", ""),
        "outcome": record["outcome"],
    }


def test_ehr_down_is_a_502_and_recorded(proxy_world: ProxyWorld) -> None:
    before = len(proxy_records(proxy_world))
    with proxy_world.client() as client:
        answer = client.get(f"Patient/{proxy_world.patient}", params={"x-fault": "close"})
    assert answer.status_code == 502
    assert answer.json()["error"] == "ehr_unreachable"
    got = last_record_with(proxy_world, before)
    assert got["http-status"] == "502" and got["outcome"] == "8"


def test_a_slow_ehr_is_a_504_after_the_timeout(proxy_world: ProxyWorld) -> None:
    with proxy_world.client() as client:
        answer = client.get(f"Patient/{proxy_world.patient}", params={"x-fault": "slow"})
    assert answer.status_code == 504
    assert answer.json()["error"] == "ehr_timeout"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_compressed_answer_is_decoded_counted_and_rewritten(
    proxy_world: ProxyWorld, encoding: str
) -> None:
    """The proxy asks for gzip/deflate and undoes it itself; an encoding it cannot read is a 502."""
    before = len(proxy_records(proxy_world))
    with proxy_world.client() as client:
        answer = client.get("Observation", params={"x-fault": encoding})
    got = last_record_with(proxy_world, before)
    if encoding == "br":
        assert answer.status_code == 502
        assert answer.json()["error"] == "ehr_encoding_unsupported"
        assert got["http-status"] == "502" and got["outcome"] == "8"
        return
    assert answer.status_code == 200, answer.text[:300]
    assert "content-encoding" not in answer.headers
    urls = [entry["fullUrl"] for entry in answer.json()["entry"]]
    assert urls == [f"{proxy_world.base}/Observation/z{i}" for i in range(3)]
    assert got["count"] == "3" and got["http-status"] == "200"
    assert patients(wait_records(proxy_world, before + 1)[-1]) == {
        f"Patient/zip{i}" for i in range(3)
    }


@pytest.mark.slow
def test_a_100_mb_answer_streams_through_in_flat_memory(proxy_world: ProxyWorld) -> None:
    pid = proxy_pid(proxy_world)
    peak_before = peak_kib(pid)
    before = len(proxy_records(proxy_world))
    received, entries, carry, first = 0, 0, b"", b""
    marker = b'"resource":{'
    with (
        proxy_world.client() as client,
        client.stream("GET", "Observation", params={"x-fault": "huge"}) as answer,
    ):
        assert answer.status_code == 200
        for chunk in answer.iter_raw():
            if not first:
                first = chunk[:2000]
            received += len(chunk)
            buf = carry + chunk
            entries += buf.count(marker) - carry.count(marker)
            carry = buf[-(len(marker) - 1) :]
    assert received >= 100 * 1024 * 1024
    assert proxy_world.base.encode() + b"/Observation?page=2" in first
    assert proxy_world.front.origin.encode() not in first
    growth_mib = (peak_kib(pid) - peak_before) / 1024
    assert growth_mib < 48, f"the proxy's peak memory grew by {growth_mib:.0f} MiB"
    got = last_record_with(proxy_world, before)
    assert got["count"] == str(entries)
    assert got["bytes"] == str(received)


def test_a_client_that_leaves_mid_stream_stops_the_ehr_read(proxy_world: ProxyWorld) -> None:
    before = len(proxy_records(proxy_world))
    gone = len(proxy_world.front.client_gone)
    with (
        proxy_world.client() as client,
        client.stream("GET", "Observation", params={"x-fault": "huge"}) as answer,
    ):
        read = 0
        for chunk in answer.iter_raw():
            read += len(chunk)
            if read > 1024 * 1024:
                break
    deadline = time.monotonic() + 30
    while len(proxy_world.front.client_gone) == gone:
        assert time.monotonic() < deadline, "the proxy kept reading from the EHR"
        time.sleep(0.05)
    got = last_record_with(proxy_world, before)
    assert "client disconnected" in got["outcomeDesc"]
    assert got["outcome"] == "4"


def test_an_ehr_that_stops_mid_answer_cuts_the_callers_answer(proxy_world: ProxyWorld) -> None:
    before = len(proxy_records(proxy_world))
    with (
        proxy_world.client() as client,
        pytest.raises(httpx.HTTPError),
        client.stream("GET", "Observation", params={"x-fault": "stall"}) as answer,
    ):
        for _ in answer.iter_raw():
            pass
    got = last_record_with(proxy_world, before)
    assert "broke off" in got["outcomeDesc"]


def test_one_user_past_the_concurrency_limit_gets_429_with_retry_after(
    proxy_world: ProxyWorld,
) -> None:
    """The package's proxy lets 4 requests of a user be in flight; slow ones hold their slots."""

    def slow(_: int) -> httpx.Response:
        with proxy_world.client() as client:
            return client.get(f"Patient/{proxy_world.patient}", params={"x-fault": "slow"})

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(slow, range(6)))
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    assert all(a.headers["retry-after"] == "1" for a in limited)
    assert limited[0].json()["error"] == "too_many_requests"
    assert len(limited) <= 2 and all(a.status_code in (429, 504) for a in answers)
