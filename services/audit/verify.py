"""`certplane audit:verify`: the whole log against its hash chain and every signed tree head.

Reads rows in position order (a server-side cursor, or an exported bundle's file), so memory
stays flat whatever the log's length, and stops at the first position that is not what was
written. A long log in the database is checked in chunks by a worker process per core, all
in one exported snapshot, and joined in order: the same checks, the same first bad position. Every event must be covered by a signed tree head: events past the newest one are
reported (the sealer signs within seconds, so an old unsealed tail means something was
appended behind its back).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import multiprocessing
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import msgspec

from events.audit import TreeHead
from services.audit.log_integrity import ROW_COLUMNS, Broken, ChainChecker, LogRow
from services.domain.merkle import Frontier
from services.domain.tree_head import signature_problem
from services.storage.row_stream import prefetched_batches

HEAD_DECODER = msgspec.json.Decoder(TreeHead)
HEADS_DECODER = msgspec.json.Decoder(list[TreeHead])
log = logging.getLogger("certplane.audit.verify")
# Leaves per chunk of a parallel verify: a power of two, so chunk roots are perfect subtrees.
CHUNK = 1 << 16
_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f-]+$")


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
        self._chunk_roots = Frontier()  # over the roots of whole chunks (`feed_chunk`)

    def feed(self, row: LogRow) -> None:
        # with the writer key (the operator's check), a forged event is named exactly
        self.checker.check(row, self.writer_key)
        self.outcome.events += 1
        while self._next < len(self.heads) and self.heads[self._next].size == row.position:
            self._check_root(self.heads[self._next], self.checker.frontier.root())

    def feed_chunk(self, chunk: ChunkResult) -> None:
        """Accept a chunk checked elsewhere (`check_chunk`), as if its rows had been fed here:
        link it to the chain so far, check the heads that fall inside it, then its problem."""
        if chunk.events and chunk.first_prev != self.checker.prev:
            raise Broken(
                chunk.start,
                "it does not follow from the previous event (its prev_hash differs): an event "
                "before it was removed, reordered or altered",
            )
        for size in sorted(chunk.at_heads):
            while self._next < len(self.heads) and self.heads[self._next].size == size:
                head = self.heads[self._next]
                # the perfect subtrees before the chunk, then the chunk's own up to `size`
                root = Frontier(hashes=[*self._chunk_roots.hashes, *chunk.at_heads[size]]).root()
                self._check_root(head, root)
        if chunk.problem is not None:
            raise Broken(*chunk.problem)
        self.outcome.events += chunk.events
        self.checker.position, self.checker.prev = chunk.end, chunk.last_hash
        if len(chunk.frontier) == 1 and chunk.end - chunk.start + 1 == chunk.size:
            self._chunk_roots.append(chunk.frontier[0])  # a whole chunk: one perfect subtree

    def _check_root(self, head: TreeHead, root: bytes) -> None:
        if root.hex() != head.root_hash:
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
    *,
    url: str | None = None,
    chunk: int = CHUNK,
    workers: int | None = None,
) -> Outcome:
    """Verify the whole log. With `url` (where worker processes can connect) and a log of
    two chunks or more, chunks are checked by worker processes, one per core, all reading
    the coordinator's snapshot; the result, and the problem named, are those of one pass."""
    heads = [*await db_heads(conn), *extra_heads]
    try:
        verifier = LogVerifier(heads, trusted_key, writer_key)
    except Broken as e:
        return Outcome(problem=e)
    try:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            last = await conn.fetchval("select max(position) from events") or 0
            checked = False
            if url is not None and last >= 2 * chunk:
                snapshot = await conn.fetchval("select pg_export_snapshot()")
                try:
                    await _verify_in_chunks(verifier, url, snapshot, last, chunk, workers, progress)
                    checked = True
                except (BrokenProcessPool, OSError) as e:  # no workers here: one pass, then
                    log.warning("verifying in one pass: worker processes failed (%s)", e)
                    verifier = LogVerifier(heads, trusted_key, writer_key)
            if not checked:
                async for rows in db_row_batches(conn):
                    for row in rows:
                        verifier.feed(row)
                    if progress is not None:
                        progress(rows[-1].position)
        return verifier.finish()
    except Broken as e:
        verifier.outcome.problem = e
        return verifier.outcome


