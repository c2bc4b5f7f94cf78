"""The audit budget of login floods: what it does not write is counted, per source, then summed."""

from __future__ import annotations

from jupyterhub_smart.hub.audit_budget import AuditBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_audit_budget_counts_what_it_does_not_write() -> None:
    clock = Clock()
    budget = AuditBudget(window=60, per_source=3, total=5, max_summaries=2, clock=clock)
    sent = {"203.0.113.7": 50, "198.51.100.9": 2, "192.0.2.1": 4, "192.0.2.2": 4}
    written = {source: 0 for source in sent}
    for source, count in sent.items():
        for _ in range(count):
            written[source] += budget.admit("launch-received", source)
    assert written["203.0.113.7"] == 3 and sum(written.values()) == 5  # per source, then total
    assert not budget.due()
    clock.now += 60
    assert budget.due()
    summaries = budget.drain()
    assert len(summaries) == 3  # two addresses by name, the rest summed
    counted = sum(s.count for s in summaries)
    assert counted + sum(written.values()) == sum(sent.values())  # nothing lost
    merged = next(s for s in summaries if s.client is None)
    assert "other client addresses" in merged.description(60)
    assert budget.admit("launch-received", "203.0.113.7")  # a new window
    assert budget.drain() == []
