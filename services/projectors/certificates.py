"""The `certificates` projection: apps, their domains and endpoints, as the CLI shows them.

Each batch folds the touched apps with the aggregate's `evolve` and writes the rows they
change (deletes, then one upsert per table): set-based, and the rows always equal the folded
state. An endpoint's domain list is not stored with it: the view `certificates.endpoints`
derives it from the domains' rows exactly as `AppState.served_by` does, so a domain event
writes one row however many domains its endpoint serves (a wildcard over thousands of them
made every domain event rewrite the whole list).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
import msgspec

from services.domain.app import ONE_DOMAIN_EVENTS, AppState, hosts_changed
from services.projectors.app_states import APP_EVENT_TYPES, AppStates
from services.storage.event_log import StoredEvent
from services.telemetry import EXPIRY_WINDOWS_DAYS, CertificateExpiry, certificate_metrics

_FOLD_SLICE = 500


@dataclass
class Rows:
    """What a batch changes, by table and key: a row, or None to delete it."""

    apps: dict[str, tuple[object, ...] | None] = field(default_factory=dict)
    domains: dict[str, tuple[object, ...] | None] = field(default_factory=dict)
    endpoints: dict[tuple[str, str], tuple[object, ...] | None] = field(default_factory=dict)


# The endpoints as readers see them: each with the hostnames it serves, as `served_by` lists
# them (its own; for a legacy SSL Endpoint also those no SNI endpoint claims), in Python's
# order (code points: collation "C").
_ENDPOINTS_VIEW = (
    "select e.app, e.name, e.endpoint_type, e.certificate,"
    ' array(select d.hostname from "{schema}".domains d where d.app = e.app'
    "  and (d.endpoint = e.name or (e.endpoint_type = 'endpoint' and coalesce(d.endpoint, '') = ''))"
    '  order by d.hostname collate "C") as domains,'
    " e.not_after, e.fingerprint, e.trusted, e.position, e.updated_at"
    ' from "{schema}".endpoints e'
)


class CertificatesProjection:
    name = "certificates"
    tables = ("apps", "domains", "endpoints")
    event_types = APP_EVENT_TYPES
    envelope = frozenset({"recorded_at"})  # when; who and why are the audit's
    # 2: a legacy SSL Endpoint's row lists the domains it serves (those no SNI endpoint
    # claims), not only those assigned to it by name
    # 3: a removed endpoint's domains move to the endpoints its event names (`reassigned`);
    # an older release would leave them unserved, so it must not lead on such a log
    # 4: an endpoint's domain list is derived by the view, not stored (its row's position is
    # the event that last changed the endpoint itself)
    version = 4

    def __init__(self) -> None:
        self.states = AppStates()
        self.expiry: CertificateExpiry | None = None  # as of the last `observe`, when leading
        certificate_metrics(lambda: self.expiry)

    def reset(self) -> None:
        self.states.reset()
        self.expiry = None  # a standby reports nothing

    def rebuild_finished(self) -> None:
        """The app states the rebuild folded hold at its last position, where the live
        runner goes on: kept (freeing them took 170 ms of the benchmark's 5 s rebuild, and
        the live batches after it would read every app's stream again)."""
        return None

    async def observe(self, conn: asyncpg.Connection, schema: str) -> None:
        """Count certificates by how soon they expire (for the metrics; see telemetry)."""
        windows = ", ".join(
            f"count(*) filter (where not_after <= now() + interval '{days} days')"
            for days in EXPIRY_WINDOWS_DAYS
        )
        row = await conn.fetchrow(
            f"select count(*), {windows}, extract(epoch from min(not_after))::float8"
            f' from "{schema}".endpoints'
        )
        self.expiry = CertificateExpiry(
            total=row[0],
            within_days=dict(zip(EXPIRY_WINDOWS_DAYS, row[1:-1], strict=True)),
            next_expiry=row[-1],
        )

    def ddl(self, schema: str) -> list[str]:
        return [
            f'create table "{schema}".apps (name text primary key, domains integer not null,'
            " endpoints integer not null, position bigint not null, updated_at timestamptz not null)",
            f'create table "{schema}".domains (hostname text primary key, app text not null,'
            " endpoint text, dns_verified boolean, position bigint not null)",
            f'create index on "{schema}".domains (app)',
            f'create table "{schema}".endpoints (app text not null, name text not null,'
            " endpoint_type text not null, certificate jsonb not null,"
            " not_after timestamptz not null, fingerprint text not null, trusted boolean not null,"
            " position bigint not null, updated_at timestamptz not null, primary key (app, name))",
        ]

    def views(self, schema: str) -> dict[str, str]:
        """The stable views' queries (see `store.point_views`)."""
        return {
            "apps": f'select * from "{schema}".apps',
            "domains": f'select * from "{schema}".domains',
            "endpoints": _ENDPOINTS_VIEW.format(schema=schema),
        }

    async def apply(
        self, conn: asyncpg.Connection, schema: str, events: list[StoredEvent], through: int
    ) -> None:
        await self.write(conn, schema, await self.prepare(conn, schema, events), through)

    async def prepare(
        self, conn: asyncpg.Connection, schema: str, events: list[StoredEvent]
    ) -> Rows:
        """Fold a batch into the rows it changes, each stamped with that event's position.

        Reads only the log (`conn` serves the app states the cache lacks), never this
        projection's tables: so a rebuild can fold batch N+1 while batch N is written.
        `evolve` keeps unchanged DomainState/EndpointState objects, so identity tells what an
        event changed; the cost is proportional to the change, not to the app's size.
        """
        rows = Rows()
        for start in range(0, len(events), _FOLD_SLICE):
            if start:
                await asyncio.sleep(0)  # let a batch being written send its next statement
            self._fold(
                await self.states.transitions(conn, events[start : start + _FOLD_SLICE]), rows
            )
        return rows

    async def write(self, conn: asyncpg.Connection, schema: str, rows: Rows, through: int) -> None:
        """Write what `prepare` folded (inside the runner's transaction)."""
        await _write(conn, f'"{schema}".apps', ["name"], rows.apps)
        await _write(conn, f'"{schema}".domains', ["hostname"], rows.domains)
        await _write(conn, f'"{schema}".endpoints', ["app", "name"], rows.endpoints)

    @staticmethod
    def _fold(steps: list[tuple[str, AppState, AppState, StoredEvent]], rows: Rows) -> None:
        apps, domains, endpoints = rows.apps, rows.domains, rows.endpoints
        last: dict[str, tuple[AppState, StoredEvent]] = {}  # an app's row: from its last event
        for app, before, after, event in steps:
            if not after.exists:
                last.pop(app, None)
                apps[app] = None
                for host in before.domains:
                    domains[host] = None
                for name in before.endpoints:
                    endpoints[(app, name)] = None
                continue
            last[app] = (after, event)
            change = event.event
            position = event.position
            if before.endpoints is after.endpoints and isinstance(change, ONE_DOMAIN_EVENTS):
                # most events: one domain changed, and the view lists it where it goes
                hosts: Iterable[str] = (change.hostname,)
            else:
                hosts = hosts_changed(before, after, change)  # a superset; O(1) mostly
            for host in hosts:
                old, new = before.domains.get(host), after.domains.get(host)
                if old is new:
                    continue
                domains[host] = (
                    (host, app, new.endpoint, new.dns_verified, position)
                    if new is not None
                    else None
                )
            if before.endpoints is after.endpoints:
                continue
            for name in before.endpoints.keys() | after.endpoints.keys():
                old_e, new_e = before.endpoints.get(name), after.endpoints.get(name)
                if old_e is new_e:
                    continue
                if new_e is None:
                    endpoints[(app, name)] = None
                    continue
                c = new_e.certificate
                endpoints[(app, name)] = (
                    app, name, new_e.endpoint_type.value, c,
                    c.not_after, c.fingerprint_sha256, c.trusted, position, event.recorded_at,
                )  # fmt: skip
        for app, (state, event) in last.items():
            apps[app] = (
                app, len(state.domains), len(state.endpoints), event.position, event.recorded_at
            )  # fmt: skip

    async def after_commit(self, conn: asyncpg.Connection, schema: str) -> None:
        return None

    async def reconcile(self, conn: asyncpg.Connection, schema: str) -> None:
        return None


# Each table's columns and how a row's JSON value becomes each (rows travel as one JSON
# array of arrays; see `_write`).
_COLUMNS = {
    "apps": [("name", "text"), ("domains", "integer"), ("endpoints", "integer"),
             ("position", "bigint"), ("updated_at", "timestamptz")],
    "domains": [("hostname", "text"), ("app", "text"), ("endpoint", "text"),
                ("dns_verified", "boolean"), ("position", "bigint")],
    "endpoints": [("app", "text"), ("name", "text"), ("endpoint_type", "text"),
                  ("certificate", "jsonb"), ("not_after", "timestamptz"),
                  ("fingerprint", "text"), ("trusted", "boolean"), ("position", "bigint"),
                  ("updated_at", "timestamptz")],
}  # fmt: skip

_ROWS = msgspec.json.Encoder()


def _element(index: int, type_: str) -> str:
    if type_ == "jsonb":
        return f"r->{index}"
    return f"(r->>{index})::{type_}"


async def _write(
    conn: asyncpg.Connection,
    table: str,
    key: list[str],
    rows: dict[str, tuple[object, ...] | None] | dict[tuple[str, str], tuple[object, ...] | None],
) -> None:
    """Delete the keys mapped to None, upsert the others (one statement each).

    The upserts go as one JSON document that PostgreSQL takes apart, not as an array per
    column: asyncpg encodes arrays element by element in Python (an ABC check each), and a
    rebuild's Python process is its bottleneck while its backend has time to spare.
    """
    columns = _COLUMNS[table.rsplit(".", 1)[1]]
    gone = [k for k, v in rows.items() if v is None]
    if gone:
        if len(key) == 1:
            await conn.execute(f"delete from {table} where {key[0]} = any($1)", gone)
        else:
            await conn.executemany(f"delete from {table} where app = $1 and name = $2", gone)
    upserts = [v for v in rows.values() if v is not None]
    if upserts:
        names = ", ".join(c for c, _ in columns)
        values = ", ".join(_element(i, t) for i, (_, t) in enumerate(columns))
        updates = ", ".join(f"{c} = excluded.{c}" for c, _ in columns if c not in key)
        await conn.execute(
            f"insert into {table} ({names}) select {values} from jsonb_array_elements($1::jsonb) r"
            f" on conflict ({', '.join(key)}) do update set {updates}",
            _ROWS.encode(upserts).decode(),
        )
