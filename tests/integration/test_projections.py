"""The read side on real PostgreSQL and NATS: rebuilds, the KV bucket, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import asyncpg
import msgspec
import nats
import pytest
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError

from events.app import CreateApp, DestroyApp
from events.codec import QUERY_REPLY_DECODER
from events.domain import AddDomain, RemoveDomain
from events.endpoint import RemoveCert
from events.projection import SkipProjection
from events.replies import Accepted, ProjectionsView, RebuildStarted
from events.router import ConfigCheckpoint, RouterConfigEntry
from services.domain.key_envelope import open_router_seal
from services.projectors.runner import ProjectorRunner
from services.subjects import CHECKPOINT_KEY, Subjects, kv_key
from tests.conftest import projected
from tests.integration.helpers import add_cert, update_cert

# the read models compared row by row after a rebuild (the sealer's signed heads are facts,
# tested in test_audit)
PROJECTIONS = ("certificates", "dns_targets", "router_config", "audit")


async def snapshot(db_url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every projection, through the stable views, in a stable order."""
    conn = await asyncpg.connect(db_url)
    try:
        views = await conn.fetch(
            "select table_schema, table_name from information_schema.views"
            " where table_schema = any($1::text[]) order by 1, 2",
            list(PROJECTIONS),
        )
        out = {}
        for schema, view in views:
            rows = await conn.fetch(f'select * from "{schema}"."{view}"')
            out[f"{schema}.{view}"] = sorted(tuple(str(v) for v in r.values()) for r in rows)
        return out
    finally:
        await conn.close()


async def busy_history(cp, ca) -> int:
    """A history with every kind of change; returns its last position."""
    last = 0
    for i in range(6):
        app = f"shop-{i}"
        await cp.command(CreateApp(app=app))
        for host in (f"www.s{i}.example.com", f"api.s{i}.example.com", f"old.s{i}.example.com"):
            await cp.command(AddDomain(app=app, hostname=host))
        c = ca.leaf(f"*.s{i}.example.com")
        await add_cert(cp, app, [c.cert_pem, ca.intermediate.cert_pem], c.key_pem)
        await cp.command(RemoveDomain(app=app, hostname=f"old.s{i}.example.com"))
        if i % 2:
            n = ca.leaf(f"*.s{i}.example.com")
            await update_cert(cp, app, [n.cert_pem, ca.intermediate.cert_pem], n.key_pem)
        if i % 3 == 0:
            await cp.command(RemoveCert(app=app))
        last = (await cp.command(AddDomain(app=app, hostname=f"new.s{i}.example.com"))).position
    last = (await cp.command(DestroyApp(app="shop-5"))).position
    return last


async def kv_revisions(settings) -> dict[str, tuple[int, bytes]]:
    """Every hostname entry in ROUTER_CONFIG: key -> (revision, value).

    Listed from the stream's subjects, not with `kv.keys()`: that runs a watcher, and an
    error in it (a slow consumer set-up on a busy machine) once left this helper with an
    empty dict where the bucket had a dozen entries."""
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        try:
            kv = await js.key_value(settings.router_bucket)
        except BucketNotFoundError:
            return {}
        info = await js.stream_info(f"KV_{settings.router_bucket}", subjects_filter=">")
        prefix = f"$KV.{settings.router_bucket}."
        out = {}
        for subject in info.state.subjects or {}:
            key = subject.removeprefix(prefix)
            if key == CHECKPOINT_KEY:  # not a hostname: the config position (below)
                continue
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):  # its last message deleted it
                continue
            out[key] = (entry.revision, entry.value)
        return out
    finally:
        await nc.close()


async def kv_published(settings, position: int, within: float = 15.0) -> None:
    """Until the KV's `_checkpoint` says every entry up to `position` is stored: router_config
    publishes after its transaction commits, so a caught-up checkpoint alone is not enough."""
    nc = await nats.connect(settings.nats_url)
    try:
        for _ in range(int(within / 0.05)):
            with contextlib.suppress(BucketNotFoundError, KeyNotFoundError):
                kv = await nc.jetstream().key_value(settings.router_bucket)
                value = (await kv.get(CHECKPOINT_KEY)).value
                if msgspec.json.decode(value, type=ConfigCheckpoint).position >= position:
                    return
            await asyncio.sleep(0.05)
        raise AssertionError(f"ROUTER_CONFIG did not reach position {position} in {within}s")
    finally:
        await nc.close()


async def generations(db_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "select name, generation from projector_checkpoints where name not like '%#%'"
        )
        return {r[0]: r[1] for r in rows if r[0] in PROJECTIONS}
    finally:
        await conn.close()


async def test_a_rebuild_from_zero_equals_the_live_projection_and_republishes_nothing(
    cp, projectors, ca, settings, db_url
) -> None:
    last = await busy_history(cp, ca)
    await projected(cp, last)
    await kv_published(settings, last)
    before, published = await snapshot(db_url), await kv_revisions(settings)
    assert before["dns_targets.dns_targets"] and published
    subjects = Subjects(settings.prefix)
    for name in PROJECTIONS:
        reply = QUERY_REPLY_DECODER.decode(await cp.raw_request(subjects.rebuild(name)))
        assert isinstance(reply, RebuildStarted)
    for _ in range(300):
        if {
            n: g for n, g in (await generations(db_url)).items() if n in PROJECTIONS
        } == dict.fromkeys(PROJECTIONS, 2):
            break
        await asyncio.sleep(0.05)
    rebuilt = {n: g for n, g in (await generations(db_url)).items() if n in PROJECTIONS}
    assert rebuilt == dict.fromkeys(PROJECTIONS, 2)
    await projected(cp, last)
    after = await snapshot(db_url)
    for view in before:
        for old, new in zip(before[view], after[view], strict=True):
            assert old == new, (
                view,
                [
                    (i, a[:80], b[:80])
                    for i, (a, b) in enumerate(zip(old, new, strict=True))
                    if a != b
                ],
            )
    assert after == before  # identical rows, DNS targets included
    assert await kv_revisions(settings) == published  # not one republished entry


