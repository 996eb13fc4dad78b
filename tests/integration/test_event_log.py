"""The log on real PostgreSQL: append-only, dense positions, per-stream versions, the chain."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from events.base import Metadata
from events.domain import DomainAdded
from services.domain.event_content import event_content
from services.gateway.group_commit import GroupCommitter
from services.storage.database import service_pool
from services.storage.event_log import (
    AppendRequest,
    AppendStatus,
    BatchRefused,
    NewEvent,
    PostgresEventLog,
)
from services.storage.hash_chain import GENESIS, content_hash, event_hash


def request(stream: str, expected: int, n: int = 1, command_id: str | None = None) -> AppendRequest:
    cid = command_id or str(uuid.uuid4())
    meta = Metadata(command_id=cid, actor="test", correlation_id=cid, causation_id=cid)
    events = [
        NewEvent(
            stream, DomainAdded(app="demo", hostname=f"h{i}.example.com"), meta, str(uuid.uuid4())
        )
        for i in range(n)
    ]
    return AppendRequest(command_id=cid, expected={stream: expected}, events=events)


@pytest.fixture
async def log(db_url: str):
    pool = await service_pool(db_url, "certplane_service", min_size=1, max_size=20)
    log = PostgresEventLog(pool)
    yield log
    await log.close()
    await pool.close()


async def test_appends_assign_dense_positions_and_stream_versions(log) -> None:
    [a] = await log.append_batch([request("app-one", 0, n=2)])
    [b] = await log.append_batch([request("app-two", 0)])
    [c] = await log.append_batch([request("app-one", 2)])
    assert (a.positions, a.versions) == ([1, 2], [1, 2])
    assert (b.positions, b.versions) == ([3], [1])
    assert (c.positions, c.versions) == ([4], [3])
    assert [e.version for e in await log.read_stream("app-one")] == [1, 2, 3]


async def test_a_command_decided_after_one_that_fails_fails_with_it(log) -> None:
    """Another writer made app-one reach version 1 first: the batch's first command (expecting
    0) fails, and the second, decided on the first's result, expects 1 and would pass the
    version check with someone else's event under it. Requiring the first stops it."""
    await log.append_batch([request("app-one", 0)])  # the other writer
    first, second, free = request("app-one", 0), request("app-one", 1), request("app-two", 0)
    results = await log.append_batch([first, second, free], requires=[[], [1], []])
    assert [r.status for r in results] == [
        AppendStatus.CONFLICT,
        AppendStatus.CONFLICT,
        AppendStatus.OK,
    ]
    assert results[1].stream == "app-one"
    assert [e.version for e in await log.read_stream("app-one")] == [1]
    # and with the first appended, the second goes in behind it
    results = await log.append_batch(
        [request("app-one", 1), request("app-one", 2)], requires=[[], [1]]
    )
    assert [r.versions for r in results] == [[2], [3]]


async def test_the_previous_releases_append_function_still_appends(log, db_url) -> None:
    """During a rolling upgrade the old gateways call certplane_append_arrays (007), now the
    chained append without requirements (011)."""
    from services.storage.event_log import _batch_arrays

    await log.append_batch([request("app-one", 0)])
    conn = await asyncpg.connect(db_url)
    try:
        arguments = _batch_arrays([request("app-one", 1), request("app-one", 1)])[:19]
        row = await conn.fetchrow(
            "select * from certplane_append_arrays("
            + ", ".join(f"${i}" for i in range(1, 20))
            + ")",
            *arguments,
        )
    finally:
        await conn.close()
    assert list(row["status"]) == ["ok", "conflict"]
    assert [e.version for e in await log.read_stream("app-one")] == [1, 2]


async def test_a_conflict_fails_only_its_own_command_in_a_batch(log) -> None:
    await log.append_batch([request("app-one", 0)])
    results = await log.append_batch(
        [request("app-a", 0), request("app-one", 0), request("app-b", 0)]
    )
    assert [r.status for r in results] == [AppendStatus.OK, AppendStatus.CONFLICT, AppendStatus.OK]
    assert (results[1].stream, results[1].expected, results[1].actual) == ("app-one", 0, 1)
    assert results[0].positions == [2] and results[2].positions == [3]  # no hole left by the loser


async def test_a_command_behind_or_ahead_of_its_stream_conflicts_with_the_actual_version(
    log,
) -> None:
    """The append takes a stream to be at the version a command expects when that version
    exists, and lets the unique index refuse the next one if another writer got there first;
    a command expecting a version the stream has not reached must not leave a gap either."""
    await log.append_batch([request("app-one", 0, n=3)])
    behind, ahead, fine = request("app-one", 2), request("app-one", 5), request("app-two", 0)
    results = await log.append_batch([behind, ahead, fine])
    assert [r.status for r in results] == [
        AppendStatus.CONFLICT,
        AppendStatus.CONFLICT,
        AppendStatus.OK,
    ]
    assert [(r.expected, r.actual) for r in results[:2]] == [(2, 3), (5, 3)]
    assert results[2].positions == [4]
    assert [e.version for e in await log.read_stream("app-one")] == [1, 2, 3]
    [after] = await log.append_batch([request("app-one", 3)])
    assert (after.positions, after.versions) == ([5], [4])


