"""The wire contract: stable tags, strict commands, tolerant events, fresh JSON Schemas."""

from __future__ import annotations

import msgspec
import pytest

from events.codec import (
    COMMAND_DECODER,
    CURRENT_SCHEMA_VERSION,
    UPCASTERS,
    decode_event,
    encode,
)
from events.domain import DomainAdded
from events.union import COMMAND_TYPES, EVENT_TYPES, tag_of
from schemas.generate import OUT, render


def test_json_schemas_are_current() -> None:
    expected = render()
    on_disk = {p.name: p.read_text() for p in OUT.glob("*.json")}
    assert on_disk == expected, "schemas/json is stale: run `python -m schemas.generate`"


def test_every_tag_is_unique_and_dotted() -> None:
    tags = [tag_of(t) for t in (*EVENT_TYPES, *COMMAND_TYPES)]
    assert len(tags) == len(set(tags))
    assert all("." in t and t == t.lower() for t in tags)


def test_commands_refuse_unknown_fields() -> None:
    raw = b'{"id":"x","actor":"a","command":{"type":"app.create","app":"demo","colour":"red"}}'
    with pytest.raises(msgspec.ValidationError, match="colour"):
        COMMAND_DECODER.decode(raw)


def test_events_tolerate_fields_from_newer_writers() -> None:
    raw = b'{"type":"domain.added","app":"demo","hostname":"a.example.com","future":1}'
    assert decode_event("domain.added", 1, raw) == DomainAdded(app="demo", hostname="a.example.com")


def test_an_old_schema_version_is_upcast_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend domain.added is at version 2, where v1's "host" field became "hostname".
    monkeypatch.setitem(CURRENT_SCHEMA_VERSION, "domain.added", 2)
    monkeypatch.setitem(
        UPCASTERS,
        ("domain.added", 1),
        lambda o: {**{k: v for k, v in o.items() if k != "host"}, "hostname": o["host"]},
    )
    old = b'{"type":"domain.added","app":"demo","host":"a.example.com"}'
    assert decode_event("domain.added", 1, old) == DomainAdded(app="demo", hostname="a.example.com")


def test_event_round_trip_keeps_the_tag() -> None:
    event = DomainAdded(app="demo", hostname="a.example.com", endpoint="troodon-00001")
    assert msgspec.json.decode(encode(event))["type"] == "domain.added"
    assert decode_event("domain.added", 1, encode(event)) == event
