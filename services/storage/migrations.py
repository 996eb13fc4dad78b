"""Apply the numbered SQL files in schemas/sql/ once each, in order, under an advisory lock."""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

log = logging.getLogger("certplane.migrate")

_LOCK_KEY = 0x63657274  # "cert": serializes concurrent migrators of one database


def migration_files() -> list[tuple[int, str, str]]:
    """(number, file name, SQL) for every migration shipped with the package, in order."""
    files = []
    for entry in resources.files("schemas").joinpath("sql").iterdir():
        if entry.name.endswith(".sql"):
            files.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(files)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Bring the database to the newest schema; returns the names of the files applied."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            "create table if not exists schema_migrations ("
            " version integer primary key, name text not null,"
            " applied_at timestamptz not null default now())"
        )
        done = {r["version"] for r in await conn.fetch("select version from schema_migrations")}
        for number, name, sql in migration_files():
            if number in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "insert into schema_migrations (version, name) values ($1, $2)", number, name
            )
            log.info("applied migration %s", name)
            applied.append(name)
    return applied


async def missing_migrations(conn: asyncpg.Connection) -> list[str]:
    """The shipped migrations this database has not applied, by file name."""
    try:
        done = {r[0] for r in await conn.fetch("select version from schema_migrations")}
    except asyncpg.UndefinedTableError:
        done = set()
    return [name for number, name, _ in migration_files() if number not in done]
