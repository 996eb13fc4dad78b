"""The `eventsourcing` library's aggregate for the baseline: one DomainAdded event per save."""

from __future__ import annotations

from eventsourcing.domain import Aggregate, event


class BenchApp(Aggregate):
    def __init__(self, name: str) -> None:
        self.name = name
        self.domains: list[str] = []

    @event("DomainAdded")
    def add_domain(self, hostname: str) -> None:
        self.domains.append(hostname)
