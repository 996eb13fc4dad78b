"""The `dns_targets` projection: the name each custom domain is CNAMEd to.

Targets derive from the DomainAdded event's id (`services.domain.dns_target`), re-drawn on a
collision with any target allocated at that point of the log, so a rebuild from position 0
allocates exactly the same names whatever the batch boundaries were.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from events.app import AppDestroyed
from events.domain import DomainAdded, DomainRemoved
from events.union import tag_of
from services.domain.dns_target import MAX_DRAWS, dns_target
from services.storage.event_log import StoredEvent


@dataclass(frozen=True)
class _Batch:
    rows: dict[str, tuple[str, str, int]]  # hostname -> (app, target, position) to insert
    deleted_hosts: set[str]


class DnsTargetsProjection:
    name = "dns_targets"
    tables = ("dns_targets",)
    event_types = frozenset(tag_of(t) for t in (DomainAdded, DomainRemoved, AppDestroyed))
    envelope = frozenset({"event_id"})  # its names' seed; the rest is the audit's
    # Batches adding this many domains guess that no first draw is taken (see `apply`);
    # smaller ones look them up: one query, where a guess costs a savepoint's two.
    guess_from = 64

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
        """Allocate the batch's targets. A large batch (a rebuild's) does it as if none of its
        first draws were taken, and lets the unique index on `target` check that; where one
        was taken, it does it again with each looked up, as smaller batches always do. A first
        draw is a fresh 124-bit name: looking each one up was an index probe per domain, a
        sixth of a rebuild, for a collision that does not come. Either way the same targets."""
        if not events:
            return
        table = f'"{schema}".dns_targets'
        removed = [e.event.hostname for e in events if isinstance(e.event, DomainRemoved)]
        targets_of: dict[str, str] = (
            dict(
                await conn.fetch(
                    f"select hostname, target from {table} where hostname = any($1)", removed
                )
            )
            if removed
            else {}
        )
        first_draws = {
            e.event_id: dns_target(e.event_id, 0, self.zone)
            for e in events
            if isinstance(e.event, DomainAdded)
        }  # drawn once: deriving a target was a third of a rebuild, and each was drawn twice
        guess = len(first_draws) >= self.guess_from
        batch = (
            await self._allocate(conn, table, events, first_draws, None, targets_of)
            if guess
            else None
        )
        if batch is not None:
            try:
                async with conn.transaction():  # a savepoint: undone alone if a guess was wrong
                    await self._write(conn, schema, table, batch)
                return
            except asyncpg.UniqueViolationError:
                pass
        allocated = (
            {
                r[0]
                for r in await conn.fetch(
                    f"select target from {table} where target = any($1)", list(first_draws.values())
                )
            }
            if first_draws
            else set()
        )
        batch = await self._allocate(conn, table, events, first_draws, allocated, targets_of)
        assert batch is not None
        await self._write(conn, schema, table, batch)

    async def _allocate(
        self,
        conn: asyncpg.Connection,
        table: str,
        events: list[StoredEvent],
        first_draws: dict[str, str],
        allocated: set[str] | None,
        targets_of: dict[str, str],
    ) -> _Batch | None:
        """The batch's rows, each domain's target the first draw not taken when it was added.
        `allocated`: the first draws found in the table; None to assume there are none, and
        get None back when a guess cannot be checked by the unique index at insert: a first
        draw that is a target this batch deletes from the table, or of a domain the batch
        adds and removes again (never inserted)."""
        pending: dict[str, tuple[str, str, int]] = {}  # hostname -> (app, target, position)
        freed: set[str] = set()  # targets deleted earlier in this batch
        deleted_hosts: set[str] = set()
        unchecked: set[str] = set()  # guessed first draws that are not inserted after all
        pending_targets: set[str] = set()

        async def taken(target: str, attempt: int) -> bool:
            if target in pending_targets:
                return True
            if target in freed:
                return False
            if attempt == 0:
                return allocated is not None and target in allocated
            return bool(await conn.fetchval(f"select 1 from {table} where target = $1", target))

        def release(host: str) -> None:
            target = pending.pop(host)[1]
            pending_targets.discard(target)
            freed.add(target)
            unchecked.add(target)

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
                        release(host)
                    else:
                        known = targets_of.get(host)
                        if known is not None and host not in deleted_hosts:
                            freed.add(known)
                        deleted_hosts.add(host)
                case AppDestroyed(app=app):
                    for host in [h for h, (a, _, _) in pending.items() if a == app]:
                        release(host)
                    rows = await conn.fetch(
                        f"select hostname, target from {table} where app = $1", app
                    )
                    for host, target in rows:
                        if host not in deleted_hosts:
                            freed.add(target)
                            deleted_hosts.add(host)
        if allocated is None:
            deleted = freed - unchecked  # what was in the table (freed: it was, or is pending)
            guesses = set(first_draws.values())
            if guesses & deleted:
                return None
            unchecked &= guesses
            unchecked -= pending_targets
            if unchecked and await conn.fetchval(
                f"select exists (select from {table} where target = any($1))", list(unchecked)
            ):
                return None
        return _Batch(pending, deleted_hosts)

    async def _write(
        self, conn: asyncpg.Connection, schema: str, table: str, batch: _Batch
    ) -> None:
        if batch.deleted_hosts:
            await conn.execute(
                f"delete from {table} where hostname = any($1)", list(batch.deleted_hosts)
            )
        if batch.rows:
            # binary COPY: asyncpg encodes array parameters element by element in Python
            await conn.copy_records_to_table(
                "dns_targets",
                schema_name=schema,
                records=[
                    (host, app, target, pos) for host, (app, target, pos) in batch.rows.items()
                ],
                columns=["hostname", "app", "target", "position"],
            )

    async def after_commit(self, conn: asyncpg.Connection, schema: str) -> None:
        return None

    async def reconcile(self, conn: asyncpg.Connection, schema: str) -> None:
        return None
