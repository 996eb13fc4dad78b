"""The log's hash chain, computed outside the database (mirrors `certplane_event_hash`).

An auditor needs only the stored columns to check that no event was altered, removed or
reordered. Two steps:
- `content_hash`: SHA-256 over the event's canonical bytes (everything the writer decides);
- `event_hash`: SHA-256(prev ‖ position ‖ stream_version ‖ recorded_at µs ‖ content_hash),
  chaining in what the database assigns under the log's lock.
Fields are length-prefixed or fixed-width, so no two different rows share canonical bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

from services.domain.ids import uuid_bytes

GENESIS = bytes(32)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DOMAIN = b"certplane-event-v1"


def _lp(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(4, "big") + raw


def content_hash(
    stream_id: str,
    event_id: str | uuid.UUID,
    command_id: str | uuid.UUID,
    command_index: int,
    type_: str,
    schema_version: int,
    data: str,
    metadata: str,
) -> bytes:
    """SHA-256 of an event's canonical content bytes."""
    h = hashlib.sha256(_DOMAIN)  # fed piece by piece: no copy of the data to concatenate
    h.update(_lp(stream_id))
    h.update(uuid_bytes(event_id))
    h.update(uuid_bytes(command_id))
    h.update(command_index.to_bytes(4, "big", signed=True))
    h.update(_lp(type_))
    h.update(schema_version.to_bytes(4, "big", signed=True))
    for text in (data, metadata):  # the large ones: length then bytes, no concatenation
        raw = text.encode()
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return h.digest()


def micros(at: dt.datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def event_hash(
    prev: bytes, position: int, stream_version: int, recorded_at: dt.datetime, content: bytes
) -> bytes:
    """The chained hash the append function stores for a row."""
    return hashlib.sha256(
        prev
        + position.to_bytes(8, "big", signed=True)
        + stream_version.to_bytes(4, "big", signed=True)
        + micros(recorded_at).to_bytes(8, "big", signed=True)
        + content
    ).digest()
