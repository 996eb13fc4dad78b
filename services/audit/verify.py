"""`certplane audit:verify`: the whole log against its hash chain and every signed tree head.

Reads rows in position order (a server-side cursor, or an exported bundle's file), so memory
stays flat whatever the log's length, and stops at the first position that is not what was
written. Every event must be covered by a signed tree head: events past the newest one are
reported (the sealer signs within seconds, so an old unsealed tail means something was
appended behind its back).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import msgspec

from events.audit import TreeHead
from services.audit.log_integrity import ROW_COLUMNS, Broken, ChainChecker, LogRow, check_writer
from services.domain.tree_head import signature_problem
from services.storage.row_stream import prefetched_batches

HEAD_DECODER = msgspec.json.Decoder(TreeHead)
HEADS_DECODER = msgspec.json.Decoder(list[TreeHead])


@dataclass
class Outcome:
    events: int = 0
    heads: list[TreeHead] = field(default_factory=list)  # the ones checked
    problem: Broken | None = None
    unsealed: tuple[int, int] | None = None  # positions after the newest head

    @property
    def ok(self) -> bool:
        return self.problem is None and self.unsealed is None


class LogVerifier:
    """Feed rows in order; `finish` says whether the log is what the heads signed."""

    def __init__(
        self,
        heads: Iterable[TreeHead],
        trusted_key: bytes | None = None,
        writer_key: bytes | None = None,
    ) -> None:
        heads = list(heads)
        keys = {h.key_id for h in heads}
        if trusted_key is None and len(keys) > 1:
            raise Broken(
                min(h.size for h in heads),
                f"the checkpoints are signed by several keys ({', '.join(sorted(keys))}): one "
                "is not the sealer's; pin the published key with --public-key",
            )
        self.writer_key = writer_key
        by_size: dict[int, TreeHead] = {}
        for head in heads:
            problem = signature_problem(head, trusted_key)
            if problem:
                raise Broken(
                    head.size, f"the checkpoint of size {head.size} cannot be trusted: {problem}"
                )
            other = by_size.get(head.size)
            if other is not None and other.root_hash != head.root_hash:
                raise Broken(
                    head.size,
                    f"two checkpoints of size {head.size} sign different roots: the log was forked",
                )
            by_size[head.size] = head
        self.heads = sorted(by_size.values(), key=lambda h: h.size)
        self._next = 0
        self.checker = ChainChecker()
        self.outcome = Outcome()
        self._last_good = 0  # the largest size whose head matched

    def feed(self, row: LogRow) -> None:
        self.checker.check(row)
        if self.writer_key is not None:  # the operator's check: names a forged event exactly
            check_writer(row, self.writer_key)
        self.outcome.events += 1
        while self._next < len(self.heads) and self.heads[self._next].size == row.position:
            head = self.heads[self._next]
            if self.checker.frontier.root().hex() != head.root_hash:
                raise Broken(
                    self._last_good + 1,
                    f"the log up to position {head.size} does not match the checkpoint signed at "
                    f"{head.signed_at:%Y-%m-%d %H:%M:%S} UTC: it was rewritten (hashes recomputed) "
                    f"somewhere in positions {self._last_good + 1}–{head.size}",
                )
            self._last_good = head.size
            self.outcome.heads.append(head)
            self._next += 1

    def finish(self) -> Outcome:
        if self._next < len(self.heads):
            head = self.heads[self._next]
            raise Broken(
                self.checker.position + 1,
                f"a checkpoint of size {head.size} was signed, but the log ends at position "
                f"{self.checker.position}: events were deleted from its end",
            )
        if self.checker.position > self._last_good:
            self.outcome.unsealed = (self._last_good + 1, self.checker.position)
        return self.outcome


def verify_rows(
    rows: Iterable[LogRow],
    heads: Iterable[TreeHead],
    trusted_key: bytes | None = None,
    progress: Callable[[int], None] | None = None,
    writer_key: bytes | None = None,
) -> Outcome:
    try:
        verifier = LogVerifier(heads, trusted_key, writer_key)
    except Broken as e:
        return Outcome(problem=e)
    try:
        for row in rows:
            verifier.feed(row)
            if progress is not None and row.position % 50_000 == 0:
                progress(row.position)
        return verifier.finish()
    except Broken as e:
        verifier.outcome.problem = e
        return verifier.outcome


async def db_heads(conn: asyncpg.Connection) -> list[TreeHead]:
    rows = await conn.fetch(
        "select size, root_hash, signed_at, key_id, public_key, signature from audit_tree_heads"
        " order by size"
    )
    return [
        TreeHead(size=r[0], root_hash=bytes(r[1]).hex(), signed_at=r[2], key_id=r[3],
                 public_key=base64.b64encode(r[4]).decode(),
                 signature=base64.b64encode(r[5]).decode())
        for r in rows
    ]  # fmt: skip


async def db_row_batches(
    conn: asyncpg.Connection, *, after: int = 0, upto: int | None = None, batch: int = 5000
) -> AsyncIterator[list[LogRow]]:
    """Rows in position order, a batch at a time, through a server-side cursor (inside a
    transaction): memory stays flat, and per-row work stays synchronous."""
    query = f"select {ROW_COLUMNS} from events where position > $1"
    args: list[object] = [after]
    if upto is not None:
        query += " and position <= $2"
        args.append(upto)
    async for records in prefetched_batches(conn, query + " order by position", *args, batch=batch):
        yield [LogRow(*r) for r in records]


async def db_rows(
    conn: asyncpg.Connection, *, after: int = 0, upto: int | None = None
) -> AsyncIterator[LogRow]:
    async for rows in db_row_batches(conn, after=after, upto=upto):
        for row in rows:
            yield row


async def verify_database(
    conn: asyncpg.Connection,
    extra_heads: Iterable[TreeHead] = (),
    trusted_key: bytes | None = None,
    progress: Callable[[int], None] | None = None,
    writer_key: bytes | None = None,
) -> Outcome:
    heads = [*await db_heads(conn), *extra_heads]
    try:
        verifier = LogVerifier(heads, trusted_key, writer_key)
    except Broken as e:
        return Outcome(problem=e)
    try:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            async for rows in db_row_batches(conn):
                for row in rows:
                    verifier.feed(row)
                if progress is not None:
                    progress(rows[-1].position)
        return verifier.finish()
    except Broken as e:
        verifier.outcome.problem = e
        return verifier.outcome


# -- bundles ------------------------------------------------------------------------------


class BundleRow(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    stream_id: str
    stream_version: int
    event_id: str
    command_id: str
    command_index: int
    type: str
    schema_version: int
    data: str  # the exact stored JSON text (it is what was hashed)
    metadata: str
    recorded_at: dt.datetime
    prev_hash: str  # hex
    hash: str  # hex

    @classmethod
    def of(cls, row: LogRow) -> BundleRow:
        return cls(
            position=row.position, stream_id=row.stream_id, stream_version=row.stream_version,
            event_id=str(row.event_id), command_id=str(row.command_id),
            command_index=row.command_index,
            type=row.type, schema_version=row.schema_version, data=row.data,
            metadata=row.metadata, recorded_at=row.recorded_at,
            prev_hash=bytes(row.prev_hash).hex(), hash=bytes(row.hash).hex(),
        )  # fmt: skip

    def row(self) -> LogRow:
        return LogRow(
            self.position, self.stream_id, self.stream_version, self.event_id, self.command_id,
            self.command_index, self.type, self.schema_version, self.data, self.metadata,
            self.recorded_at, bytes.fromhex(self.prev_hash), bytes.fromhex(self.hash),
        )  # fmt: skip


ROW_ENCODER = msgspec.json.Encoder()
ROW_DECODER = msgspec.json.Decoder(BundleRow)
EVENTS_FILE, HEADS_FILE, KEY_FILE = "events.jsonl", "checkpoints.json", "public_key.txt"


def bundle_rows(directory: Path) -> Iterator[LogRow]:
    with open(directory / EVENTS_FILE, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                yield ROW_DECODER.decode(line).row()
            except (msgspec.DecodeError, ValueError) as e:
                raise Broken(number, f"line {number} of {EVENTS_FILE} is not an event: {e}") from e


def bundle_heads(directory: Path) -> list[TreeHead]:
    return HEADS_DECODER.decode((directory / HEADS_FILE).read_bytes())