async def caught_up_anew(
    settings, db_url: str, head: int, live: dict[str, list[tuple[object, ...]]], suffix: str,
    **runner_options: object,
) -> None:  # fmt: skip
    """Fresh runners of every projection (named `<name><suffix>`, no KV: the live projector
    publishes) catch up from position 0 to `head` and give exactly the `live` rows."""
    from services.projectors.service import build

    stop = asyncio.Event()
    runners = []
    for name in PROJECTIONS:
        projection = build(name, settings, None)
        projection.name = f"{name}{suffix}"
        runners.append(ProjectorRunner(projection, db_url, poll_interval=0.1, **runner_options))  # type: ignore[arg-type]
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    try:
        for _ in range(300):
            if all(r.position == head for r in runners):
                break
            await asyncio.sleep(0.05)
        assert {r.name: r.position for r in runners} == {f"{n}{suffix}": head for n in PROJECTIONS}
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    conn = await asyncpg.connect(db_url)
    try:
        for view, rows in live.items():
            schema, table = view.split(".")
            again = await conn.fetch(f'select * from "{schema}{suffix}"."{table}"')
            assert sorted(tuple(str(v) for v in r.values()) for r in again) == rows, view
    finally:
        await conn.close()


async def test_after_a_rebuild_the_projectors_go_on_and_routers_hear_of_each_change(
    cp, projectors, ca, settings, db_url
) -> None:
    """After a rebuild swapped in, the projectors go on with commands that change apps from
    before it (a renewal, a removed domain, a certificate on an app whose last one was
    removed): routers are told of each change, and every projection's rows equal those a
    fresh catch-up of the whole log gives."""

    head = await busy_history(cp, ca)
    await projected(cp, head)
    subjects = Subjects(settings.prefix)
    for name in PROJECTIONS:
        reply = QUERY_REPLY_DECODER.decode(await cp.raw_request(subjects.rebuild(name)))
        assert isinstance(reply, RebuildStarted)
    for _ in range(300):
        if await generations(db_url) == dict.fromkeys(PROJECTIONS, 2):
            break
        await asyncio.sleep(0.05)
    assert await generations(db_url) == dict.fromkeys(PROJECTIONS, 2)
    renewed = ca.leaf("*.s1.example.com")  # shop-1's domains, served by its certificate
    await update_cert(cp, "shop-1", [renewed.cert_pem, ca.intermediate.cert_pem], renewed.key_pem)
    await cp.command(RemoveDomain(app="shop-2", hostname="www.s2.example.com"))
    fresh = ca.leaf("*.s3.example.com")  # shop-3's certificate was removed before the rebuild
    await add_cert(cp, "shop-3", [fresh.cert_pem, ca.intermediate.cert_pem], fresh.key_pem)
    head = (await cp.command(AddDomain(app="shop-4", hostname="late.s4.example.com"))).position
    await projected(cp, head)
    await kv_published(settings, head)
    live = await snapshot(db_url)
    served = {r[0] for r in live["router_config.router_config"]}
    assert {"www.s1.example.com", "www.s3.example.com", "late.s4.example.com"} <= served
    assert "www.s2.example.com" not in served
    published = await kv_revisions(settings)  # and routers were told: exactly those hostnames
    assert set(published) == {kv_key(h) for h in served}
    renewed_entry = msgspec.json.decode(
        published[kv_key("www.s1.example.com")][1], type=RouterConfigEntry
    )
    assert renewed_entry.chain_pem.startswith(renewed.cert_pem.decode().strip())
    await caught_up_anew(settings, db_url, head, live, "_fresh")


async def test_catching_up_in_small_batches_gives_the_same_rows_and_passes_unread_events(
    cp, projectors, ca, settings, db_url
) -> None:
    """Batches of 3 (each read ahead on the runner's second connection), many of them holding
    only events a projection does not read, give the rows of the live projectors; and the
    checkpoint reaches the head even when the head is such an event."""

    await busy_history(cp, ca)
    head = (await cp.command(CreateApp(app="last"))).position  # AppCreated: no DNS change
    await projected(cp, head)
    live = await snapshot(db_url)
    await caught_up_anew(settings, db_url, head, live, "_small", batch_size=3)


