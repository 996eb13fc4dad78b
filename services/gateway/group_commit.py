"""Group commit: concurrent commands in one gateway share one append transaction.

While one batch is being appended, new requests queue; the next batch takes all of them
(up to `max_batch`). Under light load a batch is one command and latency is one round
trip; under heavy load batches grow, so one lock and one fsync serve many commands.
Each request gets its own result: a conflict fails only that command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from services.storage.event_log import AppendRequest, AppendResult, EventLog

Announce = Callable[[list[AppendRequest], list[AppendResult]], Awaitable[None]]

log = logging.getLogger("certplane.gateway.group_commit")


class GroupCommitter:
    def __init__(
        self,
        event_log: EventLog,
        *,
        max_batch: int = 256,
        appenders: int = 2,
        min_share: int = 32,
        upstream: Callable[[], int] = lambda: 0,
        linger: float = 0.002,
        announce: Announce | None = None,
    ) -> None:
        self._log = event_log
        self._announce = announce
        self._upstream = upstream
        self._linger = linger
        self._max_batch = max_batch
        self._appenders = appenders
        self._min_share = min_share
        self._queue: asyncio.Queue[tuple[AppendRequest, asyncio.Future[AppendResult]]] = (
            asyncio.Queue()
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0
        self.requests = 0

    async def __aenter__(self) -> GroupCommitter:
        # Two appenders, each taking an even share of the waiting requests: while one batch
        # holds the log's lock, the next is already on its way, so the lock is rarely idle.
        # Measured with 64 closed-loop clients: ~4.2k commands/s against ~3.8k with one
        # appender taking everything (the clients fell into lock step behind one batch); a
        # fixed cap of 32 instead of a share cost two thirds of the throughput at 256 clients.
        self._tasks = [
            asyncio.create_task(self._run(), name=f"group-commit-{i}")
            for i in range(self._appenders)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def append(self, request: AppendRequest) -> AppendResult:
        """Append one command's events as part of the next batch; returns its own result."""
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Take an even share of what is waiting, so the other appender gets the rest and
            # both batches are under way at once; never more than max_batch.
            share = max(self._min_share, -(-(self._queue.qsize() + 1) // self._appenders))
            limit = min(self._max_batch, share)
            while len(batch) < limit and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if len(batch) < limit and self._upstream():
                # Commands still in a bundle worker finish one by one, each about a
                # millisecond apart: without a pause each would be appended alone, and a
                # lone append costs PostgreSQL as much CPU as a batch of ten.
                await asyncio.sleep(self._linger)
                while len(batch) < limit and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
            try:
                results = await self._log.append_batch([r for r, _ in batch])
            except Exception as e:  # every waiter learns of it; the loop goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            self.requests += len(batch)
            if self._announce is not None:
                # Before any reply: a client's next command must find the news ahead of it.
                try:
                    await self._announce([r for r, _ in batch], results)
                except Exception as e:  # best effort: stale caches fall back to version checks
                    log.warning("announcing a batch to the other gateways failed: %s", e)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
