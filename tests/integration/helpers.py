"""Helpers for tests that drive the control plane through its NATS contract."""

from __future__ import annotations

import asyncpg

from events.endpoint import AddCert, EndpointType, UpdateCert
from services.cli.client import ControlPlane
from services.domain.key_envelope import seal_for_gateway


async def add_cert(
    cp: ControlPlane,
    app: str,
    certificates: list[bytes],
    key: bytes,
    *,
    domains: list[str] | None = None,
    endpoint_type: EndpointType = EndpointType.SNI,
    bypass: bool = False,
    command_id: str | None = None,
):
    gateway = await cp.gateway_key()
    command = AddCert(
        app=app,
        certificates=certificates,
        key=seal_for_gateway(key, gateway.public_key),
        domains=domains or [],
        endpoint_type=endpoint_type,
        bypass=bypass,
    )
    return await cp.command(command, command_id=command_id)


async def update_cert(
    cp: ControlPlane, app: str, certificates: list[bytes], key: bytes, name: str | None = None
):
    gateway = await cp.gateway_key()
    command = UpdateCert(
        app=app, certificates=certificates, key=seal_for_gateway(key, gateway.public_key), name=name
    )
    return await cp.command(command)


async def count_events(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval("select count(*) from events"))
    finally:
        await conn.close()


async def fetch(db_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()
