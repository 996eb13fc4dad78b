"""Checking the log row by row: positions dense from 1, each row's hash recomputed from its
content and its predecessor's hash, and the Merkle tree grown over those hashes. Pure
computation over rows, so the same code checks the database, an exported bundle, and what
the sealer is about to sign."""

from __future__ import annotations

import datetime as dt
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from services.domain.event_content import event_content
from services.domain.merkle import Frontier, leaf_hash
from services.domain.writer_mac import writer_mac
from services.storage.hash_chain import GENESIS, content_hash, event_hash

# The columns, in this order, that everything here reads (from SQL or a bundle).
ROW_COLUMNS = (
    "position, stream_id, stream_version, event_id, command_id, command_index,"
    " type, schema_version, data::text, metadata::text, recorded_at, prev_hash, hash"
)


class LogRow(NamedTuple):  # a tuple: built once per row, cheaply, from the database's record
    position: int
    stream_id: str
    stream_version: int
    event_id: str | uuid.UUID  # UUIDs as asyncpg returns them (hashing needs only the bytes)
    command_id: str | uuid.UUID
    command_index: int
    type: str
    schema_version: int
    data: str
    metadata: str
    recorded_at: dt.datetime
    prev_hash: bytes
    hash: bytes


class Broken(Exception):
    """The first position where the log is not what was written."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"position {position}: {reason}")
        self.position, self.reason = position, reason


@dataclass
class ChainChecker:
    position: int = 0
    prev: bytes = GENESIS
    frontier: Frontier = field(default_factory=Frontier)

    def check(self, row: LogRow | Sequence[Any], writer_key: bytes | None = None) -> None:
        """Accept the next row or raise `Broken` naming it. Any sequence in `LogRow`'s order
        will do (a database record as it comes: verify skips building a LogRow per row).
        With `writer_key`, also that a gateway wrote it (its writer MAC)."""
        (position, stream_id, stream_version, event_id, command_id, command_index, type_,
         schema_version, data, metadata, recorded_at, prev_hash, stored) = row  # fmt: skip
        expected = self.position + 1
        if position != expected:
            raise Broken(
                expected,
                f"missing: the log goes from position {self.position} to {position} "
                "(an event was deleted, or positions were rewritten)"
                if position > expected
                else f"out of order: position {position} comes after {self.position}",
            )
        if prev_hash != self.prev:
            raise Broken(
                position,
                "it does not follow from the previous event (its prev_hash differs): an event "
                "before it was removed, reordered or altered",
            )
        written = event_content(
            stream_id, event_id, command_id, command_index, type_, schema_version, data
        )
        content = content_hash(written, metadata)
        recomputed = event_hash(self.prev, position, stream_version, recorded_at, content)
        if recomputed != stored:
            raise Broken(
                position,
                "its content does not match its hash: its data, metadata, stream, version or "
                "time was altered after it was written",
            )
        if writer_key is not None:  # the same canonical bytes: built once for both checks
            _check_mac(position, metadata, writer_mac(writer_key, written))
        self.position, self.prev = position, recomputed
        self.frontier.append(leaf_hash(recomputed))


class _WriterMac(msgspec.Struct):
    writer_mac: str = ""


_MAC_DECODER = msgspec.json.Decoder(_WriterMac)


def _check_mac(position: int, metadata: str, expected: str) -> None:
    try:
        given = _MAC_DECODER.decode(metadata).writer_mac
    except msgspec.DecodeError:
        given = ""
    if not hmac.compare_digest(given, expected):
        raise Broken(
            position,
            "it was not written by a gateway (its writer MAC is missing or wrong): it was "
            "appended or altered behind the control plane's back",
        )