async def test_a_command_decided_on_a_stale_state_of_a_stream_it_only_read_conflicts(
    log, db_url
) -> None:
    """The expectation holds for every stream a command read, not only those it writes: a
    gateway that checked a hostname in a cached state another gateway has since moved on
    from must decide again (before migration 014 such a command was appended)."""
    pool = await service_pool(db_url, "certplane_service", min_size=1, max_size=2)
    other = PostgresEventLog(pool)
    try:
        await log.append_batch([request("host-one", 0)])
        await other.append_batch([request("host-one", 1)])  # host-one is at 2 now
        stale = request("app-one", 0)
        stale = AppendRequest(stale.command_id, {"app-one": 0, "host-one": 1}, stale.events)
        current = request("app-two", 0)
        current = AppendRequest(current.command_id, {"app-two": 0, "host-one": 2}, current.events)
        results = await log.append_batch([stale, current])
    finally:
        await other.close()
        await pool.close()
    assert [(r.status, r.stream, r.expected, r.actual) for r in results] == [
        (AppendStatus.CONFLICT, "host-one", 1, 2),
        (AppendStatus.OK, "", 0, 0),
    ]
    assert await log.read_stream("app-one") == []
    assert [e.version for e in await log.read_stream("host-one")] == [1, 2]


async def test_a_value_the_database_refuses_fails_only_its_own_command(log) -> None:
    """A command id PostgreSQL's uuid type refuses (only a bug would let one through the
    gateway) fails the append as BatchRefused; group-committed, the other commands of its
    batch still go in, and only it fails."""
    bad = request("app-bad", 0, command_id="urn:uuid:" + str(uuid.uuid4()))
    with pytest.raises(BatchRefused, match="uuid"):
        await log.append_batch([request("app-one", 0), bad])
    assert await log.read_stream("app-one") == []

    async with GroupCommitter(log) as committer:
        results = await asyncio.gather(
            *(committer.append(r) for r in (request("app-one", 0), bad, request("app-two", 0))),
            return_exceptions=True,
        )
    assert [type(r).__name__ for r in results] == ["AppendResult", "BatchRefused", "AppendResult"]
    assert [e.version for e in await log.read_stream("app-one")] == [1]
    assert [e.version for e in await log.read_stream("app-two")] == [1]


async def test_a_command_id_appends_once(log) -> None:
    cid = str(uuid.uuid4())
    [first] = await log.append_batch([request("app-one", 0, command_id=cid)])
    [again] = await log.append_batch([request("app-other", 0, command_id=cid)])
    assert first.status is AppendStatus.OK and again.status is AppendStatus.DUPLICATE
    assert len(await log.read_all()) == 1


async def test_a_repeated_command_in_a_batch_is_a_duplicate_and_the_others_append(log) -> None:
    """The append assumes no repeats and lets the unique index prove it; a repeat (from an
    earlier batch or earlier in the same one) must still answer `duplicate` for itself only."""
    old = str(uuid.uuid4())
    [first] = await log.append_batch([request("app-one", 0, command_id=old)])
    again = str(uuid.uuid4())
    results = await log.append_batch(
        [
            request("app-a", 0, command_id=again),
            request("app-two", 0, command_id=old),  # appended by the batch before
            request("app-b", 0, n=2),
            request("app-c", 0, command_id=again),  # earlier in this batch
        ]
    )
    assert [r.status for r in results] == [
        AppendStatus.OK,
        AppendStatus.DUPLICATE,
        AppendStatus.OK,
        AppendStatus.DUPLICATE,
    ]
    assert first.positions == [1] and results[0].positions == [2] and results[2].positions == [3, 4]
    assert [e.stream_id for e in await log.read_all()] == ["app-one", "app-a", "app-b", "app-b"]


async def test_sixteen_concurrent_writers_get_one_winner_per_version_and_no_gaps(
    log, db_url
) -> None:
    winners: dict[int, int] = {}

    async def writer(i: int) -> None:
        for _ in range(200):
            version = len(await log.read_stream("app-contended"))
            [result] = await log.append_batch([request("app-contended", version)])
            if result.status is AppendStatus.OK:
                assert result.versions[0] not in winners
                winners[result.versions[0]] = i
            if len(winners) >= 60:
                return

    await asyncio.gather(*(writer(i) for i in range(16)))
    conn = await asyncpg.connect(db_url)
    rows = await conn.fetch("select position, stream_version from events order by position")
    await conn.close()
    assert [r["position"] for r in rows] == list(range(1, len(rows) + 1))
    assert [r["stream_version"] for r in rows] == list(range(1, len(rows) + 1))
    assert sorted(winners) == list(range(1, len(rows) + 1))