class FailsOnce:
    """A projection that raises while applying the batch holding `fail_at` (then forgets it)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.fail_at = inner, None

    def __getattr__(self, attribute: str):  # type: ignore[no-untyped-def]
        found = getattr(self.inner, attribute)
        if attribute != "prepare":
            return found

        async def prepare(conn, schema, events):  # type: ignore[no-untyped-def]
            self._maybe_fail(events)  # a projection that folds ahead fails there
            return await found(conn, schema, events)

        return prepare

    def _maybe_fail(self, events) -> None:  # type: ignore[no-untyped-def]
        if self.fail_at is not None and any(e.position == self.fail_at for e in events):
            self.fail_at = None
            raise RuntimeError("a bug in this projection")

    async def apply(self, conn, schema, events, through) -> None:  # type: ignore[no-untyped-def]
        self._maybe_fail(events)
        await self.inner.apply(conn, schema, events, through)


async def test_a_rebuild_in_many_batches_equals_the_live_rows_and_a_failed_one_keeps_serving(
    cp, projectors, ca, settings, db_url
) -> None:
    """Rebuilds in batches of 4 (each batch decoded while the one before is written) give
    the live projectors' rows; one that fails half-way leaves the live generation serving
    untouched, drops its scratch tables and says where it failed."""
    from services.projectors.service import build

    head = await busy_history(cp, ca)
    await projected(cp, head)
    live = await snapshot(db_url)
    stop = asyncio.Event()
    runners: list[ProjectorRunner] = []
    for name in PROJECTIONS:
        projection = build(name, settings, None)
        projection.name = f"{name}_rb"
        runners.append(ProjectorRunner(FailsOnce(projection), db_url, batch_size=4,
                                       rebuild_batch=4, poll_interval=0.1))  # fmt: skip
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    conn = await asyncpg.connect(db_url)

    async def rows_of(name: str) -> dict[str, list[tuple[str, ...]]]:
        out = {}
        for view in (v for v in live if v.startswith(f"{name}.")):
            table = view.split(".")[1]
            got = await conn.fetch(f'select * from "{name}_rb"."{table}"')
            out[view] = sorted(tuple(str(v) for v in r.values()) for r in got)
        return out

    async def until(check) -> None:  # type: ignore[no-untyped-def]
        for _ in range(400):
            if await check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("timed out")

    async def generation(name: str) -> int:
        return await conn.fetchval(
            "select generation from projector_checkpoints where name = $1", f"{name}_rb"
        )

    try:
        await until(lambda: _true(all(r.position == head for r in runners)))
        for runner in runners:
            runner.projection.fail_at = head // 2  # type: ignore[attr-defined]
            assert runner.request_rebuild()

        async def failed() -> bool:
            details = await conn.fetch(
                "select detail from projector_status where name like '%_rb'"
                " and detail like 'rebuild failed%'"
            )
            return len(details) == len(PROJECTIONS)

        await until(failed)
        for runner in runners:
            name = runner.name.removesuffix("_rb")
            assert await generation(name) == 1
            assert await rows_of(name) == {v: r for v, r in live.items() if v.startswith(name)}
            assert not await conn.fetchval(
                "select count(*) from information_schema.schemata where schema_name = $1",
                f"{name}_rb_g2",
            )
            assert runner.request_rebuild()  # and now it goes through, in batches of 4
        for runner in runners:
            name = runner.name.removesuffix("_rb")
            await until(lambda n=name: _equal(generation(n), 2))
            await until(lambda r=runner: _true(r.position == head))
            assert await rows_of(name) == {v: r for v, r in live.items() if v.startswith(name)}
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await conn.close()


async def test_a_rebuild_changes_and_deletes_rows_it_wrote_many_batches_before(
    cp, projectors, ca, settings, db_url
) -> None:
    """router_config's rebuild asks PostgreSQL only for the rows of hostnames it has written
    (the others cannot have one yet): a hostname written early and updated or removed many
    batches later must still be found, or the rebuild would insert it twice or keep it."""
    from services.projectors.service import build

    async def filler(n: int) -> int:
        for k in range(n):
            host = f"f{k}-{uuid.uuid4().hex[:6]}.filler.example"
            position = (await cp.command(AddDomain(app="filler", hostname=host))).position
        return position

    async def served() -> list[tuple[str, ...]]:
        return sorted((await snapshot(db_url))["router_config.router_config"])

    await cp.command(CreateApp(app="far"))
    await cp.command(CreateApp(app="filler"))
    for host in ("www.far.example.com", "api.far.example.com", "old.far.example.com"):
        await cp.command(AddDomain(app="far", hostname=host))
    first = ca.leaf("*.far.example.com")
    await add_cert(cp, "far", [first.cert_pem, ca.intermediate.cert_pem], first.key_pem)
    await projected(cp, await filler(6))
    early = await served()
    second = ca.leaf("*.far.example.com")
    await update_cert(cp, "far", [second.cert_pem, ca.intermediate.cert_pem], second.key_pem)
    await filler(6)
    await cp.command(RemoveDomain(app="far", hostname="old.far.example.com"))
    head = await filler(3)
    await projected(cp, head)
    live = await served()
    assert [r[0] for r in early] == [f"{h}.far.example.com" for h in ("api", "old", "www")]
    assert [r[0] for r in live] == ["api.far.example.com", "www.far.example.com"]
    assert {r[5] for r in live}.isdisjoint(r[5] for r in early)  # the new fingerprint

    projection = build("router_config", settings, None)
    projection.name = "router_config_far"
    runner = ProjectorRunner(projection, db_url, batch_size=2, rebuild_batch=2, poll_interval=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    conn = await asyncpg.connect(db_url)

    async def until(check) -> None:  # type: ignore[no-untyped-def]
        for _ in range(400):
            if task.done():
                task.result()  # a crashed runner says why
            if await check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("timed out")

    async def generation() -> int:
        return await conn.fetchval(
            "select generation from projector_checkpoints where name = 'router_config_far'"
        )

    try:
        await until(lambda: _true(runner.position == head))
        assert runner.request_rebuild()  # in batches of 2: ~25 of them after the first rows
        await until(lambda: _equal(generation(), 2))
        await until(lambda: _true(runner.position == head))
        rebuilt = await conn.fetch('select * from "router_config_far"."router_config"')
        assert sorted(tuple(str(v) for v in r.values()) for r in rebuilt) == live
        status = await conn.fetchval(
            "select detail from projector_status where name = 'router_config_far'"
        )
        assert status == "generation 2", status  # not "rebuild failed: ..."
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await conn.close()


class PausesHalfWay:
    """A projection whose fold waits at the batch holding `pause_at` until `go` is set."""

    def __init__(self, inner, pause_at: int) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.pause_at = inner, pause_at
        self.paused, self.go = asyncio.Event(), asyncio.Event()

    def __getattr__(self, attribute: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, attribute)

    async def prepare(self, conn, schema, events):  # type: ignore[no-untyped-def]
        if any(e.position >= self.pause_at for e in events) and not self.go.is_set():
            self.paused.set()
            await self.go.wait()
        return await self.inner.prepare(conn, schema, events)


async def test_a_rebuild_reports_its_progress_and_a_clean_stop_leaves_no_stopped_row(
    cp, projectors, ca, settings, db_url, monkeypatch
) -> None:
    """`certplane projections` shows how far a rebuild is ("N of M events"); a projector
    that shuts down cleanly is gone from it, not "stopped" (which means a dead letter)."""
    from services.projectors import runner as runner_module
    from services.projectors.service import build

    monkeypatch.setattr(runner_module, "REBUILD_REPORT_S", 0.0)
    head = await busy_history(cp, ca)
    projection = build("certificates", settings, None)
    projection.name = "certificates_progress"
    paused = PausesHalfWay(projection, pause_at=head // 2)
    runner = ProjectorRunner(paused, db_url, batch_size=4, rebuild_batch=4, poll_interval=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    conn = await asyncpg.connect(db_url)

    async def status() -> list[tuple[str, str]]:
        rows = await conn.fetch(
            "select state, detail from projector_status where name = 'certificates_progress'"
        )
        return [(r[0], r[1]) for r in rows]

    try:
        paused.go.set()  # the first catch-up runs through
        for _ in range(400):
            if runner.position == head:
                break
            await asyncio.sleep(0.05)
        paused.go.clear()
        assert runner.request_rebuild()
        await asyncio.wait_for(paused.paused.wait(), 20)
        [(state, detail)] = await status()
        done = int(detail.split(": ")[1].split(" of ")[0].replace(",", ""))
        assert state == "rebuilding" and 0 < done < head, detail
        assert f" of {head:,} events (" in detail, detail
        paused.go.set()
        for _ in range(400):
            if (await status())[0] == ("running", "generation 2"):
                break
            await asyncio.sleep(0.05)
        assert await status() == [("running", "generation 2")]
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    try:
        assert await status() == []
    finally:
        await conn.close()


async def _true(value: bool) -> bool:
    return value


async def _equal(awaitable, expected) -> bool:  # type: ignore[no-untyped-def]
    return await awaitable == expected


async def test_router_config_follows_add_update_remove_and_seals_keys_for_routers(
    cp, projectors, ca, settings, router_key
) -> None:
    await cp.command(CreateApp(app="shop"))
    await cp.command(AddDomain(app="shop", hostname="www.example.com"))
    c = ca.leaf("www.example.com")
    added = await add_cert(cp, "shop", [c.cert_pem, ca.intermediate.cert_pem], c.key_pem)
    await projected(cp, added.position)
    await kv_published(settings, added.position)
    nc = await nats.connect(settings.nats_url)
    kv = await nc.jetstream().key_value(settings.router_bucket)
    entry = msgspec.json.decode(
        (await kv.get(kv_key("www.example.com"))).value, type=RouterConfigEntry
    )
    assert entry.chain_pem.startswith(c.cert_pem.decode()) and entry.position == added.position
    assert entry.key is not None
    opened = open_router_seal(entry.key, router_key)
    assert opened.startswith(b"-----BEGIN PRIVATE KEY-----")  # only a router key opens it
    removed = await cp.command(RemoveCert(app="shop"))
    await projected(cp, removed.position)
    await kv_published(settings, removed.position)
    with pytest.raises(KeyNotFoundError):
        await kv.get(kv_key("www.example.com"))
    await nc.close()


async def test_router_config_looks_hostnames_up_by_index_as_its_table_grows(
    cp, projectors, ca, db_url
) -> None:
    """Each batch looks up the rows of its hostnames. Prepared while the table was nearly
    empty, that look-up could keep a plan that scans the whole table, batch after batch, as
    it grew (PostgreSQL's CPU at 1,000 commands/s went from ~630 to ~1,060 µs a command
    and the lag p99 from ~30 ms to ~2 s). Counted: the table's index scans."""
    await cp.command(CreateApp(app="grow"))
    leaf = ca.leaf("*.grow.example.com")
    await add_cert(cp, "grow", [leaf.cert_pem, ca.intermediate.cert_pem], leaf.key_pem)
    conn = await asyncpg.connect(db_url)

    async def scans() -> tuple[int, int]:
        """(sequential, index) scans of router_hosts. A backend reports its counts at most
        once a second, or after ten idle ones, but always when it exits: so router_config's
        backends are ended first (its runner connects again, as after any lost connection)."""
        pids = await conn.fetch(
            "select pid from pg_stat_activity where application_name like"
            " 'certplane-projector-router_config%' and datname = current_database()"
        )
        await conn.execute("select pg_terminate_backend(pid) from unnest($1::int[]) pid",
                           [p[0] for p in pids])  # fmt: skip
        for _ in range(100):
            alive = await conn.fetchval(
                "select count(*) from pg_stat_activity where pid = any($1::int[])",
                [p[0] for p in pids],
            )
            if not alive:
                break
            await asyncio.sleep(0.05)
        return tuple(await conn.fetchrow(  # type: ignore[return-value]
            "select coalesce(sum(seq_scan), 0), coalesce(sum(idx_scan), 0)"
            " from pg_stat_user_tables"
            " where relname = 'router_hosts' and schemaname like 'router_config_g%'"
        ))  # fmt: skip

    async def one_a_batch(name: str, n: int) -> None:
        for i in range(n):  # the projector is waited for: one hostname a batch
            added = await cp.command(AddDomain(app="grow", hostname=f"{name}{i}.grow.example.com"))
            await projected(cp, added.position)

    try:
        await one_a_batch("first", 8)  # the look-up's first runs, on a nearly empty table
        hosts = iter(range(2000))
        for _ in range(40):  # the table grows to 2,000 rows (dozens of pages), fast
            added = await asyncio.gather(*(
                cp.command(AddDomain(app="grow", hostname=f"h{next(hosts)}.grow.example.com"))
                for _ in range(50)
            ))  # fmt: skip
        await projected(cp, max(a.position for a in added))
        batches = 30
        await one_a_batch("then", batches)
        seq, idx = await scans()
        # each of the last batches found its row by the index, however the plan began
        assert idx >= batches, f"{idx} index and {seq} sequential scans for {batches} batches"
    finally:
        await conn.close()


