"""Group commit: requests that queue while a batch is in flight share the next batch."""

from __future__ import annotations

import asyncio

from services.gateway.group_commit import GroupCommitter
from services.storage.event_log import AppendRequest, AppendResult, AppendStatus, BatchRefused


class SlowLog:
    """An EventLog whose appends wait until released: the seam the committer depends on."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()

    async def append_batch(
        self, requests: list[AppendRequest], requires: list[list[int]] | None = None
    ) -> list[AppendResult]:
        self.batches.append([r.command_id for r in requests])
        await self.release.wait()
        return [
            AppendResult(AppendStatus.CONFLICT if r.command_id == "c3" else AppendStatus.OK)
            for r in requests
        ]


def req(command_id: str) -> AppendRequest:
    return AppendRequest(command_id=command_id, expected={}, events=[])


async def test_waiting_requests_share_one_batch_and_each_gets_its_own_result() -> None:
    log = SlowLog()
    async with GroupCommitter(log, appenders=1, max_batch=32) as committer:  # type: ignore[arg-type]
        first = asyncio.create_task(committer.append(req("c0")))
        await asyncio.sleep(0.01)  # c0 is in flight, alone
        rest = [asyncio.create_task(committer.append(req(f"c{i}"))) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        log.release.set()
        results = await asyncio.gather(first, *rest)
    assert log.batches == [["c0"], ["c1", "c2", "c3", "c4", "c5"]]
    assert [r.status for r in results] == [AppendStatus.OK] * 3 + [AppendStatus.CONFLICT] + [
        AppendStatus.OK
    ] * 2


async def test_a_long_queue_goes_in_halves_so_clients_take_turns() -> None:
    """128 requests waiting behind a batch in flight: the next batch takes half of them, and
    the rest follow it, one batch at a time, so closed-loop clients split into two groups that alternate
    (one decided and answered while the other is appended) rather than all waiting behind
    one batch. Under `min_share` waiting, a batch takes them all."""

    class CountingLog(SlowLog):
        in_flight = most = 0

        async def append_batch(
            self, requests: list[AppendRequest], requires: list[list[int]] | None = None
        ) -> list[AppendResult]:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            try:
                return await super().append_batch(requests, requires)
            finally:
                self.in_flight -= 1

    log = CountingLog()
    async with GroupCommitter(log) as committer:  # type: ignore[arg-type]  # the defaults
        first = asyncio.create_task(committer.append(req("c0")))
        await asyncio.sleep(0.01)  # c0 is in flight, alone
        rest = [asyncio.create_task(committer.append(req(f"c{i}"))) for i in range(1, 129)]
        await asyncio.sleep(0.01)
        log.release.set()
        await asyncio.gather(first, *rest)
    assert [len(b) for b in log.batches] == [1, 64, 32, 32]
    # one batch at a time: a second one sent while the first holds the log's lock only
    # waited there, costing PostgreSQL and the gateway more a command (bench/RESULTS.md)
    assert log.most == 1
    assert [c for b in log.batches for c in b] == [f"c{i}" for i in range(129)]


async def test_batches_are_capped() -> None:
    log = SlowLog()
    log.release.set()
    async with GroupCommitter(log, appenders=1, max_batch=2) as committer:  # type: ignore[arg-type]
        await asyncio.gather(*(committer.append(req(f"x{i}")) for i in range(5)))
    assert all(len(b) <= 2 for b in log.batches) and sum(map(len, log.batches)) == 5


async def test_a_failed_append_fails_every_waiter_and_the_committer_goes_on() -> None:
    class Broken(SlowLog):
        async def append_batch(
            self, requests: list[AppendRequest], requires: list[list[int]] | None = None
        ) -> list[AppendResult]:
            if len(self.batches) == 0:
                self.batches.append([])
                raise ConnectionError("database went away")
            return [AppendResult(AppendStatus.OK) for _ in requests]

    async with GroupCommitter(Broken(), appenders=1) as committer:  # type: ignore[arg-type]
        try:
            await committer.append(req("a"))
            raise AssertionError("expected the append to fail")
        except ConnectionError:
            pass
        assert (await committer.append(req("b"))).status is AppendStatus.OK


async def test_a_refused_batch_goes_one_by_one_and_only_the_bad_request_fails() -> None:
    """The log refuses a batch for one request's value: the requests go again alone, in
    order; the bad one fails, one decided on it is a conflict, the rest are appended."""

    class Refusing(SlowLog):
        async def append_batch(
            self, requests: list[AppendRequest], requires: list[list[int]] | None = None
        ) -> list[AppendResult]:
            self.batches.append([r.command_id for r in requests])
            await self.release.wait()
            if any(r.command_id == "bad" for r in requests):
                raise BatchRefused("the database refused a value")
            return [AppendResult(AppendStatus.OK) for _ in requests]

    log = Refusing()
    async with GroupCommitter(log, appenders=1) as committer:  # type: ignore[arg-type]
        first = committer.submit(req("first"))
        await asyncio.sleep(0.01)  # in flight alone: the next four wait, then go together
        a = committer.submit(req("a"))
        bad = committer.submit(req("bad"))
        on_bad = committer.submit(req("on-bad"), requires=[bad])
        b = committer.submit(req("b"))
        log.release.set()
        results = await asyncio.gather(first, a, bad, on_bad, b, return_exceptions=True)
    assert log.batches == [["first"], ["a", "bad", "on-bad", "b"], ["a"], ["bad"], ["b"]]
    assert isinstance(results[2], BatchRefused)
    assert [r.status for r in results if isinstance(r, AppendResult)] == [
        AppendStatus.OK, AppendStatus.OK, AppendStatus.CONFLICT, AppendStatus.OK
    ]  # fmt: skip


async def test_a_batch_is_announced_before_any_of_its_commands_is_answered() -> None:
    log = SlowLog()
    log.release.set()
    seen: list[tuple[list[str], list[AppendStatus], bool]] = []
    tasks: list[asyncio.Task[AppendResult]] = []

    async def announce(requests: list[AppendRequest], results: list[AppendResult]) -> None:
        answered = any(t.done() for t in tasks)
        seen.append(([r.command_id for r in requests], [r.status for r in results], answered))

    async with GroupCommitter(log, appenders=1, announce=announce) as committer:  # type: ignore[arg-type]
        tasks += [asyncio.create_task(committer.append(req(f"c{i}"))) for i in range(4)]
        await asyncio.gather(*tasks)
    assert [ids for ids, _, _ in seen] == [["c0", "c1", "c2", "c3"]]
    assert seen[0][1][3] is AppendStatus.CONFLICT  # every result goes along; the reader filters
    assert not any(answered for _, _, answered in seen)


async def test_a_failed_announcement_does_not_fail_the_commands() -> None:
    log = SlowLog()
    log.release.set()

    async def announce(requests: list[AppendRequest], results: list[AppendResult]) -> None:
        raise ConnectionError("nats went away")

    async with GroupCommitter(log, appenders=1, announce=announce) as committer:  # type: ignore[arg-type]
        results = await asyncio.gather(*(committer.append(req(f"x{i}")) for i in range(3)))
    assert [r.status for r in results] == [AppendStatus.OK] * 3


async def test_a_stream_is_in_one_batch_in_flight_at_a_time() -> None:
    """The gateway decides an app's next command before the last is appended: if the second
    appender sent the later request while the first still had the earlier one, the later
    could take the log's lock first and fail its version check."""

    class Gated(SlowLog):
        def __init__(self) -> None:
            super().__init__()
            self.active: set[str] = set()
            self.overlaps: list[set[str]] = []

        async def append_batch(
            self, requests: list[AppendRequest], requires: list[list[int]] | None = None
        ) -> list[AppendResult]:
            streams = {s for r in requests for s in r.expected}
            if streams & self.active:
                self.overlaps.append(streams & self.active)
            self.active |= streams
            self.batches.append([r.command_id for r in requests])
            if len(self.batches) == 1:
                await self.release.wait()  # the first batch stays in flight
            await asyncio.sleep(0.001)
            self.active -= streams
            return [AppendResult(AppendStatus.OK) for _ in requests]

    def on(stream: str, command_id: str) -> AppendRequest:
        return AppendRequest(command_id=command_id, expected={stream: 0}, events=[])

    log = Gated()
    async with GroupCommitter(log, appenders=2, min_share=1) as committer:  # type: ignore[arg-type]
        first = committer.submit(on("app-a", "a1"))
        await asyncio.sleep(0.01)  # a1 in flight on one appender
        later = [
            committer.submit(on("app-a", "a2")),  # waits for a1's batch
            committer.submit(on("app-b", "b1")),  # free to go on the other appender
            committer.submit(on("app-a", "a3")),  # behind a2
            committer.submit(on("app-b", "b2")),
        ]
        await asyncio.sleep(0.01)
        assert log.batches == [["a1"], ["b1", "b2"]]  # app-a's next ones held back
        log.release.set()
        await asyncio.gather(first, *later)
    assert log.overlaps == []
    appended = [c for b in log.batches for c in b]
    assert [c for c in appended if c.startswith("a")] == ["a1", "a2", "a3"]


