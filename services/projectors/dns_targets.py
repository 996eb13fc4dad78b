"""The `dns_targets` projection: the name each custom domain is CNAMEd to.

Targets derive from the DomainAdded event's id (`services.domain.dns_target`), re-drawn on a
collision with any target allocated at that point of the log, so a rebuild from position 0
allocates exactly the same names whatever the batch boundaries were.
"""

from __future__ import annotations

import asyncpg

from events.app import AppDestroyed
from events.domain import DomainAdded, DomainRemoved
from events.union import tag_of
from services.domain.dns_target import MAX_DRAWS, dns_target
from services.storage.event_log import StoredEvent


class DnsTargetsProjection:
    name = "dns_targets"
    tables = ("dns_targets",)
    event_types = frozenset(tag_of(t) for t in (DomainAdded, DomainRemoved, AppDestroyed))
    envelope = frozenset({"event_id"})  # its names' seed; the rest is the audit's

    def __init__(self, zone: str) -> None:
        self.zone = zone

    def reset(self) -> None:
        return None

    def ddl(self, schema: str) -> list[str]:
        return [
            f'create table "{schema}".dns_targets (hostname text primary key, app text not null,'
            " target text not null unique, position bigint not null)",
            f'create index on "{schema}".dns_targets (app)',
        ]

    async def apply(
        self, conn: asyncpg.Connection, schema: str, events: list[StoredEvent], through: int
    ) -> None:
        if not events:
            return
        table = f'"{schema}".dns_targets'
        pending: dict[str, tuple[str, str, int]] = {}  # hostname -> (app, target, position)
        freed: set[str] = set()  # targets deleted earlier in this batch
        deleted_hosts: set[str] = set()

        # One round trip for the first draw of every domain added in the batch, and one for
        # the targets of every domain removed; only a collision costs a query of its own.
        first_draws = {
            e.event_id: dns_target(e.event_id, 0, self.zone)
            for e in events
            if isinstance(e.event, DomainAdded)
        }  # drawn once: deriving a target was a third of a rebuild, and each was drawn twice
        allocated = {
            r[0]
            for r in await conn.fetch(
                f"select target from {table} where target = any($1)", list(first_draws.values())
            )
        }
        removed = [e.event.hostname for e in events if isinstance(e.event, DomainRemoved)]
        targets_of = dict(
            await conn.fetch(
                f"select hostname, target from {table} where hostname = any($1)", removed
            )
        )
        pending_targets: set[str] = set()

        async def taken(target: str, attempt: int) -> bool:
            if target in pending_targets:
                return True
            if target in freed:
                return False
            if attempt == 0:
                return target in allocated
            return bool(await conn.fetchval(f"select 1 from {table} where target = $1", target))

        for stored in events:
            match stored.event:
                case DomainAdded(app=app, hostname=host):
                    for attempt in range(MAX_DRAWS):
                        target = (
                            first_draws[stored.event_id]
                            if attempt == 0
                            else dns_target(stored.event_id, attempt, self.zone)
                        )
                        if not await taken(target, attempt):
                            break
                    else:
                        raise RuntimeError(f"no free DNS target for {host} after {MAX_DRAWS} draws")
                    pending[host] = (app, target, stored.position)
                    pending_targets.add(target)
                case DomainRemoved(hostname=host):
                    if host in pending:
                        target = pending.pop(host)[1]
                        pending_targets.discard(target)
                        freed.add(target)
                    else:
                        known = targets_of.get(host)
                        if known is not None and host not in deleted_hosts:
                            freed.add(known)
                        deleted_hosts.add(host)
                case AppDestroyed(app=app):
                    for host in [h for h, (a, _, _) in pending.items() if a == app]:
                        target = pending.pop(host)[1]
                        pending_targets.discard(target)
                        freed.add(target)
                    rows = await conn.fetch(
                        f"select hostname, target from {table} where app = $1", app
                    )
                    for host, target in rows:
                        if host not in deleted_hosts:
                            freed.add(target)
                            deleted_hosts.add(host)
        if deleted_hosts:
            await conn.execute(f"delete from {table} where hostname = any($1)", list(deleted_hosts))
        if pending:
            # binary COPY: asyncpg encodes array parameters element by element in Python
            await conn.copy_records_to_table(
                "dns_targets",
                schema_name=schema,
                records=[(host, app, target, pos) for host, (app, target, pos) in pending.items()],
                columns=["hostname", "app", "target", "position"],
            )

    async def after_commit(self, conn: asyncpg.Connection, schema: str) -> None:
        return None

    async def reconcile(self, conn: asyncpg.Connection, schema: str) -> None:
        return None