async def test_a_certificate_is_stored_once_for_its_hostnames_and_goes_with_the_last(
    cp, projectors, ca, settings, db_url
) -> None:
    """router_config keeps one chain and sealed key per certificate however many hostnames
    it serves, and deletes them when no hostname is served with them any more: a sealed key
    must not outlive its certificate's removal or update."""
    hosts = ("www.example.com", "api.example.com", "cdn.example.com")
    await cp.command(CreateApp(app="shop"))
    for host in hosts:
        await cp.command(AddDomain(app="shop", hostname=host))
    wild = ca.leaf("*.example.com")
    added = await add_cert(cp, "shop", [wild.cert_pem, ca.intermediate.cert_pem], wild.key_pem)
    conn = await asyncpg.connect(db_url)

    async def stored(position: int) -> tuple[list[str], dict[str, str]]:
        await projected(cp, position)
        schema = await conn.fetchval(
            "select 'router_config_g' || generation from projector_checkpoints"
            " where name = 'router_config'"
        )
        bundles = await conn.fetch(f'select key_id, chain_pem from "{schema}".router_bundles')
        rows = await conn.fetch("select hostname, chain_pem from router_config.router_config")
        return [b[1] for b in bundles], {r[0]: r[1] for r in rows}

    try:
        chains, served = await stored(added.position)
        assert chains == [served["www.example.com"]] and set(served) == set(hosts)
        assert chains[0].startswith(wild.cert_pem.decode())
        removed = await cp.command(RemoveDomain(app="shop", hostname="cdn.example.com"))
        chains, served = await stored(removed.position)
        assert len(chains) == 1 and set(served) == set(hosts[:2])  # still serving two
        newer = ca.leaf("*.example.com")
        updated = await update_cert(
            cp, "shop", [newer.cert_pem, ca.intermediate.cert_pem], newer.key_pem
        )
        chains, served = await stored(updated.position)
        assert len(chains) == 1 and chains[0].startswith(newer.cert_pem.decode())
        assert set(served.values()) == {chains[0]}
        gone = await cp.command(RemoveCert(app="shop"))
        assert await stored(gone.position) == ([], {})
        again = await add_cert(cp, "shop", [wild.cert_pem, ca.intermediate.cert_pem], wild.key_pem)
        assert len((await stored(again.position))[0]) == 1
        destroyed = await cp.command(DestroyApp(app="shop"))
        assert await stored(destroyed.position) == ([], {})
    finally:
        await conn.close()


