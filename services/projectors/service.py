"""`certplane projector [NAME...]`: run projections, each with its own leader election."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from pathlib import Path

import nats
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from nats.js.errors import BucketNotFoundError

from events.codec import encode
from events.replies import RebuildStarted
from services.config import Settings
from services.domain.key_envelope import public_bytes
from services.gateway.key_custody import load_master_key
from services.gateway.service import connect_nats
from services.projectors.audit import AuditProjection
from services.projectors.certificates import CertificatesProjection
from services.projectors.dns_targets import DnsTargetsProjection
from services.projectors.projection import Projection
from services.projectors.router_config import RouterConfigProjection
from services.projectors.runner import ProjectorRunner
from services.subjects import Subjects

log = logging.getLogger("certplane.projector")

NAMES = ("certificates", "dns_targets", "router_config", "audit")


def load_router_private_key(settings: Settings, *, create: bool = False) -> X25519PrivateKey:
    """The routers' key (the operator gives it to every router); created 0600 when `create`."""
    path = Path(settings.router_key_file)
    if not path.exists():
        if not create:
            raise FileNotFoundError(
                f"no router key: create {path} (`certplane dev` does) or set CERTPLANE_ROUTER_PUBLIC_KEY"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        key = X25519PrivateKey.generate()
        raw = key.private_bytes_raw()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(raw).decode() + "\n")
        return key
    return X25519PrivateKey.from_private_bytes(base64.b64decode(path.read_text().strip()))


def router_public_key(settings: Settings) -> bytes:
    if settings.router_public_key:
        return base64.b64decode(settings.router_public_key)
    return public_bytes(load_router_private_key(settings).public_key())


async def router_bucket(nc: nats.NATS, name: str):  # type: ignore[no-untyped-def]
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


def build(name: str, settings: Settings, kv: object) -> Projection:
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
            )  # type: ignore[arg-type]
    raise ValueError(f"unknown projection {name!r}: choose from {', '.join(NAMES)}")


async def run_projectors(settings: Settings, names: list[str], stop: asyncio.Event) -> None:
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(
            f"unknown projection(s) {', '.join(unknown)}: choose from {', '.join(NAMES)}"
        )
    chosen = names or list(NAMES)
    nc = await connect_nats(settings.nats_url, "certplane-projector")
    try:
        kv = await router_bucket(nc, settings.router_bucket) if "router_config" in chosen else None
        runners = [
            ProjectorRunner(
                build(n, settings, kv), settings.database_url, role=settings.service_role
            )
            for n in chosen
        ]
        subjects = Subjects(settings.prefix)
        for runner in runners:
            await nc.subscribe(subjects.rebuild(runner.name), cb=_rebuild_handler(runner))
        log.info("projectors starting: %s", ", ".join(chosen))
        await asyncio.gather(*(r.run(stop) for r in runners))
    finally:
        await nc.drain()
