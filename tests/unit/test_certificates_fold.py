"""The certificates projection's fold: which rows a batch of app events changes."""

from __future__ import annotations

import datetime as dt

from events.app import AppCreated
from events.domain import DomainAdded, DomainRemoved
from services.domain.app import AppState, evolve
from services.projectors.certificates import CertificatesProjection, Rows
from services.storage.event_log import NO_METADATA, StoredEvent
from tests.unit.test_app_decide import add_cert, cert, run

AT = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)


def folded(state: AppState, events: list[object], first: int) -> Rows:
    """Rows for `events` folded one by one from `state`, as one batch."""
    steps = []
    for position, event in enumerate(events, start=first):
        after = evolve(state, event)  # type: ignore[arg-type]
        stored = StoredEvent(position, "app-demo", position, "", "", 0, event, NO_METADATA, AT)  # type: ignore[arg-type]
        steps.append(("demo", state, after, stored))
        state = after
    rows = Rows()
    CertificatesProjection._fold(steps, rows)
    return rows.finish()


def test_an_endpoint_row_lists_the_domains_it_serves_after_the_whole_batch() -> None:
    state = evolve(AppState(name="demo"), AppCreated(app="demo"))
    state = evolve(state, DomainAdded(app="demo", hostname="a.example.com"))
    state, _ = run(state, add_cert(), prepared=cert("*.example.com"))
    (name,) = state.endpoints
    rows = folded(
        state,
        [
            DomainAdded(app="demo", hostname="b.example.com", endpoint=name),
            DomainAdded(app="demo", hostname="c.example.com", endpoint=name),
            DomainRemoved(app="demo", hostname="a.example.com"),
            DomainAdded(app="demo", hostname="d.other.org"),  # no endpoint serves it
        ],
        first=10,
    )
    row = rows.endpoints[("demo", name)]
    assert row is not None
    assert row[4] == ["b.example.com", "c.example.com"]
    assert row[8] == 12  # the last event that changed what it serves
    assert rows.domains["a.example.com"] is None
    assert rows.domains["c.example.com"] == ("c.example.com", "demo", name, None, 11)
    assert rows.apps["demo"] == ("demo", 3, 1, 13, AT)
