"""Projector bookkeeping in PostgreSQL: checkpoints, generations and views, dead letters, status."""

from __future__ import annotations

import asyncpg

from services.projectors.projection import Projection
from services.storage.event_log import ENVELOPE_COLUMNS, STORED_COLUMNS, StoredEvent, stored_event


def generation_schema(name: str, generation: int) -> str:
    return f"{name}_g{generation}"


async def live_generation(conn: asyncpg.Connection, name: str, version: int = 1) -> int:
    """The generation the views point at (created as 1 on first use, built by `version`)."""
    await conn.execute(
        "insert into projector_checkpoints (name, generation, version) values ($1, 1, $2)"
        " on conflict do nothing",
        name,
        version,
    )
    return int(
        await conn.fetchval("select generation from projector_checkpoints where name = $1", name)
    )


async def built_version(conn: asyncpg.Connection, name: str) -> int:
    """The version of the projection's code that built its live generation's rows."""
    return int(
        await conn.fetchval("select version from projector_checkpoints where name = $1", name)
    )


async def ensure_tables(conn: asyncpg.Connection, projection: Projection, generation: int) -> str:
    """Create the generation's schema and tables if missing; returns the schema name."""
    schema = generation_schema(projection.name, generation)
    exists = await conn.fetchval("select 1 from pg_namespace where nspname = $1", schema)
    if not exists:
        async with conn.transaction():
            await conn.execute(f'create schema "{schema}"')
            for statement in projection.ddl(schema):
                await conn.execute(statement)
    return schema


async def point_views(conn: asyncpg.Connection, projection: Projection, generation: int) -> None:
    """Make `<name>.<table>` read from the generation (run inside the swap's transaction)."""
    schema = generation_schema(projection.name, generation)
    await conn.execute(f'create schema if not exists "{projection.name}"')
    views = getattr(projection, "views", None)
    queries = (
        views(schema)
        if views is not None
        else {table: f'select * from "{schema}"."{table}"' for table in projection.tables}
    )
    for view, query in queries.items():
        await conn.execute(f'create or replace view "{projection.name}"."{view}" as {query}')


async def checkpoint(conn: asyncpg.Connection, name: str) -> int:
    await conn.execute(
        "insert into projector_checkpoints (name) values ($1) on conflict do nothing", name
    )
    return int(
        await conn.fetchval("select position from projector_checkpoints where name = $1", name)
    )


async def advance(conn: asyncpg.Connection, name: str, old: int, new: int) -> bool:
    """Move the checkpoint from `old` to `new`; False if someone else moved it (lost lead)."""
    status = await conn.execute(
        "update projector_checkpoints set position = $3, updated_at = now()"
        " where name = $1 and position = $2",
        name,
        old,
        new,
    )
    return bool(status == "UPDATE 1")


def _read_query(types: frozenset[str] | None, envelope: frozenset[str] | None = None) -> str:
    """Rows after a position; with `types`, the others come with their position alone.

    Every position still arrives (the runner checks they are dense and checkpoints past
    them), but PostgreSQL neither sends nor does Python decode events the projection never
    looks at: four kilobytes of chain for each certificate, to a projection of DNS names.
    With `envelope` (the envelope fields the projection reads: see `ENVELOPE_COLUMNS`), the
    other fields' columns are null in every row.
    """
    columns = [c.strip() for c in STORED_COLUMNS.split(",")]
    names = [c.split("::")[0] for c in columns]  # rows are read by name too
    assert names[0] == "position" and set(ENVELOPE_COLUMNS) <= set(names), "STORED_COLUMNS changed"
    if envelope is not None:
        columns = [
            "null" if n in ENVELOPE_COLUMNS and n not in envelope else c
            for c, n in zip(columns, names, strict=True)
        ]
    if types is not None:
        # Of a row not wanted, only the position: asyncpg then builds no text, UUID or
        # timestamp for it (measured: dns_targets, which wants 5 of the benchmark log's 13
        # events, catches up 10 % faster than with the data alone left out).
        wanted = "type = any($3::text[])"
        columns[1:] = [f"case when {wanted} then {c} end" for c in columns[1:]]
    selected = ", ".join(f"{c} as {n}" for c, n in zip(columns, names, strict=True))
    return f"select {selected} from events where position > $1 order by position limit $2"


async def read_after(
    conn: asyncpg.Connection,
    position: int,
    limit: int,
    types: frozenset[str] | None = None,
    envelope: frozenset[str] | None = None,
) -> list[asyncpg.Record]:
    """Raw rows: decoding is the caller's, so an undecodable event is a poison event too."""
    query = _read_query(types, envelope)
    if types is None:
        return list(await conn.fetch(query, position, limit))
    return list(await conn.fetch(query, position, limit, sorted(types)))


def wanted(row: asyncpg.Record) -> bool:
    """Whether a row read with a type filter carries its event (see `_read_query`)."""
    return row[8] is not None


def decode(row: asyncpg.Record) -> StoredEvent:
    return stored_event(row)


async def head(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("select position from log_head"))


async def lag(conn: asyncpg.Connection, position: int) -> tuple[int, float]:
    """Events after `position`, and how much older than the head the first of them is
    (as `certplane projections` shows it: 0 when caught up)."""
    row = await conn.fetchrow(
        "select h.position - $1, coalesce(extract(epoch from h.recorded_at - e.recorded_at), 0)"
        " from log_head h left join events e on e.position = $1 + 1",
        position,
    )
    return int(row[0]), max(0.0, float(row[1]))


async def record_dead_letter(
    conn: asyncpg.Connection, name: str, position: int, event_type: str, error: str, attempts: int
) -> None:
    await conn.execute(
        "insert into projector_dead_letters (name, position, event_type, error, attempts)"
        " values ($1, $2, $3, $4, $5) on conflict (name, position) do update"
        " set error = excluded.error, attempts = excluded.attempts, failed_at = now()",
        name,
        position,
        event_type,
        error[:2000],
        attempts,
    )


async def skip_requested(conn: asyncpg.Connection, name: str, position: int) -> bool:
    return bool(
        await conn.fetchval(
            "select skipped_at is not null from projector_dead_letters where name = $1 and position = $2",
            name,
            position,
        )
    )


async def set_status(
    conn: asyncpg.Connection, name: str, instance: str, state: str, detail: str = ""
) -> None:
    await conn.execute(
        "insert into projector_status (name, instance, state, detail, heartbeat_at)"
        " values ($1, $2, $3, $4, now()) on conflict (name, instance) do update"
        " set state = excluded.state, detail = excluded.detail, heartbeat_at = now()",
        name,
        instance,
        state,
        detail,
    )


async def clear_status(conn: asyncpg.Connection, name: str, instance: str) -> None:
    """Forget an instance that shut down cleanly."""
    await conn.execute(
        "delete from projector_status where name = $1 and instance = $2", name, instance
    )
