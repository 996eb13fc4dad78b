"""The `sealer` projection: an RFC 9162 Merkle tree over the log, and signed tree heads.

Per batch it re-checks every row's hash chain (it never signs a log it cannot verify: a
broken row stops it as a poison event, visibly), grows the tree's frontier (kept with the
checkpoint, so a restart resumes exactly), and signs a tree head every `every` events (at
sizes that are multiples of it, whatever the batch boundaries) or, when events wait
unsealed, after `seconds`. Heads go to `audit_tree_heads` (facts, outside the generation
schemas: a rebuild adds what it lacks and refuses to differ) and, after commit, to NATS
`<prefix>.audit.checkpoints` so that outside parties can keep them.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import asyncpg
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS

from events.audit import TreeHead
from services.audit.log_integrity import ROW_COLUMNS, ChainChecker
from services.domain.merkle import Frontier
from services.domain.tree_head import sign
from services.storage.event_log import StoredEvent

log = logging.getLogger("certplane.projector.sealer")
HEAD_ENCODER = msgspec.json.Encoder()


class RewrittenLog(Exception):
    pass


class SealerProjection:
    name = "sealer"
    tables = ("tree_state",)
    event_types = None  # reads the raw rows itself, but a poison row must reach `apply` alone

    def __init__(
        self,
        key: Ed25519PrivateKey,
        nc: NATS | None,
        subject: str,
        *,
        writer_key: bytes | None,
        every: int = 1000,
        seconds: float = 2.0,
    ) -> None:
        self.key, self.nc, self.subject = key, nc, subject
        self.writer_key = writer_key
        self.every, self.seconds = every, seconds
        self._checker: ChainChecker | None = None
        self._signed_size = 0
        self._last_seal = time.monotonic()
        self._pending: list[TreeHead] = []

    def reset(self) -> None:
        self._checker = None
        self._pending.clear()

    def ddl(self, schema: str) -> list[str]:
        return [
            f'create table "{schema}".tree_state (id boolean primary key default true check (id),'
            " size bigint not null, prev_hash bytea not null, frontier bytea[] not null)"
        ]

    async def _load(self, conn: asyncpg.Connection, schema: str) -> ChainChecker:
        if self._checker is None:
            row = await conn.fetchrow(
                f'select size, prev_hash, frontier from "{schema}".tree_state'
            )
            if row is None:
                self._checker = ChainChecker()
            else:
                self._checker = ChainChecker(
                    position=row[0],
                    prev=bytes(row[1]),
                    frontier=Frontier(row[0], [bytes(h) for h in row[2]]),
                )
            self._signed_size = (
                await conn.fetchval("select coalesce(max(size), 0) from audit_tree_heads") or 0
            )
        return self._checker

    async def apply(
        self, conn: asyncpg.Connection, schema: str, events: list[StoredEvent], through: int
    ) -> None:
        if not events:
            return
        checker = await self._load(conn, schema)
        rows = await conn.fetch(
            f"select {ROW_COLUMNS} from events where position between $1 and $2 order by position",
            events[0].position,
            events[-1].position,
        )
        for row in rows:
            # raises Broken, a poison event never signed: a broken chain, or no gateway wrote it
            checker.check(row, self.writer_key)
            if checker.frontier.size % self.every == 0:
                await self._seal(conn, checker)
        if checker.position > self._signed_size and self._due():
            await self._seal(conn, checker)
        await conn.execute(
            f'insert into "{schema}".tree_state (size, prev_hash, frontier) values ($1, $2, $3)'
            " on conflict (id) do update set size = excluded.size, prev_hash = excluded.prev_hash,"
            " frontier = excluded.frontier",
            checker.position,
            checker.prev,
            checker.frontier.hashes,
        )

    def _due(self) -> bool:
        return time.monotonic() - self._last_seal >= self.seconds

    async def _seal(self, conn: asyncpg.Connection, checker: ChainChecker) -> None:
        size, root = checker.frontier.size, checker.frontier.root()
        existing = await conn.fetchval(
            "select root_hash from audit_tree_heads where size = $1", size
        )
        if existing is not None:
            if bytes(existing) != root:
                raise RewrittenLog(
                    f"the log's tree of size {size} differs from the head signed for that size: "
                    "events at or before it were rewritten; run `certplane audit:verify`"
                )
            return  # a rebuild passing a head it signed before
        head = sign(self.key, size, root, dt.datetime.now(dt.UTC))
        await conn.execute(
            "insert into audit_tree_heads (size, root_hash, signed_at, key_id, public_key,"
            " signature) values ($1, $2, $3, $4, decode($5, 'base64'), decode($6, 'base64'))",
            size, root, head.signed_at, head.key_id, head.public_key, head.signature,
        )  # fmt: skip
        self._signed_size = max(self._signed_size, size)
        self._last_seal = time.monotonic()
        self._pending.append(head)

    async def idle(self, conn: asyncpg.Connection, schema: str) -> None:
        """Caught up: sign the unsealed tail once it has waited `seconds`."""
        checker = await self._load(conn, schema)
        if checker.position > self._signed_size and self._due():
            await self._seal(conn, checker)

    async def after_commit(self, conn: asyncpg.Connection, schema: str) -> None:
        heads, self._pending = self._pending, []
        if self.nc is None:
            return
        for head in heads:
            try:
                await self.nc.publish(self.subject, HEAD_ENCODER.encode(head))
            except Exception as e:  # the database keeps it; `audit:checkpoints` lists it
                log.warning("cannot publish the tree head of size %d (%s)", head.size, e)

    async def reconcile(self, conn: asyncpg.Connection, schema: str) -> None:
        return None