async def test_a_stream_stays_with_a_batch_that_waits_for_bundles_to_finish() -> None:
    """While bundles are still in workers, an appender pauses before sending a small batch
    (`linger`); an app's next command, submitted during that pause, must join that batch or
    wait for it, not go first on the other appender (it failed, and every command decided
    after it: 64 AddCerts on one app met thousands of conflicts)."""
    sent: list[list[str]] = []
    active: set[str] = set()
    overlaps: list[set[str]] = []

    class Log:
        async def append_batch(
            self, requests: list[AppendRequest], requires: list[list[int]] | None = None
        ) -> list[AppendResult]:
            streams = {s for r in requests for s in r.expected}
            overlaps.extend([streams & active] if streams & active else [])
            active.update(streams)
            sent.append([r.command_id for r in requests])
            await asyncio.sleep(0.01)
            active.difference_update(streams)
            return [AppendResult(AppendStatus.OK) for _ in requests]

    def on(stream: str, command_id: str) -> AppendRequest:
        return AppendRequest(command_id=command_id, expected={stream: 0}, events=[])

    async with GroupCommitter(
        Log(),  # type: ignore[arg-type]
        appenders=2,
        min_share=4,
        linger=0.05,
        upstream=lambda: 1,  # bundles are always still being validated
    ) as committer:
        first = committer.submit(on("app-a", "a1"))
        await asyncio.sleep(0.01)  # an appender took a1 and is pausing for more
        later = [committer.submit(on("app-a", "a2")), committer.submit(on("app-b", "b1"))]
        await asyncio.gather(first, *later)
    assert overlaps == []
    appended = [c for b in sent for c in b]
    assert appended.index("a1") < appended.index("a2")


