"""A gateway killed with SIGKILL under load loses no acknowledged command."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from events.app import CreateApp
from events.replies import Accepted
from services.cli.client import ControlPlane
from services.domain.errors import Unavailable
from tests.e2e.conftest import ServiceProcess, wait_for_gateway
from tests.integration.helpers import fetch


@pytest.mark.slow
async def test_sigkill_mid_load_loses_no_acknowledged_command(
    settings, gateway_process: ServiceProcess, tmp_path
) -> None:
    acknowledged: dict[str, int] = {}
    sent: list[str] = []

    async def client(cp: ControlPlane, worker: int) -> None:
        for i in range(60):
            command_id = str(uuid.uuid4())
            sent.append(command_id)
            while True:  # a client retries with the same id until it gets an answer
                try:
                    reply = await cp.command(
                        CreateApp(app=f"w{worker:02d}-{i:03d}"), command_id=command_id
                    )
                    break
                except Unavailable:
                    await asyncio.sleep(0.1)
            assert isinstance(reply, Accepted), reply
            acknowledged[command_id] = reply.position

    async with ControlPlane(settings.nats_url, settings.prefix, timeout=1.0, retries=1) as cp:
        load = asyncio.gather(*(client(cp, w) for w in range(16)))
        while len(acknowledged) < 150:  # noqa: ASYNC110 (polling a plain dict is the point)
            await asyncio.sleep(0.01)
        gateway_process.kill()  # mid-load: requests are in flight right now
        killed_at = len(acknowledged)
        await asyncio.sleep(0.5)
        restarted = ServiceProcess(settings, ["gateway"], tmp_path / "gateway2.log").start()
        await asyncio.to_thread(wait_for_gateway, settings)
        await load
        restarted.stop()

    assert killed_at < 16 * 60
    rows = await fetch(
        settings.database_url, "select command_id::text, position from events order by position"
    )
    logged = {r[0]: r[1] for r in rows}
    assert len(rows) == len(logged) == 16 * 60  # every command exactly once
    for command_id, position in acknowledged.items():
        assert logged[command_id] == position  # each ack names the position the log holds
