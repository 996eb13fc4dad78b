"""Reading a long query in batches with the next batch already on its way.

PostgreSQL produces batch N+1 in its own process while Python decodes batch N, so on two
cores the reader is not idle waiting for the server (or the other way round). Memory holds
two batches at most, whatever the result's size. Run inside a transaction (a cursor)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg


async def prefetched_batches(
    conn: asyncpg.Connection, query: str, *args: object, batch: int = 5000
) -> AsyncIterator[list[asyncpg.Record]]:
    cursor = await conn.cursor(query, *args)
    pending = asyncio.ensure_future(cursor.fetch(batch))
    try:
        while records := await pending:
            pending = asyncio.ensure_future(cursor.fetch(batch))
            yield records
    finally:
        if not pending.done():
            pending.cancel()