async def test_a_request_whose_requirement_failed_is_not_sent() -> None:
    """Decided on the state a failed append would have made: answered as a conflict at once,
    so the gateway decides it again on facts; a requirement in the same batch goes along."""

    class Judging(SlowLog):
        def __init__(self) -> None:
            super().__init__()
            self.requires: list[list[list[int]] | None] = []

        async def append_batch(
            self, requests: list[AppendRequest], requires: list[list[int]] | None = None
        ) -> list[AppendResult]:
            self.batches.append([r.command_id for r in requests])
            self.requires.append(requires)
            return [
                AppendResult(AppendStatus.CONFLICT if r.command_id == "a1" else AppendStatus.OK)
                for r in requests
            ]

    def on(command_id: str) -> AppendRequest:
        return AppendRequest(command_id=command_id, expected={"app-a": 0}, events=[])

    log = Judging()
    async with GroupCommitter(log, appenders=1) as committer:  # type: ignore[arg-type]
        a1 = committer.submit(on("a1"))
        assert (await a1).status is AppendStatus.CONFLICT
        a2 = committer.submit(on("a2"), requires=[a1])
        assert (await a2).status is AppendStatus.CONFLICT  # never sent
        b1 = committer.submit(on("b1"))
        b2 = committer.submit(on("b2"), requires=[b1])  # in b1's batch: the log judges
        assert (await b2).status is AppendStatus.OK
    assert log.batches == [["a1"], ["b1", "b2"]]
    assert log.requires[-1] == [[], [1]]
