"""Group commit: requests that queue while a batch is in flight share the next batch."""

from __future__ import annotations

import asyncio

from services.gateway.group_commit import GroupCommitter
from services.storage.event_log import AppendRequest, AppendResult, AppendStatus


class SlowLog:
    """An EventLog whose appends wait until released: the seam the committer depends on."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()

    async def append_batch(self, requests: list[AppendRequest]) -> list[AppendResult]:
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


async def test_batches_are_capped() -> None:
    log = SlowLog()
    log.release.set()
    async with GroupCommitter(log, appenders=1, max_batch=2) as committer:  # type: ignore[arg-type]
        await asyncio.gather(*(committer.append(req(f"x{i}")) for i in range(5)))
    assert all(len(b) <= 2 for b in log.batches) and sum(map(len, log.batches)) == 5


async def test_a_failed_append_fails_every_waiter_and_the_committer_goes_on() -> None:
    class Broken(SlowLog):
        async def append_batch(self, requests: list[AppendRequest]) -> list[AppendResult]:
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
