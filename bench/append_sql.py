"""PostgreSQL's CPU per command inside the append function, for A/B tests of its SQL.

Appends batches of AddDomain-shaped commands (a DomainAdded on the app's stream and a
HostnameClaimed on a new hostname's stream, each with its expected version) one batch after
the other from one connection, as the gateway's group commit does under load, and reads the
backend's CPU from /proc. No NATS, no gateway: only the function and what the batch costs
PostgreSQL.

    .venv/bin/python bench/append_sql.py [--batch 32] [--batches 2000] [--sql variant.sql]
        [--event-ids ordered|random] [--command-ids ordered|random] [--plain]

`--sql` runs a file (say, a `create or replace function certplane_append_chained`) after the
migrations, to compare a variant with the function the migrations install. `--plain` writes
the same rows with one plain INSERT a batch into a copy of `events` (its indexes, no
trigger): no lock, no version checks, no chain: the floor under the function.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu_per_command import backends_of, cpu_seconds
from bench.harness import drop_database, scratch_database
from events.base import Metadata
from events.domain import DomainAdded, HostnameClaimed
from services.config import Settings
from services.domain.ids import TimeOrderedIds
from services.domain.streams import app_stream, hostname_stream
from services.runner import tune_gc
from services.storage.database import database_name, service_pool
from services.storage.event_log import (
    AppendRequest,
    AppendResult,
    AppendStatus,
    NewEvent,
    PostgresEventLog,
    _batch_arrays,
)

APPS = 64


def batch(
    serial: int,
    size: int,
    versions: dict[str, int],
    event_id: Callable[[], str],
    new_command_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> list[AppendRequest]:
    requests = []
    for k in range(size):
        n = serial * size + k
        app = f"w{n % APPS:05d}"
        host = f"h{n}.{app}.bench.example"
        command_id = new_command_id()
        meta = Metadata(command_id=command_id, actor="bench", correlation_id=command_id,
                        causation_id=command_id, traceparent="")  # fmt: skip
        stream = app_stream(app)
        requests.append(
            AppendRequest(
                command_id=command_id,
                expected={stream: versions.get(stream, 0), hostname_stream(host): 0},
                events=[
                    NewEvent(stream, DomainAdded(app=app, hostname=host), meta, event_id()),
                    NewEvent(
                        hostname_stream(host),
                        HostnameClaimed(app=app, hostname=host),
                        meta,
                        event_id(),
                    ),
                ],
            )
        )
        versions[stream] = versions.get(stream, 0) + 1
    return requests


class PlainInserts:
    """The batch's rows in one INSERT from arrays, positions and versions made here (each
    stream's next), hashes left as the content hashes: what storing them costs alone."""

    def __init__(self, con: asyncpg.Connection, writer_key: bytes) -> None:
        self._con = con
        self._key = writer_key
        self._position = 0
        self._versions: dict[str, int] = {}

    async def append_batch(self, requests: list[AppendRequest]) -> list[AppendResult]:
        arrays = _batch_arrays(requests, self._key)
        cmd_ids, ev_cmd, ev_index, ev_stream, ev_id, ev_type, ev_schema = (
            arrays[0], arrays[4], arrays[5], arrays[6], arrays[7], arrays[8], arrays[9]
        )  # fmt: skip
        ev_data, ev_meta, ev_content = arrays[10], arrays[11], arrays[12]
        positions, versions = [], []
        for stream in ev_stream:
            self._position += 1
            self._versions[stream] = self._versions.get(stream, 0) + 1
            positions.append(self._position)
            versions.append(self._versions[stream])
        await self._con.execute(
            "insert into plain_events (position, stream_id, stream_version, event_id, command_id,"
            " command_index, type, schema_version, data, metadata, recorded_at, prev_hash, hash)"
            " select p, s, v, e::uuid, ($12::uuid[])[c], i, t, sv, d::json, m::json, now(), h, h"
            " from unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::int[], $6::int[],"
            " $7::text[], $8::int[], $9::text[], $10::text[], $11::bytea[])"
            " as u(p, s, v, e, c, i, t, sv, d, m, h)",
            positions, ev_stream, versions, ev_id, ev_cmd, ev_index, ev_type, ev_schema,
            ev_data, ev_meta, ev_content, cmd_ids,
        )  # fmt: skip
        return [AppendResult(AppendStatus.OK) for _ in requests]

    async def close(self) -> None:
        """Nothing kept from the pool (its own connection is the caller's to close)."""


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--sql", type=Path, help="a file run (as the owner) before the batches")
    parser.add_argument(
        "--event-ids",
        choices=["ordered", "random"],
        default="ordered",
        help="time-ordered (version 7, as the gateway makes them) or random (version 4) ids",
    )
    parser.add_argument(
        "--command-ids",
        choices=["ordered", "random"],
        default="ordered",
        help="time-ordered (as the certplane client makes them) or random (version 4) ids",
    )
    parser.add_argument(
        "--plain", action="store_true", help="one plain INSERT a batch (see above), no function"
    )
    opts = parser.parse_args()
    tune_gc()
    base = Settings.from_env()
    url = await scratch_database(base.database_url, "cpbench_append")
    try:
        if opts.sql:
            owner = await asyncpg.connect(url)
            await owner.execute(opts.sql.read_text())
            await owner.close()
        pool = await service_pool(url, base.service_role, min_size=1, max_size=1)
        event_log: PostgresEventLog | PlainInserts = PostgresEventLog(
            pool, url=url, writer_key=b"k" * 32
        )
        if opts.plain:
            owner = await asyncpg.connect(url)
            await owner.execute("create table plain_events (like events including all)")
            event_log = PlainInserts(owner, b"k" * 32)
        versions: dict[str, int] = {}
        event_id = (
            TimeOrderedIds(random.Random())
            if opts.event_ids == "ordered"
            else (lambda: str(uuid.uuid4()))
        )
        command_id = (
            TimeOrderedIds(random.SystemRandom())
            if opts.command_ids == "ordered"
            else (lambda: str(uuid.uuid4()))
        )
        prepared = [
            batch(i, opts.batch, versions, event_id, command_id) for i in range(opts.batches)
        ]
        warm = opts.batches // 5
        for requests in prepared[:warm]:
            await event_log.append_batch(requests)
        backends = backends_of(database_name(url))
        await event_log.close()
        wal = await pool.fetchval("select pg_current_wal_lsn()::text")
        cpu, started = sum(cpu_seconds(p) for p in backends), time.perf_counter()
        for requests in prepared[warm:]:
            results = await event_log.append_batch(requests)
            assert all(r.status is AppendStatus.OK for r in results), results[0]
        elapsed = time.perf_counter() - started
        cpu = sum(cpu_seconds(p) for p in backends) - cpu
        # WAL written (all of it, on a quiet server: this run's), a steadier figure than CPU
        await event_log.close()  # it keeps the pool's one connection for its appends
        wal_bytes = await pool.fetchval(
            "select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", wal
        )
        await pool.close()
        if isinstance(event_log, PlainInserts):
            await owner.close()
    finally:
        await drop_database(url)
    n = (opts.batches - warm) * opts.batch
    print(
        f"{'plain INSERT' if opts.plain else 'append'} of {opts.batch}-command batches: PostgreSQL {cpu / n * 1e6:.1f} µs of CPU"
        f" and {elapsed / n * 1e6:.1f} µs of wall time per command, {float(wal_bytes) / n:,.0f}"
        f" bytes of WAL ({n:,} commands)"
    )


if __name__ == "__main__":
    asyncio.run(main())