async def test_a_certificate_whose_data_key_is_gone_is_served_without_a_key_and_says_why(
    cp, projectors, ca, settings, db_url
) -> None:
    """If a served certificate's data key is missing (lost with a restored database, say), a
    rebuild cannot seal its key: routers get the entry without one and the reason, not a
    crash, not a stale key."""
    await cp.command(CreateApp(app="shop"))
    for host in ("www.example.com", "api.example.com"):
        await cp.command(AddDomain(app="shop", hostname=host))
    wild = ca.leaf("*.example.com")
    added = await add_cert(cp, "shop", [wild.cert_pem, ca.intermediate.cert_pem], wild.key_pem)
    before = await router_entries(cp, settings, added.position, "www.example.com")
    assert before["www.example.com"].key is not None
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("delete from data_keys")
    finally:
        await conn.close()
    reply = QUERY_REPLY_DECODER.decode(
        await cp.raw_request(Subjects(settings.prefix).rebuild("router_config"))
    )
    assert isinstance(reply, RebuildStarted)
    for _ in range(300):
        if (await generations(db_url)).get("router_config") == 2:
            break
        await asyncio.sleep(0.05)
    nc = await nats.connect(settings.nats_url)
    try:
        kv = await nc.jetstream().key_value(settings.router_bucket)
        for _ in range(300):  # published by the reconcile after the swap
            entries = [
                msgspec.json.decode((await kv.get(kv_key(h))).value, type=RouterConfigEntry)
                for h in ("www.example.com", "api.example.com")
            ]
            if all(e.key is None for e in entries):
                break
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    assert [e.key for e in entries] == [None, None]
    assert all("private key was destroyed" in e.problem for e in entries)
    assert all(e.chain_pem.startswith(wild.cert_pem.decode()) for e in entries)


async def two_covering_certificates(cp, ca, *names: str):  # type: ignore[no-untyped-def]
    """shop's *.example.com certificate, then a newer one for `names`: (wildcard leaf,
    (older endpoint, newer endpoint))."""
    wild = ca.leaf("*.example.com")
    first = await add_cert(cp, "shop", [wild.cert_pem, ca.intermediate.cert_pem], wild.key_pem)
    leaf = ca.leaf(*names)
    second = await add_cert(cp, "shop", [leaf.cert_pem, ca.intermediate.cert_pem], leaf.key_pem)
    return wild, (first.events[-1].endpoint, second.events[-1].endpoint)


async def router_entries(cp, settings, position: int, *hosts: str) -> dict:  # type: ignore[no-untyped-def]
    """What ROUTER_CONFIG holds for `hosts` once `position` is projected and published."""
    await projected(cp, position)
    await kv_published(settings, position)
    nc = await nats.connect(settings.nats_url)
    try:
        kv = await nc.jetstream().key_value(settings.router_bucket)
        return {
            host: msgspec.json.decode((await kv.get(kv_key(host))).value, type=RouterConfigEntry)
            for host in hosts
        }
    finally:
        await nc.close()


