"""Reading the log for a projector, the next batch already on its way.

The reader has its own connection, so while the projector applies batch N on the leader's
connection, PostgreSQL is already producing batch N+1 in another process: on two cores
neither waits for the other during a catch-up or a rebuild. Reading is safe beside the
writes: the log is append-only and positions become visible in order (they are assigned
under the log head's lock), so rows after a position are the same whichever connection
reads them. Only a full batch is followed by a prefetch; at the head of the log there is
nothing to read ahead, and the projector waits on LISTEN instead.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from services.projectors import store


class BatchReader:
    def __init__(
        self,
        conn: asyncpg.Connection,
        limit: int,
        types: frozenset[str] | None,
        *,
        envelope: frozenset[str] | None = None,
    ) -> None:
        self.conn = conn
        self.limit = limit
        self.types = types
        self.envelope = envelope
        self._ahead: tuple[int, asyncio.Future[list[asyncpg.Record]]] | None = None

    async def after(self, position: int) -> list[asyncpg.Record]:
        """The rows after `position` (at most `limit`), starting the read of the next ones."""
        limit = self.limit
        rows: list[asyncpg.Record] | None = None
        if self._ahead is not None:
            start, pending = self._ahead
            self._ahead = None
            ahead = await pending  # never cancelled mid-query: the connection stays usable
            if start == position:
                rows = ahead
        if rows is None:
            rows = await store.read_after(self.conn, position, limit, self.types, self.envelope)
        if len(rows) == limit:
            last = rows[-1][0]
            self._ahead = (
                last,
                asyncio.ensure_future(
                    store.read_after(self.conn, last, limit, self.types, self.envelope)
                ),
            )
        return rows

    async def discard(self) -> None:
        """Drop a read-ahead (the position moved elsewhere: a dead letter, a rebuild)."""
        if self._ahead is not None:
            _, pending = self._ahead
            self._ahead = None
            with contextlib.suppress(Exception):
                await pending
