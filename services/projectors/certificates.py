"""The `certificates` projection: apps, their domains and endpoints, as the CLI shows them.

Each batch folds the touched apps with the aggregate's `evolve` and rewrites those apps'
rows (delete, then COPY): set-based, and the rows always equal the folded state.
"""

from __future__ import annotations

import asyncpg
import msgspec

from services.domain import app as app_aggregate
from services.domain.app import AppState
from services.projectors.app_states import AppStates, app_of
from services.storage.event_log import StoredEvent

_FACTS = msgspec.json.Encoder()


class CertificatesProjection:
    name = "certificates"
    tables = ("apps", "domains", "endpoints")

    def __init__(self) -> None:
        self.states = AppStates()

    def reset(self) -> None:
        self.states.reset()

    def ddl(self, schema: str) -> list[str]:
        return [
            f'create table "{schema}".apps (name text primary key, domains integer not null,'
            " endpoints integer not null, position bigint not null, updated_at timestamptz not null)",
            f'create table "{schema}".domains (hostname text primary key, app text not null,'
            " endpoint text, dns_verified boolean, position bigint not null)",
            f'create index on "{schema}".domains (app)',
            f'create table "{schema}".endpoints (app text not null, name text not null,'
            " endpoint_type text not null, certificate jsonb not null, domains text[] not null,"
            " not_after timestamptz not null, fingerprint text not null, trusted boolean not null,"
            " position bigint not null, updated_at timestamptz not null, primary key (app, name))",
        ]

    async def apply(self, conn: asyncpg.Connection, schema: str, events: list[StoredEvent]) -> None:
        touched: dict[str, tuple[AppState, StoredEvent]] = {}
        first = events[0].position
        for event in events:
            app = app_of(event)
            if app is None:
                continue
            state = (
                touched[app][0]
                if app in touched
                else await self.states.get(conn, app, first - 1, event.version)
            )
            touched[app] = (app_aggregate.evolve(state, event.event), event)  # type: ignore[arg-type]
        if not touched:
            return
        names = list(touched)
        for table, column in (("apps", "name"), ("domains", "app"), ("endpoints", "app")):
            await conn.execute(f'delete from "{schema}".{table} where {column} = any($1)', names)
        apps, domains, endpoints = [], [], []
        for app, (state, last) in touched.items():
            self.states.put(app, state)
            if not state.exists:
                continue
            apps.append(
                (app, len(state.domains), len(state.endpoints), last.position, last.recorded_at)
            )
            for d in state.domains.values():
                domains.append((d.hostname, app, d.endpoint, d.dns_verified, last.position))
            for e in state.endpoints.values():
                c = e.certificate
                endpoints.append(
                    (app, e.name, e.endpoint_type.value, _FACTS.encode(c).decode(), state.served_by(e.name),
                     c.not_after, c.fingerprint_sha256, c.trusted, last.position, last.recorded_at)
                )  # fmt: skip
        await _copy(conn, schema, "apps", apps)
        await _copy(conn, schema, "domains", domains)
        await _copy(conn, schema, "endpoints", endpoints)

    async def after_commit(self, conn: asyncpg.Connection, schema: str) -> None:
        return None

    async def reconcile(self, conn: asyncpg.Connection, schema: str) -> None:
        return None


async def _copy(
    conn: asyncpg.Connection, schema: str, table: str, rows: list[tuple[object, ...]]
) -> None:
    if rows:
        await conn.copy_records_to_table(table, records=rows, schema_name=schema)