async def test_removing_the_newer_of_two_covering_certificates_keeps_the_hostname_served(
    cp, projectors, ca, settings
) -> None:
    """No outage: the hostname moves to the older certificate, in the KV and the views."""
    await cp.command(CreateApp(app="shop"))
    await cp.command(AddDomain(app="shop", hostname="www.example.com"))
    wild, (older, newer) = await two_covering_certificates(cp, ca, "www.example.com")
    removed = await cp.command(RemoveCert(app="shop", name=newer))
    assert removed.events[-1].reassigned == {"www.example.com": older}
    [entry] = (await router_entries(cp, settings, removed.position, "www.example.com")).values()
    assert entry.endpoint == older and entry.position == removed.position
    assert entry.chain_pem.startswith(wild.cert_pem.decode())
    view = await cp.query("shop", "app")
    assert [(d.hostname, d.endpoint) for d in view.domains] == [("www.example.com", older)]
    assert [e.domains for e in view.endpoints] == [["www.example.com"]]


async def test_an_update_that_drops_a_hostname_moves_it_to_a_certificate_that_covers_it(
    cp, projectors, ca, settings
) -> None:
    await cp.command(CreateApp(app="shop"))
    for host in ("www.example.com", "api.example.com"):
        await cp.command(AddDomain(app="shop", hostname=host))
    wild, (older, newer) = await two_covering_certificates(
        cp, ca, "www.example.com", "api.example.com"
    )
    www = ca.leaf("www.example.com")
    updated = await update_cert(
        cp, "shop", [www.cert_pem, ca.intermediate.cert_pem], www.key_pem, name=newer
    )
    assert updated.events[-1].reassigned == {"api.example.com": older}
    served = await router_entries(
        cp, settings, updated.position, "www.example.com", "api.example.com"
    )
    assert served["api.example.com"].endpoint == older
    assert served["api.example.com"].chain_pem.startswith(wild.cert_pem.decode())
    assert served["www.example.com"].chain_pem.startswith(www.cert_pem.decode())
    view = await cp.query("shop", "app")
    assert {e.name: e.domains for e in view.endpoints} == {
        older: ["api.example.com"],
        newer: ["www.example.com"],
    }


async def test_a_wiped_bucket_is_repopulated(cp, ca, settings, gateway) -> None:
    from services.projectors.service import run_projectors

    async def run_for_a_while() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_projectors(settings, ["router_config"], stop))
        await asyncio.sleep(0)
        return stop, task  # type: ignore[return-value]

    stop, task = await run_for_a_while()
    await cp.command(CreateApp(app="shop"))
    for host in ("a.example.com", "b.example.com", "*.example.com"):
        await cp.command(AddDomain(app="shop", hostname=host))
    c = ca.leaf("*.example.com", "a.example.com")
    last = (
        await add_cert(cp, "shop", [c.cert_pem, ca.intermediate.cert_pem], c.key_pem, bypass=True)
    ).position
    for _ in range(200):
        if len(await kv_revisions(settings)) == 3:
            break
        await asyncio.sleep(0.05)
    published = {k: v for k, (_, v) in (await kv_revisions(settings)).items()}
    assert set(published) == {"a.example.com", "b.example.com", "_.example.com"}
    stop.set()
    await task
    nc = await nats.connect(settings.nats_url)
    await nc.jetstream().delete_key_value(settings.router_bucket)
    await nc.close()
    stop, task = await run_for_a_while()  # a restart heals the bucket
    try:
        for _ in range(200):
            if {k: v for k, (_, v) in (await kv_revisions(settings)).items()} == published:
                break
            await asyncio.sleep(0.05)
        assert {k: v for k, (_, v) in (await kv_revisions(settings)).items()} == published
        nc = await nats.connect(settings.nats_url)
        kv = await nc.jetstream().key_value(settings.router_bucket)
        checkpoint = msgspec.json.decode(
            (await kv.get(CHECKPOINT_KEY)).value, type=ConfigCheckpoint
        )
        await nc.close()
        assert checkpoint.position >= last, "routers would not know which position they serve"
    finally:
        stop.set()
        await task
        nc = await nats.connect(settings.nats_url)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_key_value(settings.router_bucket)
        await nc.close()


async def poison(db_url: str) -> int:
    """Append an event this code cannot read, as a superuser would (bypassing the gateway)."""
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            head = await conn.fetchrow("select position, hash from log_head for update")
            position = head[0] + 1
            await conn.execute(
                "insert into events (position, stream_id, stream_version, event_id, command_id,"
                " command_index, type, schema_version, data, metadata, recorded_at, prev_hash, hash)"
                " values ($1, 'app-poison', 1, $2, $3, 0, 'domain.added', 1,"
                " '{\"type\": \"domain.added\"}', '{}', now(), $4, $4)",
                position, uuid.uuid4(), uuid.uuid4(), head[1],
            )  # fmt: skip
            await conn.execute("update log_head set position = $1", position)
        return position
    finally:
        await conn.close()


async def test_a_poison_event_stops_each_projector_until_an_audited_skip(
    cp, projectors, db_url
) -> None:
    first = await cp.command(CreateApp(app="before"))
    await projected(cp, first.position)
    bad = await poison(db_url)
    for _ in range(200):
        view = await cp.query(None, "projections")
        if all(p.state == "stopped" for p in view.projections):
            break
        await asyncio.sleep(0.05)
    assert isinstance(view, ProjectionsView)
    # the sealer too: a row whose hash does not chain is never signed
    everyone = (*PROJECTIONS, "sealer")
    assert {p.name: p.state for p in view.projections} == dict.fromkeys(everyone, "stopped")
    assert all(f"dead letter at position {bad}" in p.detail for p in view.projections)
    after = await cp.command(CreateApp(app="after"))
    assert isinstance(after, Accepted)  # commands still work; the read side waits

    refused = await cp.command(
        SkipProjection(projection="audit", position=bad + 100, reason="typo")
    )
    assert refused.code == "no_dead_letter"
    for name in PROJECTIONS:
        reply = await cp.command(
            SkipProjection(projection=name, position=bad, reason="hand-written test event")
        )
        assert isinstance(reply, Accepted), reply
    await projected(cp, reply.position)
    apps = await cp.query(None, "apps")
    assert [a.name for a in apps.apps] == ["after", "before"]
    conn = await asyncpg.connect(db_url)
    skipped = await conn.fetch(
        "select object, actor from audit.audit_log where action = 'projection.skipped'"
    )
    await conn.close()
    assert sorted(r[0] for r in skipped) == sorted(PROJECTIONS)
    assert {r[1] for r in skipped} == {"test@certplane"}


