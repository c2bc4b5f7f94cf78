"""Forwarding through the hub's proxy: reads, paging links, and one audit record per request.

A real hub in proxy mode started the proxy; every answer here went sandbox ->
front -> proxy -> test, and the proxy's trail is read back from its file.
"""

from __future__ import annotations

import httpx

from .world import ProxyWorld, details, interaction, patients, proxy_records, wait_records


def test_a_search_pages_through_the_proxy_with_rewritten_links(proxy_world: ProxyWorld) -> None:
    before = len(proxy_records(proxy_world))
    fetched, url = [], f"Observation?patient={proxy_world.patient}&_count=5"
    with proxy_world.client() as client:
        pages = 0
        while url:
            page = client.get(url)
            assert page.status_code == 200, page.text
            assert page.headers["content-type"].startswith("application/fhir+json")
            bundle = page.json()
            pages += 1
            for entry in bundle.get("entry", []):
                assert entry["fullUrl"].startswith(proxy_world.base + "/Observation/")
                fetched.append(entry["resource"]["id"])
            nxt = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
            assert all(u.startswith(proxy_world.base + "/") for u in nxt)
            url = nxt[0] if nxt else ""
    assert pages >= 2 and len(fetched) == len(set(fetched))
    assert proxy_world.sandbox.iss not in page.text
    records = wait_records(proxy_world, before + pages)[before:]
    assert [interaction(r) for r in records] == ["search-type"] * pages
    assert sum(int(details(r)["count"]) for r in records) == len(fetched)
    first = details(records[0])
    assert first["query:patient"] == proxy_world.patient
    assert first["http-status"] == "200" and int(first["bytes"]) > 0
    assert all(patients(r) == {f"Patient/{proxy_world.patient}"} for r in records)
    assert all(r["agent"][0]["altId"] == proxy_world.user for r in records)


def test_a_read_is_one_record_naming_the_resource(proxy_world: ProxyWorld) -> None:
    before = len(proxy_records(proxy_world))
    with proxy_world.client() as client:
        answer = client.get(f"Patient/{proxy_world.patient}")
    assert answer.status_code == 200 and answer.json()["id"] == proxy_world.patient
    [record] = wait_records(proxy_world, before + 1)[before:]
    assert interaction(record) == "read" and record["action"] == "R"
    target = next(e for e in record["entity"] if e.get("name") == "Patient")
    assert target["what"]["reference"] == f"Patient/{proxy_world.patient}"
    assert details(record)["count"] == "1"
    assert patients(record) == {f"Patient/{proxy_world.patient}"}


def test_the_hubs_public_address_works_too_and_links_follow_it(proxy_world: ProxyWorld) -> None:
    """Through configurable-http-proxy (the hub's public URL), links point at that address."""
    public = proxy_world.base.replace(
        proxy_world.proxy_root, f"{proxy_world.hub.url}/services/smart-fhir/"
    )
    answer = httpx.get(
        f"{public}/Observation",
        params={"patient": proxy_world.patient, "_count": 2},
        headers={"Authorization": f"Bearer {proxy_world.token}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    links = [link["url"] for link in answer.json()["link"]]
    assert links and all(u.startswith(public + "/") for u in links)


def test_the_token_api_refuses_notebooks_in_proxy_mode(proxy_world: ProxyWorld) -> None:
    answer = httpx.get(
        f"{proxy_world.hub.url}/hub/api/smart/token",
        headers={"Authorization": f"token {proxy_world.token}"},
    )
    assert answer.status_code == 403
    assert answer.json()["error"] == "proxy_mode"
    assert "access_token" not in answer.text
