"""Fixtures shared by every tier: real PostgreSQL and NATS, isolated per test.

The servers are the configured ones (CERTPLANE_DATABASE_URL / CERTPLANE_NATS_URL, by
default 127.0.0.1:5432 and :4222) or, where those do not answer, embedded ones started
once for the session. Each test gets its own database (a copy of a migrated template) and
its own NATS subject prefix, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.cli.client import ControlPlane
from services.config import Settings
from services.devcerts import DevCA
from services.domain.key_envelope import MasterKey
from services.embedded import servers_for
from services.storage.database import _with_database, ensure_database

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def servers() -> Iterator[Settings]:
    # Not under pytest's numbered temporary directories: another pytest run on the machine
    # rotates those away (it keeps the last three), embedded servers' data and sockets with
    # them, mid-run (seen: a test run beside CI's embedded pass failed 150 of its tests).
    given = os.environ.get("CERTPLANE_TEST_STATE_DIR")
    with contextlib.ExitStack() as stack:
        state = Path(
            given
            or stack.enter_context(tempfile.TemporaryDirectory(prefix="certplane-test-state-"))
        )
        with servers_for(Settings.from_env(), state) as settings:
            yield settings


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(_with_database(url, "postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(servers: Settings) -> Iterator[str]:
    name = f"cp_template_{secrets.token_hex(4)}"
    url = _with_database(servers.database_url, name)
    asyncio.run(ensure_database(url))
    yield name
    asyncio.run(_admin(url, f'drop database if exists "{name}" with (force)'))


@pytest.fixture
def db_url(servers: Settings, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test only."""
    name = f"cp_test_{secrets.token_hex(6)}"
    url = _with_database(servers.database_url, name)
    asyncio.run(_admin(url, f'create database "{name}" template "{template_db}"'))
    asyncio.run(ensure_database(url))  # per-database grants do not come with the template
    yield url
    asyncio.run(_admin(url, f'drop database if exists "{name}" with (force)'))


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return DevCA.create("certplane test")


@pytest.fixture(scope="session")
def ca_file(ca: DevCA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "root.crt"
    path.write_bytes(ca.root.cert_pem)
    return path


@pytest.fixture(scope="session")
def router_key(tmp_path_factory: pytest.TempPathFactory) -> X25519PrivateKey:
    return X25519PrivateKey.generate()


@pytest.fixture
def settings(
    servers: Settings, db_url: str, ca_file: Path, router_key: X25519PrivateKey, tmp_path: Path
) -> Iterator[Settings]:
    """This test's settings: its own database, subject prefix and JetStream names (dropped
    afterwards, so runs on a long-lived NATS server leave nothing behind)."""
    test_settings = _test_settings(servers, db_url, ca_file, router_key, tmp_path)
    yield test_settings
    asyncio.run(_drop_jetstream(test_settings))


async def _drop_jetstream(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        with contextlib.suppress(Exception):  # absent when the test started no projector
            await js.delete_key_value(settings.router_bucket)
        with contextlib.suppress(Exception):  # absent when the test started no router
            await js.delete_stream(settings.router_status_stream)
    finally:
        await nc.close()


def _test_settings(
    servers: Settings, db_url: str, ca_file: Path, router_key: X25519PrivateKey, tmp_path: Path
) -> Settings:
    prefix = f"t{secrets.token_hex(5)}"
    key_file = tmp_path / "router.key"
    key_file.write_text(base64.b64encode(router_key.private_bytes_raw()).decode())
    audit_key = tmp_path / "audit-signing.key"
    audit_key.write_text(
        base64.b64encode(Ed25519PrivateKey.generate().private_bytes_raw()).decode()
    )
    return dataclasses.replace(
        servers,
        database_url=db_url,
        prefix=prefix,
        master_key=MasterKey.generate().to_text(),
        extra_ca_file=str(ca_file),
        trust_system_store=False,
        router_bucket=f"ROUTER_CONFIG_{prefix}",
        router_status_stream=f"ROUTER_STATUS_{prefix}",
        router_key_file=key_file,
        audit_key_file=audit_key,
        audit_seal_every=10,  # small, so tests see several heads
        audit_seal_seconds=0.5,
    )


@pytest.fixture
async def projectors(settings: Settings, gateway: object) -> AsyncIterator[asyncio.Task[None]]:
    """All projectors, in-process; the JetStream bucket is deleted afterwards."""
    from services.projectors.service import run_projectors

    stop = asyncio.Event()
    task = asyncio.create_task(run_projectors(settings, [], stop))
    yield task
    stop.set()
    await asyncio.wait_for(task, 15)
    nc = await nats.connect(settings.nats_url)
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_key_value(settings.router_bucket)
    await nc.close()


async def projected(cp: ControlPlane, position: int, within: float = 15.0) -> None:
    """Wait until every projection has applied `position` (read-your-writes, no sleeping)."""
    from events.replies import Checkpoints

    deadline = asyncio.get_running_loop().time() + within
    while True:
        reply = await cp.query(None, "checkpoints")
        assert isinstance(reply, Checkpoints)
        names = ("certificates", "dns_targets", "router_config", "audit")
        if all(reply.positions.get(n, 0) >= position for n in names):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"projections at {reply.positions}, waiting for {position}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[object]:
    from services.gateway.service import Gateway

    async with Gateway(settings) as gw:
        yield gw


@pytest.fixture
async def cp(settings: Settings, gateway: object) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(settings.nats_url, settings.prefix, actor="test@certplane") as client:
        yield client


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTPLANE_")}
    env.update(settings.environment(), PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def run_cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real `certplane` command, as a user would, against this test's control plane."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=env_for(settings, **env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def certs_add(
    settings: Settings, files: dict[str, Path], app: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`certplane certs:add CHAIN CRT KEY -a APP`, with the files `DevCA.write` wrote."""
    paths = [str(files[name]) for name in ("chain", "crt", "key")]
    return run_cli(settings, "certs:add", *paths, "-a", app, *extra)