async def test_the_audit_log_keeps_each_event_s_time_to_the_microsecond(
    cp, projectors, ca, db_url
) -> None:
    """The audit projection encodes timestamps itself (`AuditProjection.configure`)."""
    last = await busy_history(cp, ca)
    await projected(cp, last)
    conn = await asyncpg.connect(db_url)
    try:
        pairs = await conn.fetch(
            "select e.recorded_at, a.recorded_at from events e"
            " left join audit.audit_log a using (position) where e.position <= $1",
            last,
        )
    finally:
        await conn.close()
    assert len(pairs) == last and all(logged == audited for logged, audited in pairs)
    assert any(logged.microsecond for logged, _ in pairs)  # sub-second parts were compared


async def test_projections_are_sent_only_the_envelope_fields_they_read(cp, db_url) -> None:
    import inspect

    from services.projectors import audit, certificates, dns_targets, router_config, store
    from services.projectors.app_states import APP_EVENT_TYPES
    from services.storage.event_log import ENVELOPE_COLUMNS, NO_METADATA, UNREAD_AT

    await cp.command(CreateApp(app="meta"))
    reply = await cp.command(AddDomain(app="meta", hostname="www.meta.test"))
    conn = await asyncpg.connect(db_url)
    try:
        full = await store.read_after(conn, 0, 10, APP_EVENT_TYPES)
        bare = await store.read_after(conn, 0, 10, APP_EVENT_TYPES, frozenset())
        when = await store.read_after(conn, 0, 10, None, frozenset({"recorded_at"}))
    finally:
        await conn.close()
    assert [r[0] for r in bare] == [r[0] for r in full] == list(range(1, reply.position + 1))
    envelope = [3, 4, 5, 9, 10]  # event id, command id and index, metadata, recorded_at
    assert all(r[i] is None for r in bare for i in envelope)
    assert all(r[i] is not None for r in full if r[8] for i in envelope)
    assert [store.decode(r).event for r in bare if r[8]] == [
        store.decode(r).event for r in full if r[8]
    ]
    for e in (store.decode(r) for r in bare if r[8]):
        assert (e.event_id, e.command_id, e.metadata, e.recorded_at) == (
            "", "", NO_METADATA, UNREAD_AT
        )  # fmt: skip
    # the hostname's claim is no app event: of it only the position comes, nothing to parse
    unwanted = [r for r in full if r[8] is None]
    assert unwanted and all(set(r[1:]) == {None} for r in unwanted)
    assert {store.decode(r).metadata.actor for r in full if r[8]} == {"test@certplane"}
    # without a type filter every row comes whole, but for the fields not read
    assert len(when) == len(full) and all(r["data"] and r["recorded_at"] for r in when)
    assert all(r["event_id"] is None and r["metadata"] is None for r in when)
    # a projection reads no envelope field it does not declare: it would get blanks
    for module, projection in ((certificates, certificates.CertificatesProjection),
                               (dns_targets, dns_targets.DnsTargetsProjection),
                               (router_config, router_config.RouterConfigProjection),
                               (audit, audit.AuditProjection)):  # fmt: skip
        source = inspect.getsource(module)
        unread = set(ENVELOPE_COLUMNS) - projection.envelope
        assert unread and not [f for f in unread if f".{f}" in source], module


async def test_a_new_projection_version_rebuilds_and_an_older_instance_does_not_lead(
    cp, gateway, ca, db_url, caplog: pytest.LogCaptureFixture
) -> None:
    """Upgrading a projection whose rows changed meaning rebuilds it on the first lead, the
    old rows serving meanwhile; an instance of the previous release then stands by instead
    of writing old-style rows into the new tables."""
    from services.projectors.certificates import CertificatesProjection

    head = await busy_history(cp, ca)
    conn = await asyncpg.connect(db_url)

    def runner(version: int) -> ProjectorRunner:
        projection = CertificatesProjection()
        projection.name = "certificates_v"
        projection.version = version  # type: ignore[misc]
        return ProjectorRunner(projection, db_url, poll_interval=0.1, instance=f"v{version}")

    async def checkpoint() -> tuple[int, int, int]:
        row = await conn.fetchrow(
            "select generation, version, position from projector_checkpoints where name = $1",
            "certificates_v",
        )
        return tuple(row) if row else (0, 0, 0)  # type: ignore[return-value]

    async def rows() -> list[tuple[str, ...]]:
        got = await conn.fetch("select * from certificates_v.endpoints")
        return sorted(tuple(str(v) for v in r.values()) for r in got)

    try:
        await run_until(runner(1), lambda: _equal(checkpoint(), (1, 1, head)))
        built_by_1 = await rows()
        with caplog.at_level(logging.WARNING, logger="certplane.projector"):
            await run_until(runner(2), lambda: _equal(checkpoint(), (2, 2, head)))
        assert "built by version 1 of this projection, this is version 2" in caplog.text
        assert await rows() == built_by_1  # this history has no legacy endpoint to differ

        older = runner(1)
        await run_until(
            older,
            lambda: _true_async(
                conn.fetchval(
                    "select detail from projector_status where name = $1 and instance = 'v1'",
                    "certificates_v",
                ),
                lambda d: bool(d) and "built by version 2" in d and "upgrade it" in d,
            ),
        )
        assert older.position == 0 and await checkpoint() == (2, 2, head)
        again = runner(2)
        await run_until(again, lambda: _true(again.position == head))
        assert await checkpoint() == (2, 2, head)  # the same version leads without a rebuild
    finally:
        await conn.close()


