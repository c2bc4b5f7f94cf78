"""A Bulk Data export through the proxy: kick-off, status, manifest and files, all recorded.

The sandbox lets a ``patient/`` token export its patient's compartment; every
URL it hands out (``Content-Location``, the manifest's file links) comes back
rewritten to the proxy, so the export runs end to end without an EHR token.
"""

from __future__ import annotations

import time

from .world import ProxyWorld, details, proxy_records, wait_records


def test_an_export_runs_through_the_proxy_and_each_file_is_counted(
    proxy_world: ProxyWorld,
) -> None:
    with proxy_world.client() as client:
        kickoff = client.get(
            "Patient/$export",
            params={"_type": "Observation"},
            headers={"Prefer": "respond-async", "Accept": "application/fhir+json"},
        )
        assert kickoff.status_code == 202, kickoff.text
        status_url = kickoff.headers["content-location"]
        assert status_url.startswith(proxy_world.base + "/$export-status/")
        deadline = time.monotonic() + 60
        while (status := client.get(status_url)).status_code == 202:
            assert time.monotonic() < deadline, "the export did not finish"
            time.sleep(float(status.headers.get("retry-after", "1")))
        assert status.status_code == 200, status.text
        outputs = status.json()["output"]
        assert outputs and all(
            o["url"].startswith(proxy_world.base + "/$export-file/") for o in outputs
        )
        before = len(proxy_records(proxy_world))
        lines = 0
        for output in outputs:
            answer = client.get(output["url"], headers={"Accept": "application/fhir+ndjson"})
            assert answer.status_code == 200
            lines += len([line for line in answer.text.splitlines() if line.strip()])
        assert client.delete(status_url).status_code == 202
    records = wait_records(proxy_world, before + len(outputs) + 1)[before:]
    downloads = records[: len(outputs)]
    assert sum(int(details(r)["count"]) for r in downloads) == lines > 0
    assert all(details(r)["operation"] == "$export-file" for r in downloads)
