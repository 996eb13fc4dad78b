"""Projector processes as an operator runs them: killed at random, run twice, rebuilt."""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg
import pytest

from events.app import CreateApp
from events.domain import AddDomain, RemoveDomain
from events.endpoint import RemoveCert
from events.replies import Accepted, Checkpoints
from services.cli.client import ControlPlane
from services.projectors.service import NAMES
from services.subjects import Subjects
from tests.conftest import projected
from tests.e2e.conftest import ServiceProcess
from tests.integration.helpers import add_cert, update_cert
from tests.integration.test_projections import PROJECTIONS, generations, snapshot


async def stream_commands(cp: ControlPlane, ca, stop: asyncio.Event) -> int:
    """Every kind of change, over and over, until `stop`; returns the last position."""
    leaves = [ca.leaf(f"*.a{i}.example.com") for i in range(3)]
    last, i = 0, 0
    while not stop.is_set():
        app = f"app-{i:04d}"
        leaf = leaves[i % 3]
        replies = [
            await cp.command(CreateApp(app=app)),
            await cp.command(AddDomain(app=app, hostname=f"www.{app}.example.com")),
            await cp.command(AddDomain(app=app, hostname=f"x.a{i % 3}.example.com"))
            if i < 3
            else await cp.command(AddDomain(app=app, hostname=f"api.{app}.example.com")),
            await add_cert(
                cp, app, [leaf.cert_pem, ca.intermediate.cert_pem], leaf.key_pem, bypass=True
            ),
        ]
        if i % 2:
            replies.append(
                await update_cert(cp, app, [leaf.cert_pem, ca.intermediate.cert_pem], leaf.key_pem)
            )
        if i % 3 == 0:
            replies.append(
                await cp.command(RemoveDomain(app=app, hostname=f"www.{app}.example.com"))
            )
        if i % 5 == 0:
            replies.append(await cp.command(RemoveCert(app=app)))
        last = max(r.position for r in replies if isinstance(r, Accepted))
        i += 1
    return last


async def rebuild_all(cp: ControlPlane, settings, db_url: str, target: int) -> None:
    subjects = Subjects(settings.prefix)
    for name in PROJECTIONS:
        for _ in range(100):  # the leader may still be electing itself after a restart
            try:
                await cp.raw_request(subjects.rebuild(name))
                break
            except Exception:
                await asyncio.sleep(0.1)
    for _ in range(600):
        if set((await generations(db_url)).values()) == {target}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"rebuild did not finish: {await generations(db_url)}")


@pytest.mark.slow
async def test_sigkill_at_random_points_then_equal_to_a_clean_rebuild(
    settings, gateway_process, ca, tmp_path
) -> None:
    rng = random.Random(20261126)
    projector = ServiceProcess(settings, ["projector"], tmp_path / "p0.log").start()
    async with ControlPlane(settings.nats_url, settings.prefix, actor="load@test") as cp:
        stop = asyncio.Event()
        load = asyncio.create_task(stream_commands(cp, ca, stop))
        for round_ in range(8):
            await asyncio.sleep(rng.uniform(0.2, 0.9))
            projector.kill()  # anywhere: mid-batch, mid-commit, mid-publish
            projector = ServiceProcess(
                settings, ["projector"], tmp_path / f"p{round_ + 1}.log"
            ).start()
        await asyncio.sleep(0.5)
        stop.set()
        last = await load
        await projected(cp, last, within=60)
        before = await snapshot(settings.database_url)
        assert len(before["certificates.apps"]) > 10
        await rebuild_all(cp, settings, settings.database_url, 2)
        await projected(cp, last, within=60)
        after = await snapshot(settings.database_url)
    for view in before:
        assert after[view] == before[view], view
    projector.stop()


def _leader_pids(rows: list[asyncpg.Record]) -> set[int]:
    return {int(r["instance"].split(":")[1]) for r in rows if r["state"] == "running"}


async def _status(db_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(
            await conn.fetch(
                "select name, instance, state from projector_status"
                " where heartbeat_at > now() - interval '3 seconds'"
            )
        )
    finally:
        await conn.close()


@pytest.mark.slow
async def test_a_standby_takes_over_within_seconds_of_the_leaders_death(
    settings, gateway_process, tmp_path
) -> None:
    first = ServiceProcess(settings, ["projector"], tmp_path / "first.log").start()
    async with ControlPlane(settings.nats_url, settings.prefix) as cp:
        await projected(cp, (await cp.command(CreateApp(app="one"))).position)
        second = ServiceProcess(settings, ["projector"], tmp_path / "second.log").start()
        for _ in range(100):
            rows = await _status(settings.database_url)
            if sum(r["state"] == "standby" for r in rows) == len(NAMES):
                break
            await asyncio.sleep(0.1)
        assert _leader_pids(rows) == {first.proc.pid}  # one leader, the other waits
        assert {r["name"] for r in rows if r["state"] == "running"} == set(NAMES)
        first.kill()
        killed_at = time.monotonic()
        position = (await cp.command(CreateApp(app="two"))).position
        await projected(cp, position, within=10)
        took = time.monotonic() - killed_at
        reply = await cp.query(None, "checkpoints")
        assert isinstance(reply, Checkpoints)
        assert took < 5.0, f"the standby needed {took:.1f}s"
        rows = await _status(settings.database_url)
        led_by_second = {
            r["name"]
            for r in rows
            if r["state"] == "running" and int(r["instance"].split(":")[1]) == second.proc.pid
        }
        assert led_by_second == set(NAMES)
        apps = await cp.query(None, "apps")
        assert [a.name for a in apps.apps] == ["one", "two"]
    second.stop()
