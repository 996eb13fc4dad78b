"""`certplane projector [NAME...]`: run projections, each with its own leader election."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from events.codec import encode
from events.replies import RebuildStarted
from services.audit.keys import load_signing_key
from services.bus import connect_nats
from services.config import ConfigError, Settings
from services.domain.writer_mac import writer_key
from services.gateway.key_custody import load_master_key
from services.health import add_readiness_check
from services.projectors.audit import AuditProjection
from services.projectors.certificates import CertificatesProjection
from services.projectors.dns_targets import DnsTargetsProjection
from services.projectors.names import NAMES
from services.projectors.projection import Projection
from services.projectors.router_config import RouterConfigProjection
from services.projectors.runner import ProjectorRunner, State
from services.projectors.sealer import SealerProjection
from services.router_key import router_public_key
from services.storage.database import require_schema, service_pool
from services.subjects import Subjects

log = logging.getLogger("certplane.projector")


# How to spread the projectors over processes when latency matters (`certplane dev`,
# compose.yaml): router_config alone, the rest together. In one process they share one core,
# and at 1,000 commands/s on two cores router_config's lag p99 was 1.4-1.8 s; alone it was
# 0.1-0.2 s (bench/RESULTS.md). `certplane projector` with no names still runs all in one.
PROCESS_GROUPS = (("router_config",), tuple(n for n in NAMES if n != "router_config"))


async def router_bucket(nc: NATS, name: str) -> KeyValue:
    js = nc.jetstream()
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        return await js.create_key_value(
            bucket=name, history=1, description="certplane router config"
        )


def _rebuild_handler(runner: ProjectorRunner):  # type: ignore[no-untyped-def]
    async def handle(msg) -> None:  # type: ignore[no-untyped-def]
        if runner.request_rebuild() and msg.reply:
            await msg.respond(
                encode(RebuildStarted(projection=runner.name, instance=runner.instance))
            )

    return handle


def build(name: str, settings: Settings, kv: KeyValue | None, nc: NATS | None = None) -> Projection:
    match name:
        case "certificates":
            return CertificatesProjection()
        case "dns_targets":
            return DnsTargetsProjection(settings.dns_zone)
        case "audit":
            return AuditProjection()
        case "router_config":
            return RouterConfigProjection(
                load_master_key(settings), router_public_key(settings), kv
            )
        case "sealer":
            return SealerProjection(
                load_signing_key(settings),
                nc,
                Subjects(settings.prefix).audit_checkpoints(),
                writer_key=writer_key(load_master_key(settings).secret),
                every=settings.audit_seal_every,
                seconds=settings.audit_seal_seconds,
            )
    raise ValueError(f"unknown projection {name!r}: choose from {', '.join(NAMES)}")


async def run_projectors(settings: Settings, names: list[str], stop: asyncio.Event) -> None:
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ConfigError(
            f"unknown projection(s) {', '.join(unknown)}: choose from {', '.join(NAMES)}"
        )
    chosen = names or list(NAMES)
    pool = await service_pool(settings.database_url, settings.service_role, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await require_schema(conn, settings.database_url)
    finally:
        await pool.close()
    nc = await connect_nats(settings.nats_url, "certplane-projector")
    try:
        kv = await router_bucket(nc, settings.router_bucket) if "router_config" in chosen else None
        runners = [
            ProjectorRunner(
                build(n, settings, kv, nc), settings.database_url, role=settings.service_role
            )
            for n in chosen
        ]
        subjects = Subjects(settings.prefix)
        for runner in runners:
            await nc.subscribe(subjects.rebuild(runner.name), cb=_rebuild_handler(runner))
        add_readiness_check(
            lambda: (
                "; ".join(f"projection {r.name} failed" for r in runners if r.state is State.FAILED)
                or None
            )
        )
        log.info("projectors starting: %s", ", ".join(chosen))
        await asyncio.gather(*(r.run(stop) for r in runners))
    finally:
        await nc.drain()
