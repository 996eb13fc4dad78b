"""What a projection is, to the machinery that runs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import asyncpg

from services.storage.event_log import StoredEvent


class Projection(Protocol):
    """A read model built from the log.

    Contract:
    - `ddl(schema)` creates its tables inside `schema` (one schema per generation);
    - `event_types` names the event types `apply` is given (None: all of them);
    - optional `envelope`: the envelope fields it reads (names of `ENVELOPE_COLUMNS`: event
      and command ids, command index, metadata, recorded_at; all when absent). The others
      arrive blank, which PostgreSQL then neither sends nor Python decodes (measured:
      certificates' rebuild 8 % faster without metadata, router_config's row parsing a
      third cheaper without any); a test holds each projection's source to its declaration;
    - `apply` is called inside a transaction with the events of a dense, ordered batch of
      positions that ends at `through` (events of other types are left out, so the list
      may be empty: a projection that tells others its position uses `through`); it must only write
      to its own tables, so that its writes and the checkpoint commit or roll back together.
      It must be deterministic: a rebuild from position 0 gives identical rows. Raising marks
      the batch as failed (the runner isolates the poison event and retries it);
    - `after_commit` runs after the transaction committed (publishing to NATS); it must be
      idempotent, and `reconcile` must repair anything it failed to do;
    - `reconcile` runs when the projector takes the lead and periodically after.
    - optional `prepare(conn, schema, events)` and `write(conn, schema, prepared, through)`,
      when `apply` is `write(prepare(...))` and `prepare` needs nothing of the batch before
      but its own memory and what is committed (it runs on a connection of its own): a
      rebuild then folds batch N+1 while batch N is written (measured: certificates' rebuild
      25 % faster; router_config lays the batch before over the rows it reads);
    - optional `rebuild_started(head)`: called after `reset` when a rebuild begins writing
      into a new, empty generation (`head`: the log's last position then); router_config
      stops asking PostgreSQL for rows of hostnames it has not written since;
    - optional `rebuild_finished()`: called instead of `reset` once a rebuild has swapped in;
      a projection whose folded state holds at the rebuild's last position, where the live
      runner goes on, keeps it and drops only what the rebuild alone needed;
    - optional `version` (1 when absent): raise it when the same log would now give
      different rows; leaders rebuild tables an older version built (see migration 009);
    - `tables` names the stable views `<name>.<table>` readers use; each selects everything
      from the generation's table of that name, unless optional `views(schema)` gives each
      view's query (router_config joins two tables into one row per hostname);
    - optional `configure(conn)`: sets up the connections its tables are written and (by
      `prepare`) read on (audit: a cheaper timestamp encoder; router_config: fresh plans),
      once per connection;
    - optional `observe(conn, schema)`: refreshes what the projection reports as metrics of
      its own (certificates: how many expire soon); run by the leader every
      CERTPLANE_METRICS_INTERVAL seconds, and only when metrics are on.
    """

    # read-only (properties here): a projection class states them as plain class attributes
    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> Sequence[str]: ...

    @property
    def event_types(self) -> frozenset[str] | None: ...

    def ddl(self, schema: str) -> list[str]: ...

    async def apply(
        self, conn: asyncpg.Connection, schema: str, events: list[StoredEvent], through: int
    ) -> None: ...

    async def after_commit(self, conn: asyncpg.Connection, schema: str) -> None: ...

    async def reconcile(self, conn: asyncpg.Connection, schema: str) -> None: ...

    def reset(self) -> None:
        """Forget in-memory state (caches), e.g. before a rebuild or after losing the lead."""
        ...
