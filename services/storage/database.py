"""Connecting to PostgreSQL: creating the database if needed, and pools as the service role."""

from __future__ import annotations

import contextlib
import urllib.parse

import asyncpg

from services.config import ConfigError, redact
from services.domain.errors import Unavailable
from services.storage.migrations import migrate, missing_migrations


def _with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


def database_name(url: str) -> str:
    return urllib.parse.urlsplit(url).path.lstrip("/") or "postgres"


async def connect(url: str, **kwargs: object) -> asyncpg.Connection:
    """One admin connection; raises `Unavailable` naming the URL when it cannot be reached."""
    try:
        return await asyncpg.connect(url, timeout=10, **kwargs)
    except (OSError, asyncpg.exceptions.CannotConnectNowError, TimeoutError) as e:
        raise Unavailable(
            f"PostgreSQL at {redact(url)} cannot be reached: {e}", url=redact(url)
        ) from e


async def ensure_database(url: str) -> list[str]:
    """Create the URL's database if it does not exist, then apply pending migrations."""
    name = database_name(url)
    try:
        conn = await connect(url)
    except asyncpg.exceptions.InvalidCatalogNameError:
        admin = await connect(_with_database(url, "postgres"))
        try:
            await admin.execute(f'create database "{name}"')
        except asyncpg.exceptions.DuplicateDatabaseError:
            pass
        finally:
            await admin.close()
        conn = await connect(url)
    try:
        applied = await migrate(conn)
        # Projectors create a schema per projection generation. A database grant is not
        # carried by CREATE DATABASE ... TEMPLATE or a restore, so it is (re)applied here.
        await conn.execute(f'grant create on database "{name}" to certplane_service')
        await _prefer_lz4(conn, name)
        return applied
    finally:
        await conn.close()


async def _prefer_lz4(conn: asyncpg.Connection, name: str) -> None:
    """Compress new TOASTed values with lz4 where the server was built with it.

    A certificate chain is TOASTed in every CertAdded and in every router_config row (one
    per hostname); lz4 compresses it several times faster than the default pglz, which made
    a router_config rebuild about 20 % faster. Values already stored keep their method.
    """
    supported = await conn.fetchval(
        "select 'lz4' = any(enumvals) from pg_settings where name = 'default_toast_compression'"
    )
    if supported:
        with contextlib.suppress(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute(f'alter database "{name}" set default_toast_compression = lz4')


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection without asyncpg's session reset.

    The reset (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) is a round trip on every
    release, so on every append. Nothing on a service pool changes session state: no SET
    outside a transaction, no LISTEN, no session advisory lock, no cursor outside a
    transaction (projectors, which LISTEN and lock, have connections of their own). An open
    transaction is still rolled back: asyncpg does that before calling this.
    """


async def service_pool(
    url: str, role: str, *, min_size: int = 2, max_size: int = 8
) -> asyncpg.Pool:
    """A pool whose sessions run as `role` (startup parameter, so pool resets keep it)."""
    settings = {"role": role} if role else {}
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            server_settings=settings,
            timeout=10,
            reset=_keep_session,
        )
    except (OSError, asyncpg.exceptions.CannotConnectNowError, TimeoutError) as e:
        raise Unavailable(
            f"PostgreSQL at {redact(url)} cannot be reached: {e}", url=redact(url)
        ) from e
    assert pool is not None
    return pool


async def require_schema(conn: asyncpg.Connection, url: str) -> None:
    """Refuse to run against a database an older release migrated.

    Migrations only add, so a newer schema is fine (an older instance in a rolling upgrade);
    a missing one would fail later, a statement at a time, in a loop of retries.
    """
    lacking = await missing_migrations(conn)
    if lacking:
        raise ConfigError(
            f"The database at {redact(url)} lacks migration(s) {', '.join(lacking)} of this "
            "release: run `certplane migrate` (with an admin CERTPLANE_DATABASE_URL) first."
        )
