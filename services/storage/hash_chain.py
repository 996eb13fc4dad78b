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
import struct

GENESIS = bytes(32)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DOMAIN = b"certplane-event-v1"


_LEN = struct.Struct(">I").pack  # a length prefix
_POSITION_VERSION_TIME = struct.Struct(">qiq").pack


def content_hash(content: bytes, metadata: str) -> bytes:
    """SHA-256 of an event's canonical content bytes: what the writer decides
    (`event_content`, which the writer MAC covers too), then the metadata."""
    meta = metadata.encode()
    return hashlib.sha256(b"".join((_DOMAIN, content, _LEN(len(meta)), meta))).digest()


def micros(at: dt.datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def event_hash(
    prev: bytes, position: int, stream_version: int, recorded_at: dt.datetime, content: bytes
) -> bytes:
    """The chained hash the append function stores for a row: SHA-256(prev ‖ position (8) ‖
    stream_version (4) ‖ recorded_at µs (8) ‖ content), integers signed big-endian."""
    fixed = _POSITION_VERSION_TIME(position, stream_version, micros(recorded_at))
    return hashlib.sha256(prev + fixed + content).digest()