async def test_appends_go_on_after_the_database_drops_the_logs_connection(log, db_url) -> None:
    """The log keeps a connection for its appends: a restarted or failed-over PostgreSQL
    (here: its backends terminated) costs one append an Unavailable, not the gateway."""
    from services.domain.errors import Unavailable

    [first] = await log.append_batch([request("app-one", 0)])
    conn = await asyncpg.connect(db_url)
    await conn.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity"
        " where datname = current_database() and pid <> pg_backend_pid()"
    )
    await conn.close()
    results = []
    for expected in (1, 1):  # the first may meet the dead session; the next must not
        try:
            results += await log.append_batch([request("app-one", expected)])
            break
        except Unavailable as e:
            assert "cannot be reached" in str(e)
    assert first.status is AppendStatus.OK and results[-1].status is AppendStatus.OK
    assert results[-1].positions == [2]


@pytest.mark.parametrize(
    "statement",
    ["update events set type = 'x'", "delete from events", "truncate events"],
)
async def test_the_service_role_cannot_change_history(log, db_url, statement) -> None:
    await log.append_batch([request("app-one", 0)])
    conn = await asyncpg.connect(db_url, server_settings={"role": "certplane_service"})
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="permission denied"):
        await conn.execute(statement)
    await conn.close()


@pytest.mark.parametrize(
    "statement",
    ["update events set type = 'x'", "delete from events where position = 1", "truncate events"],
)
async def test_the_trigger_stops_even_a_superuser(log, db_url, statement) -> None:
    await log.append_batch([request("app-one", 0)])
    conn = await asyncpg.connect(db_url)
    assert await conn.fetchval("select rolsuper from pg_roles where rolname = current_user")
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await conn.execute(statement)
    assert await conn.fetchval("select count(*) from events") == 1
    await conn.close()


async def test_the_hash_chain_is_recomputable_outside_the_database(log, db_url) -> None:
    for i in range(5):
        await log.append_batch([request(f"app-{i}", 0, n=2), request(f"app-x{i}", 0)])
    conn = await asyncpg.connect(db_url)
    rows = await conn.fetch(
        "select position, stream_id, stream_version, event_id::text, command_id::text, command_index,"
        " type, schema_version, recorded_at, data::text, metadata::text, prev_hash, hash"
        " from events order by position"
    )
    head = await conn.fetchrow("select position, hash from log_head")
    await conn.close()
    prev = GENESIS
    for r in rows:
        assert bytes(r["prev_hash"]) == prev
        fields = ("stream_id", "event_id", "command_id", "command_index", "type",
                  "schema_version", "data")  # fmt: skip
        content = content_hash(event_content(*[r[k] for k in fields]), r["metadata"])
        computed = event_hash(prev, r["position"], r["stream_version"], r["recorded_at"], content)
        assert computed == bytes(r["hash"])
        prev = computed
    assert (head["position"], bytes(head["hash"])) == (len(rows), prev)
    times = [r["recorded_at"] for r in rows]
    assert times == sorted(times)


async def test_the_sql_hash_function_matches_the_python_one(db_url) -> None:
    import datetime as dt
    import hashlib

    at = dt.datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=dt.UTC)
    prev, content = hashlib.sha256(b"p").digest(), hashlib.sha256(b"c").digest()
    conn = await asyncpg.connect(db_url)
    in_sql = await conn.fetchval(
        "select certplane_event_hash($1, $2, $3, $4, $5)", prev, 42, 7, at, content
    )
    await conn.close()
    assert bytes(in_sql) == event_hash(prev, 42, 7, at, content)


async def test_only_appended_commands_store_or_shred_data_keys(log, db_url) -> None:
    """A command that loses its version check must leave the key table as it found it: its
    new data key is not stored and the keys it would shred stay."""
    from services.storage.event_log import NewDataKey

    kept, added, refused = (str(uuid.uuid4()) for _ in range(3))
    conn = await asyncpg.connect(db_url)
    await conn.execute(
        "insert into data_keys (key_id, master_key_id, wrapped) values ($1, 'm', '\\x01')", kept
    )
    await log.append_batch([request("app-one", 0)])
    winner = request("app-two", 0)
    loser = request("app-one", 0)  # app-one is at version 1: a conflict
    results = await log.append_batch(
        [
            AppendRequest(
                winner.command_id,
                winner.expected,
                winner.events,
                new_keys=[NewDataKey(added, "m", b"\x02")],
            ),
            AppendRequest(
                loser.command_id,
                loser.expected,
                loser.events,
                new_keys=[NewDataKey(refused, "m", b"\x03")],
                shred=[kept],
            ),
        ]
    )
    assert [r.status for r in results] == [AppendStatus.OK, AppendStatus.CONFLICT]
    rows = await conn.fetch("select key_id::text, wrapped from data_keys order by created_at")
    await conn.close()
    assert {r[0]: bytes(r[1]) for r in rows} == {kept: b"\x01", added: b"\x02"}