# -- in chunks, on every core --------------------------------------------------------------
#
# Each row's hashes depend only on the row and its stored prev_hash, and RFC 9162's tree over
# chunks of 2^k leaves is built from each chunk's own subtree: so chunks can be checked apart
# and joined in order. The coordinator links chunk to chunk (prev_hash against the last
# recomputed hash) and computes each signed head's root from the roots of the whole chunks
# before it and the chunk's own frontier at that size.


@dataclass
class ChunkResult:
    start: int  # positions start..end, `size` of them when the chunk is whole
    end: int
    size: int
    events: int = 0  # rows that checked out
    first_prev: bytes = b""  # the stored prev_hash of the first row
    last_hash: bytes = b""  # the recomputed hash of the last row that checked out
    frontier: list[bytes] = field(default_factory=list)  # of the chunk's leaves, at its end
    at_heads: dict[int, list[bytes]] = field(default_factory=dict)  # head size -> frontier
    problem: tuple[int, str] | None = None  # the first bad position in it, and why


class ChunkChecker:
    """Checks positions start..end on their own; `result` is what the coordinator joins."""

    def __init__(
        self, start: int, end: int, size: int, head_sizes: Iterable[int],
        writer_key: bytes | None = None,
    ) -> None:  # fmt: skip
        self.start, self.end, self.size = start, end, size
        self.wanted = set(head_sizes)
        self.writer_key = writer_key
        self.checker = ChainChecker(position=start - 1)
        self.first_prev = b""
        self.at_heads: dict[int, list[bytes]] = {}

    def feed(self, row: LogRow | asyncpg.Record) -> None:
        """A row in `ROW_COLUMNS` order: a LogRow or the database's record as it comes."""
        checker = self.checker
        if checker.position == self.start - 1:
            self.first_prev = checker.prev = row[11]  # prev_hash: linked by the coordinator
        checker.check(row, self.writer_key)
        if row[0] in self.wanted:
            self.at_heads[row[0]] = list(checker.frontier.hashes)

    def finish(self) -> None:
        if self.checker.position < self.end:
            missing = self.checker.position + 1
            raise Broken(
                missing,
                f"missing: there is no event at position {missing} (an event was deleted, or "
                "positions were rewritten)",
            )

    def result(self, problem: Broken | None = None) -> ChunkResult:
        checker = self.checker
        return ChunkResult(
            self.start, self.end, self.size, events=checker.position - (self.start - 1),
            first_prev=self.first_prev, last_hash=checker.prev,
            frontier=checker.frontier.hashes, at_heads=self.at_heads,
            problem=(problem.position, problem.reason) if problem is not None else None,
        )  # fmt: skip


def _chunk_in_worker(
    url: str, snapshot: str, start: int, end: int, size: int, head_sizes: list[int],
    writer_key: bytes | None,
) -> ChunkResult:  # fmt: skip
    return asyncio.run(_read_chunk(url, snapshot, ChunkChecker(start, end, size, head_sizes,
                                                               writer_key)))  # fmt: skip


async def _read_chunk(url: str, snapshot: str, chunk: ChunkChecker) -> ChunkResult:
    if not _SNAPSHOT_ID.match(snapshot):
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            await conn.execute(f"set transaction snapshot '{snapshot}'")  # the coordinator's
            query = (
                f"select {ROW_COLUMNS} from events where position > $1 and position <= $2"
                " order by position"
            )
            try:
                async for records in prefetched_batches(conn, query, chunk.start - 1, chunk.end):
                    for record in records:
                        chunk.feed(record)
                chunk.finish()
            except Broken as e:
                return chunk.result(e)
            return chunk.result()
    finally:
        await conn.close()


async def _verify_in_chunks(
    verifier: LogVerifier, url: str, snapshot: str, last: int, chunk: int,
    workers: int | None, progress: Callable[[int], None] | None,
) -> None:  # fmt: skip
    sizes = [h.size for h in verifier.heads]
    spans = [(start, min(start + chunk - 1, last)) for start in range(1, last + 1, chunk)]
    loop = asyncio.get_running_loop()
    count = workers or min(len(spans), os.cpu_count() or 1)
    # spawn, not fork: a forked child would inherit this process's running event loop
    with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            loop.run_in_executor(
                pool,
                _chunk_in_worker,
                url,
                snapshot,
                start,
                end,
                chunk,
                [s for s in sizes if start <= s <= end],
                verifier.writer_key,
            )
            for start, end in spans
        ]
        try:
            for future in futures:
                verifier.feed_chunk(await future)
                if progress is not None:
                    progress(verifier.checker.position)
        finally:
            for future in futures:
                future.cancel()


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
