"""What gateways tell each other about their appends, and how a cache takes it in."""

from __future__ import annotations

from events.app import AppCreated
from events.base import Metadata
from events.domain import DomainAdded, HostnameClaimed
from services.domain.app import AppState, HostnameState
from services.gateway import coherence
from services.gateway.coherence import (
    Appended,
    announcements,
    appended_events,
    read_announcement,
)
from services.gateway.handler import StreamCache
from services.storage.event_log import AppendRequest, AppendResult, AppendStatus, NewEvent

META = Metadata(command_id="c", actor="t", correlation_id="c", causation_id="c", traceparent="")


def added(host: str) -> DomainAdded:
    return DomainAdded(app="shop", hostname=host)


def test_the_next_event_advances_a_cached_state() -> None:
    cache = StreamCache(10)
    cache.put("app-shop", 1, AppState(name="shop", exists=True))
    cache.follow("app-shop", 2, added("a.example.com"))
    version, state = cache.get("app-shop")  # type: ignore[misc]
    assert version == 2 and list(state.domains) == ["a.example.com"]


def test_an_event_already_seen_changes_nothing_and_a_gap_forgets_the_stream() -> None:
    cache = StreamCache(10)
    state = AppState(name="shop", exists=True)
    cache.put("app-shop", 3, state)
    cache.follow("app-shop", 3, added("late.example.com"))
    assert cache.get("app-shop") == (3, state)
    cache.follow("app-shop", 5, added("b.example.com"))  # version 4 never arrived
    assert cache.get("app-shop") is None


def test_a_new_streams_first_event_is_cached_and_other_unknown_streams_are_not() -> None:
    cache = StreamCache(10)
    cache.follow("hostname-a.example.com", 1, HostnameClaimed(app="shop", hostname="a.example.com"))
    cache.follow("app-other", 7, added("c.example.com"))
    assert cache.get("hostname-a.example.com") == (
        1,
        HostnameState(hostname="a.example.com", claimed_by="shop"),
    )
    assert cache.get("app-other") is None


def test_only_appended_commands_are_announced_with_their_versions() -> None:
    requests = [
        AppendRequest("c1", {}, [NewEvent("app-a", AppCreated(app="a"), META, "e1")]),
        AppendRequest("c2", {}, [NewEvent("app-b", AppCreated(app="b"), META, "e2")]),
        AppendRequest(
            "c3",
            {},
            [
                NewEvent("app-a", added("x.example.com"), META, "e3"),
                NewEvent("hostname-x.example.com", HostnameClaimed(app="a", hostname="x.example.com"), META, "e4"),
            ],
        ),
    ]  # fmt: skip
    results = [
        AppendResult(AppendStatus.OK, positions=[1], versions=[1]),
        AppendResult(AppendStatus.CONFLICT, stream="app-b", expected=0, actual=1),
        AppendResult(AppendStatus.OK, positions=[2, 3], versions=[2, 1]),
    ]
    assert appended_events(requests, results) == [
        ("app-a", 1, AppCreated(app="a")),
        ("app-a", 2, added("x.example.com")),
        ("hostname-x.example.com", 1, HostnameClaimed(app="a", hostname="x.example.com")),
    ]


def test_an_announcement_round_trips_and_a_large_batch_is_split() -> None:
    events = [(f"app-a{i}", 1, AppCreated(app=f"a{i}")) for i in range(40)]
    whole = list(announcements("gw1", events, 1_000_000))
    assert len(whole) == 1 and read_announcement(whole[0], "gw2") == ("gw1", events)
    parts = list(announcements("gw1", events, 400))
    assert len(parts) > 1 and all(len(p) <= 400 for p in parts)
    assert [e for p in parts for e in read_announcement(p, "gw2")[1]] == events


def test_own_foreign_and_unreadable_announcements_are_ignored() -> None:
    events = [("app-a", 1, AppCreated(app="a"))]
    (own,) = announcements("gw1", events, 1_000_000)
    assert read_announcement(own, "gw1") == ("", [])
    foreign = coherence._ENCODER.encode(Appended("gw3", "another-contract", events))
    assert read_announcement(foreign, "gw2") == ("", [])
    assert read_announcement(b"not json", "gw2") == ("", [])
    assert read_announcement(b'["gw3", "x", [["app-a", 1, {"type": "no.such"}]]]', "gw2") == (
        "",
        [],
    )
