"""Group commit: concurrent commands in one gateway share one append transaction.

While one batch is being appended, new requests queue; the next batch takes half of them
(at least `min_share`, at most `max_batch`). Under light load a batch is one command and
latency is one round trip; under heavy load batches grow, so one lock and one fsync serve
many commands. Each request gets its own result: a conflict fails only that command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from services.storage.event_log import (
    AppendRequest,
    AppendResult,
    AppendStatus,
    BatchRefused,
    EventLog,
)

Announce = Callable[[list[AppendRequest], list[AppendResult]], Awaitable[None]]
# a request, its result to come, and the appends of earlier requests it requires
_Waiting = tuple[
    AppendRequest, "asyncio.Future[AppendResult]", "tuple[asyncio.Future[AppendResult], ...]"
]

log = logging.getLogger("certplane.gateway.group_commit")


class GroupCommitter:
    def __init__(
        self,
        event_log: EventLog,
        *,
        max_batch: int = 256,
        appenders: int = 1,
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
        # Requests in submission order. A request may expect the versions an earlier one
        # writes (the gateway decides an app's next command before the last is appended), so
        # two requests naming one stream are never in different batches at once: the later
        # batch could take the log's lock first and fail. `_in_flight` holds the streams of
        # each batch being appended.
        self._waiting: deque[_Waiting] = deque()
        self._arrived = asyncio.Event()
        self._in_flight: dict[int, frozenset[str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0
        self.requests = 0

    async def __aenter__(self) -> GroupCommitter:
        # One appender (by default) taking half of what waits (see `_next_batch`). Taking
        # everything put the clients in lock step behind one batch (~3.8k commands/s at 64
        # clients, against ~4.2k for two appenders with half each, session 2); taking half
        # splits them into two groups that take turns, one being decided and answered while
        # the other is appended. A second appender sending its batch while the first holds
        # the log's lock only made PostgreSQL and the gateway work more a command: one
        # appender with half of the queue, alternated with two (session 17): AddDomain @64
        # +10 % (6 of 7 pairs; PostgreSQL 46-55 against 54-60 us a command), AddCert EC @64
        # +11 % (batches of 23 against 13), equal at 16 clients, on one app, and at 256
        # (within 4 %). A fixed cap of 32 instead of half cost 13 % at 256 clients.
        self._tasks = [
            asyncio.create_task(self._run(i), name=f"group-commit-{i}")
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
        return await self.submit(request)

    def submit(
        self, request: AppendRequest, requires: Iterable[asyncio.Future[AppendResult]] = ()
    ) -> asyncio.Future[AppendResult]:
        """Queue one command's events for the next batch; the future is its own result.

        Requests are appended in the order they were submitted (the batches keep the queue's
        order), so a request may expect the versions an earlier one writes; `requires` are
        the appends of earlier requests it was decided after: it is appended only with them,
        and fails as a conflict without them.
        """
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future, tuple(requires)))
        self._arrived.set()
        return future

    async def _run(self, index: int) -> None:
        while True:
            batch = await self._next_batch(index)
            # The batch's streams are taken from now on, pause included: a request the other
            # appender took meanwhile could otherwise be appended first, ahead of the one it
            # rests on (it failed, and all after it on its app: 64 AddCerts on one app met
            # thousands of conflicts and "busy" refusals).
            self._in_flight[index] = _streams(batch)
            try:
                if len(batch) < self._min_share and self._upstream():
                    # Commands still in a bundle worker finish one by one, each about a
                    # millisecond apart: without a pause each would be appended alone, and a
                    # lone append costs PostgreSQL as much CPU as a batch of ten.
                    await asyncio.sleep(self._linger)
                    batch += self._take(index, self._min_share - len(batch))
                    self._in_flight[index] = _streams(batch)
                batch, requires = self._without_failed_requirements(batch)
                if not batch:
                    continue
                results = await self._log.append_batch([r for r, _, _ in batch], requires)
            except BatchRefused as e:
                # One request's bad value must not fail the commands batched with it (other
                # clients' among them): each goes alone, in order, and only it fails.
                if len(batch) > 1:
                    await self._one_by_one(batch)
                else:
                    _fail(batch, e)
                continue
            except Exception as e:  # every waiter learns of it; the loop goes on
                _fail(batch, e)
                continue
            finally:
                del self._in_flight[index]
                self._arrived.set()  # what waited for these streams may go now
            self.batches += 1
            self.requests += len(batch)
            if self._announce is not None:
                # Before any reply: a client's next command must find the news ahead of it.
                try:
                    await self._announce([r for r, _, _ in batch], results)
                except Exception as e:  # best effort: stale caches fall back to version checks
                    log.warning("announcing a batch to the other gateways failed: %s", e)
            for (_, future, _), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _one_by_one(self, batch: list[_Waiting]) -> None:
        """Append each request of a refused batch alone, in order; a request whose earlier
        requirement failed is answered as a conflict (`_without_failed_requirements`)."""
        for item in batch:
            kept, _ = self._without_failed_requirements([item])
            if not kept:
                continue
            request, future, _ = item
            try:
                [result] = await self._log.append_batch([request])
            except Exception as e:
                _fail([item], e)
            else:
                if not future.done():
                    future.set_result(result)

    @staticmethod
    def _without_failed_requirements(
        batch: list[_Waiting],
    ) -> tuple[list[_Waiting], list[list[int]]]:
        """The batch less the requests an earlier, settled append they require did not make
        (answered here as conflicts), and for each left the numbers of those in the batch it
        requires. A requirement is either settled or earlier in this batch: it names one of
        the request's streams, and `_take` never sends two batches with a stream at once."""
        kept: list[_Waiting] = []
        numbers: dict[asyncio.Future[AppendResult], int] = {}
        requires: list[list[int]] = []
        for item in batch:
            request, future, required = item
            earlier = [numbers[f] for f in required if f in numbers]
            if any(not _appended(f) for f in required if f not in numbers):
                stream = next(iter(request.expected), "")
                if not future.done():  # its waiter may be gone (cancelled)
                    future.set_result(
                        AppendResult(
                            AppendStatus.CONFLICT,
                            stream=stream,
                            expected=request.expected.get(stream, 0),
                        )
                    )
                continue
            kept.append(item)
            numbers[future] = len(kept)
            requires.append(earlier)
        return kept, requires

    async def _next_batch(self, index: int) -> list[_Waiting]:
        while True:
            # Half of what is waiting: the rest forms the next batch while this one is
            # appended (by another appender, if there are two). Never more than max_batch.
            share = max(self._min_share, -(-len(self._waiting) // 2))
            batch = self._take(index, min(self._max_batch, share))
            if batch:
                return batch
            self._arrived.clear()
            await self._arrived.wait()

    def _take(self, index: int, limit: int) -> list[_Waiting]:
        """Up to `limit` waiting requests in order, passing over those that name a stream of
        another batch in flight (and those after them that name the same streams)."""
        waiting = self._waiting
        busy = set().union(*(v for k, v in self._in_flight.items() if k != index))
        if not busy:  # the usual case: take from the front
            return [waiting.popleft() for _ in range(min(limit, len(waiting)))]
        taken: list[_Waiting] = []
        kept: deque[_Waiting] = deque()
        while waiting and len(taken) < limit:
            item = waiting.popleft()
            streams = item[0].expected.keys()
            if busy.isdisjoint(streams):
                taken.append(item)
            else:
                busy.update(streams)  # whatever follows on these streams waits behind it
                kept.append(item)
        kept.extend(waiting)
        self._waiting = kept
        return taken


def _fail(batch: list[_Waiting], error: Exception) -> None:
    for _, future, _ in batch:
        if not future.done():  # its waiter may be gone (cancelled)
            future.set_exception(error)


def _streams(batch: list[_Waiting]) -> frozenset[str]:
    return frozenset(s for r, _, _ in batch for s in r.expected)


def _appended(future: asyncio.Future[AppendResult]) -> bool:
    return (
        future.done()
        and not future.cancelled()
        and future.exception() is None
        and future.result().status is AppendStatus.OK
    )
