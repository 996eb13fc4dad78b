"""Old events stay readable: tests/fixtures/event_log.jsonl is a log captured from a real
gateway, with every event type at every schema version ever defined. It must decode (through
the upcasters), fold, and keep its hash chain, with today's code. When a schema changes,
append examples of the new version (tests/fixtures/extend_event_log.py); never edit old lines.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from events import codec
from events.codec import CURRENT_SCHEMA_VERSION, METADATA_DECODER, decode_event
from services.audit.log_integrity import ChainChecker
from services.audit.replay import Replay
from services.audit.verify import ROW_DECODER
from services.storage.event_log import StoredEvent

FIXTURE = Path(__file__).parents[1] / "fixtures" / "event_log.jsonl"
ROWS = [ROW_DECODER.decode(line) for line in FIXTURE.read_bytes().splitlines()]


def stored(row) -> StoredEvent:
    return StoredEvent(
        position=row.position, stream_id=row.stream_id, version=row.stream_version,
        event_id=row.event_id, command_id=row.command_id, command_index=row.command_index,
        event=decode_event(row.type, row.schema_version, row.data),
        metadata=METADATA_DECODER.decode(row.metadata), recorded_at=row.recorded_at,
    )  # fmt: skip


def test_the_fixture_has_every_version_of_every_event_type() -> None:
    present = {(r.type, r.schema_version) for r in ROWS}
    wanted = {
        (t, v) for t, current in CURRENT_SCHEMA_VERSION.items() for v in range(1, current + 1)
    }
    missing = sorted(wanted - present)
    assert not missing, f"add examples of {missing} to {FIXTURE.name} (extend_event_log.py)"


def test_every_old_event_decodes_folds_and_keeps_its_hash_chain() -> None:
    replay, checker = Replay("certplanedns.example"), ChainChecker()
    seen_app = False
    for row in ROWS:
        checker.check(row.row())  # the hashing of old rows never changes
        replay.apply(stored(row))
        seen_app = seen_app or "one" in replay.apps
    assert seen_app and replay.apps == {}  # created, used, destroyed
    assert checker.position == len(ROWS)


def test_an_old_version_is_upcast_before_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism a schema change will use: v1 rows lifted to v2 on read."""
    row = next(r for r in ROWS if r.type == "domain.added")

    def v1_to_v2(obj: dict) -> dict:
        return {**obj, "hostname": obj["hostname"].upper()}  # a visible, checkable change

    monkeypatch.setitem(CURRENT_SCHEMA_VERSION, "domain.added", 2)
    monkeypatch.setitem(codec.UPCASTERS, ("domain.added", 1), v1_to_v2)
    event = decode_event(row.type, row.schema_version, row.data)
    assert event.hostname == msgspec.json.decode(row.data)["hostname"].upper()
