"""The log's hash chain, recomputed outside the database (mirrors `certplane_event_hash`).

An auditor needs only the stored columns to check that no event was altered, removed or
reordered: each row's hash covers its canonical bytes and the previous row's hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

GENESIS = bytes(32)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _lp(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(4, "big") + raw


def event_hash(
    prev: bytes,
    position: int,
    stream_id: str,
    stream_version: int,
    event_id: str,
    command_id: str,
    command_index: int,
    type_: str,
    schema_version: int,
    recorded_at: dt.datetime,
    data: str,
    metadata: str,
) -> bytes:
    """SHA-256(prev ‖ canonical row), byte for byte what the append function stores."""
    delta = recorded_at - _EPOCH
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return hashlib.sha256(
        b"certplane-event-v1"
        + prev
        + position.to_bytes(8, "big", signed=True)
        + _lp(stream_id)
        + stream_version.to_bytes(4, "big", signed=True)
        + uuid.UUID(event_id).bytes
        + uuid.UUID(command_id).bytes
        + command_index.to_bytes(4, "big", signed=True)
        + _lp(type_)
        + schema_version.to_bytes(4, "big", signed=True)
        + micros.to_bytes(8, "big", signed=True)
        + _lp(data)
        + _lp(metadata)
    ).digest()
