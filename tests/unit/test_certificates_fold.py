"""The certificates projection's fold: which rows a batch of app events changes."""

from __future__ import annotations

import datetime as dt

from events.app import AppCreated
from events.domain import DomainAdded, DomainRemoved
from services.domain.app import AppState, evolve
from services.projectors.certificates import CertificatesProjection, Rows
from services.storage.event_log import NO_METADATA, StoredEvent
from tests.unit.test_app_decide import add_cert, app_with, cert, run

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
    return rows


def test_a_domain_event_writes_its_domain_row_and_not_its_endpoints() -> None:
    """Which domains an endpoint serves is the view's to list (from the domain rows), so a
    domain event under a wildcard writes one row, however many domains the endpoint has."""
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
    assert rows.endpoints == {}
    assert rows.domains == {
        "b.example.com": ("b.example.com", "demo", name, None, 10),
        "c.example.com": ("c.example.com", "demo", name, None, 11),
        "a.example.com": None,
        "d.other.org": ("d.other.org", "demo", None, None, 13),
    }
    assert rows.apps["demo"] == ("demo", 3, 1, 13, AT)


def test_an_endpoint_row_is_written_when_the_endpoint_itself_changes() -> None:
    state = app_with("a.example.com")
    _, decision = run(state, add_cert(), prepared=cert("*.example.com"))
    events = [e for s, e in decision.events if s.startswith("app-")]
    rows = folded(state, events, first=5)
    ((key, row),) = rows.endpoints.items()
    assert row is not None and key == ("demo", row[1]) and row[2] == "sni"
    assert row[7] == 5 + len(events) - 1  # the event that added it
    assert rows.domains["a.example.com"] == ("a.example.com", "demo", row[1], None, 5)


def test_an_app_destroyed_and_created_again_in_one_batch_keeps_the_last_word() -> None:
    """An app's row comes from its last event in the batch: gone if that destroyed it, the
    new app's (its own position and counts) if it was created again."""
    from events.app import AppDestroyed

    state = app_with("a.example.com")
    again = folded(
        state,
        [
            AppDestroyed(app="demo"),
            AppCreated(app="demo"),
            DomainAdded(app="demo", hostname="b.example.com"),
        ],
        first=20,
    )
    assert again.apps == {"demo": ("demo", 1, 0, 22, AT)}
    assert again.domains == {
        "a.example.com": None,
        "b.example.com": ("b.example.com", "demo", None, None, 22),
    }
    gone = folded(
        state,
        [DomainAdded(app="demo", hostname="b.example.com"), AppDestroyed(app="demo")],
        first=30,
    )
    assert gone.apps == {"demo": None}
    assert gone.domains["a.example.com"] is None