class Positions:
    """A projection of the positions it saw, whose version 2 keeps them in another table."""

    name = "shaped"
    tables = ("seen",)
    event_types = None

    def __init__(self, version: int, fail_once: bool = False) -> None:
        self.version, self.fail_once = version, fail_once

    def ddl(self, schema: str) -> list[str]:
        table = "seen (position bigint)" if self.version == 1 else "positions (p bigint)"
        return [f'create table "{schema}".{table}']

    def views(self, schema: str) -> dict[str, str]:
        if self.version == 1:
            return {"seen": f'select * from "{schema}".seen'}
        return {"seen": f'select p as position from "{schema}".positions'}

    async def apply(self, conn, schema, events, through) -> None:  # type: ignore[no-untyped-def]
        if self.fail_once:
            self.fail_once = False
            raise RuntimeError("a bug in version 2, fixed by retrying")
        table = "seen" if self.version == 1 else "positions"
        await conn.executemany(
            f'insert into "{schema}".{table} values ($1)', [(e.position,) for e in events]
        )

    async def after_commit(self, conn, schema) -> None:  # type: ignore[no-untyped-def]
        pass

    async def reconcile(self, conn, schema) -> None:  # type: ignore[no-untyped-def]
        pass

    def reset(self) -> None:
        pass


async def test_an_upgrade_to_other_tables_rebuilds_before_touching_the_old_ones(
    cp, gateway, ca, db_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 2 of a projection keeps its rows in tables version 1 never had: the leader
    must not point the views at, write or reconcile the old generation with the new code;
    it rebuilds (again after a failure), while the old rows serve."""
    from services.projectors import runner as runner_module

    monkeypatch.setattr(runner_module, "UPGRADE_RETRY_S", 0.2)
    head = await busy_history(cp, ca)
    conn = await asyncpg.connect(db_url)

    def shaped(projection: Positions) -> ProjectorRunner:
        return ProjectorRunner(projection, db_url, poll_interval=0.1, rebuild_batch=50)

    async def state() -> tuple[int, int, int, list[int]]:
        row = await conn.fetchrow(
            "select generation, version, position from projector_checkpoints where name = 'shaped'"
        )
        if row is None or not await conn.fetchval("select to_regclass('shaped.seen')"):
            return (0, 0, 0, [])
        seen = [r[0] for r in await conn.fetch("select position from shaped.seen order by 1")]
        return (*row, seen)  # type: ignore[return-value]

    everything = list(range(1, head + 1))
    try:
        await run_until(shaped(Positions(1)), lambda: _equal(state(), (1, 1, head, everything)))
        upgrade = Positions(2, fail_once=True)
        await run_until(shaped(upgrade), lambda: _equal(state(), (2, 2, head, everything)))
        assert not upgrade.fail_once  # the first attempt failed, the old rows served meanwhile
        assert await conn.fetchval("select count(*) from shaped_g2.positions") == head
        assert not await conn.fetchval("select 1 from pg_namespace where nspname = 'shaped_g1'")
    finally:
        await conn.close()


async def run_until(r: ProjectorRunner, check) -> None:  # type: ignore[no-untyped-def]
    """Run `r` until `check()` holds (a runner that crashes says why); then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(r.run(stop))
    try:
        for _ in range(300):
            if task.done():
                task.result()
            if await check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("timed out")
    finally:
        stop.set()
        await task


async def _true_async(awaitable, predicate) -> bool:  # type: ignore[no-untyped-def]
    return bool(predicate(await awaitable))


async def test_the_endpoints_view_lists_the_domains_each_endpoint_serves(
    cp, projectors, ca, db_url
) -> None:
    """The view derives each endpoint's domains from the domain rows: they must be those the
    aggregate's `served_by` lists (a legacy SSL Endpoint: its own and every domain no SNI
    endpoint claims), in the same order."""
    from functools import reduce

    from events.endpoint import EndpointType
    from events.replies import AppView
    from services.domain.app import AppState, evolve
    from services.storage.event_log import STORED_COLUMNS, stored_event

    app = "lists"
    await cp.command(CreateApp(app=app))
    for host in ("b.lists.test", "a.lists.test", "z.other.test", "www.lists.test"):
        await cp.command(AddDomain(app=app, hostname=host))
    old = ca.leaf("z.other.test")
    chain = [ca.intermediate.cert_pem]
    await add_cert(cp, app, [old.cert_pem, *chain], old.key_pem, domains=["z.other.test"],
                   endpoint_type=EndpointType.ENDPOINT)  # fmt: skip
    wild = ca.leaf("*.lists.test")
    await add_cert(cp, app, [wild.cert_pem, *chain], wild.key_pem,
                   domains=["a.lists.test", "b.lists.test"])  # fmt: skip
    await cp.command(AddDomain(app=app, hostname="c.lists.test"))  # the wildcard takes it
    await cp.command(AddDomain(app=app, hostname="q.other.test"))  # no SNI endpoint covers it
    last = (await cp.command(RemoveDomain(app=app, hostname="b.lists.test"))).position
    await projected(cp, last)
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            f"select {STORED_COLUMNS} from events where stream_id = $1 order by stream_version",
            f"app-{app}",
        )
    finally:
        await conn.close()
    state = reduce(evolve, [stored_event(r).event for r in rows], AppState(name=app))  # type: ignore[arg-type]
    view = await cp.query(app, "app")
    assert isinstance(view, AppView), view
    listed = {e.name: e.domains for e in view.endpoints}
    assert listed == {name: state.served_by(name) for name in state.endpoints}
    assert sorted(listed.values()) == [
        ["a.lists.test", "c.lists.test"],
        ["q.other.test", "www.lists.test", "z.other.test"],
    ]
