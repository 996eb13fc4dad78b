"""An experiment, not a gateway: the least a gateway can spend on CreateApp and AddDomain.

It does the real work of the command path with the product's own code (decode the
envelope, `decide`, the events and their metadata, sealing and packing them, the append
function, the reply) and nothing else: no task per command, no per-app lock, no retries,
no idempotency look-ups, no announcements to other gateways, no spans, one batch in flight
taking at most half of what waits (as the group commit does). Run through
`bench/cpu_per_command.py --gateway-command bench/lean_gateway.py`, it bounds what a
restructured hot path could reach (bench/RESULTS.md, session 17): what the real gateway
spends above it is its machinery. States are cached optimistically (a conflict is only
reported), so it must never face more than one client per app or another gateway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from events.codec import COMMAND_DECODER, encode
from events.replies import Accepted, Rejected
from services.bus import connect_nats
from services.config import Settings
from services.domain import app as app_aggregate
from services.domain.app import AppState, HostnameState
from services.domain.errors import Rejected as RejectedError
from services.domain.ids import random_uuid
from services.domain.streams import app_stream, hostname_stream
from services.domain.writer_mac import writer_key
from services.gateway.handler import _metadata
from services.gateway.key_custody import load_master_key
from services.runner import tune_gc
from services.storage.database import service_pool
from services.storage.event_log import (
    AppendRequest,
    AppendResult,
    AppendStatus,
    NewEvent,
    PostgresEventLog,
)

MIN_BATCH = 32


def decide_one(
    data: bytes, cache: dict[str, tuple[int, Any]], ids: random.Random, now: dt.datetime
) -> tuple[AppendRequest, Any, str, int]:
    """One command, decided on `cache` (updated optimistically): its append request, the
    decision, its app's stream and the app's version after it. Raises `Rejected`."""
    envelope = COMMAND_DECODER.decode(data)
    command = envelope.command
    app = app_stream(command.app)
    app_version, app_state = cache.get(app) or (0, AppState(name=command.app))
    states: dict[str, Any] = {app: app_state}
    versions = {app: app_version}
    hosts = {}
    for host in app_aggregate.related_hostnames(app_state, command):
        stream = hostname_stream(host)
        versions[stream], states[stream] = cache.get(stream) or (0, HostnameState(hostname=host))
        hosts[host] = states[stream]
    decision = app_aggregate.decide(app_state, hosts, command, now=now, seed=envelope.id, cert=None)
    metadata = _metadata(envelope, "", decision.warnings)
    events = [NewEvent(st, e, metadata, random_uuid(ids)) for st, e in decision.events]
    after = dict(versions)
    for stream, event in decision.events:
        fold = app_aggregate.evolve if stream == app else app_aggregate.evolve_hostname
        states[stream] = fold(states[stream], event)  # type: ignore[operator]
        after[stream] += 1
        cache[stream] = (after[stream], states[stream])
    request = AppendRequest(command_id=envelope.id, expected=versions, events=events)
    return request, decision, app, after[app]


def reply_to(decision: Any, app: str, version: int, result: AppendResult) -> Any:
    if result.status is not AppendStatus.OK:
        return Rejected(code="conflict", message=str(result))
    return Accepted(stream=app, version=version, position=max(result.positions),
                    events=[e for _, e in decision.events], warnings=decision.warnings)  # fmt: skip


async def main() -> None:
    tune_gc()
    s = Settings.from_env()
    master = load_master_key(s)
    pool = await service_pool(s.database_url, s.service_role, min_size=2, max_size=4)
    log = PostgresEventLog(pool, url=s.database_url, writer_key=writer_key(master.secret))
    nc = await connect_nats(s.nats_url, "lean-gateway", no_echo=True)
    cache: dict[str, tuple[int, Any]] = {}
    inbox: list[Any] = []
    decided: list[tuple[AppendRequest, Any, Any, str, int]] = []
    arrived, ready = asyncio.Event(), asyncio.Event()
    ids = random.Random()

    async def take(msg: Any) -> None:
        inbox.append(msg)
        arrived.set()

    async def gateway_key(msg: Any) -> None:  # what cpu_per_command waits for
        await msg.respond(b'{"type":"GatewayKey","key_id":"lean","public_key":""}')

    async def append() -> None:
        while True:
            await ready.wait()
            ready.clear()
            share = max(MIN_BATCH, -(-len(decided) // 2))
            batch, decided[:] = decided[:share], decided[share:]
            if not batch:
                continue
            results = await log.append_batch([b[0] for b in batch])
            for (_, msg, decision, app, version), result in zip(batch, results, strict=True):
                await msg.respond(encode(reply_to(decision, app, version, result)))
            if decided:
                ready.set()

    await nc.subscribe(f"{s.prefix}.cmd.>", queue="gateways", cb=take)
    await nc.subscribe(f"{s.prefix}.query._.gateway-key", cb=gateway_key)
    await nc.flush()
    appender = asyncio.create_task(append())
    while not appender.done():
        await arrived.wait()
        arrived.clear()
        messages, inbox[:] = inbox[:], []
        now = dt.datetime.now(dt.UTC)
        for msg in messages:
            try:
                request, decision, app, version = decide_one(msg.data, cache, ids, now)
            except RejectedError as e:
                await msg.respond(encode(Rejected(code=e.code, message=e.message)))
                continue
            decided.append((request, msg, decision, app, version))
        ready.set()
    await appender


if __name__ == "__main__":
    asyncio.run(main())
