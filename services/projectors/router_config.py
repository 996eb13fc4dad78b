"""The `router_config` projection: what every router must serve, per hostname.

Rows are recomputed per event from the folded app state (`AppState.serving`), compared with
the previous rows, and only differences are written; `position` is the event that last
changed a row (its config version). After commit the changed hostnames are published to the
JetStream KV bucket (ROUTER_CONFIG); `reconcile` compares the whole bucket with the table and
repairs any difference, so a wiped or stale bucket heals. After each batch's entries the
`_checkpoint` key (ConfigCheckpoint) is written too, even when no entry changed: a router
that has applied it knows it serves the config of that log position. Private keys are decrypted here
(with the data key, unwrapped by the master key) only to be sealed to the routers' key.

A certificate usually serves several hostnames (a wildcard, a SAN list), so its chain and
sealed key are stored once, in `router_bundles` keyed by the data key's id (every upload gets
a fresh data key, so the id names exactly one chain and key), and `router_hosts` points at
it; the view `router_config.router_config` joins them back into one row per hostname. A
bundle no hostname points at any more is deleted with the last row that did: a sealed key
must not outlive the certificate's removal (crypto-shredding).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg
import msgspec
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from events.domain import DnsVerified
from events.endpoint import EndpointType
from events.router import ConfigCheckpoint, RouterConfigEntry, RouterKeySeal
from events.union import tag_of
from services.domain.app import ONE_DOMAIN_EVENTS, EndpointState, hosts_changed
from services.domain.key_envelope import DataKey, MasterKey, RouterSealer
from services.projectors.app_states import APP_EVENT_TYPES, AppStates
from services.storage import packed
from services.storage.event_log import StoredEvent
from services.subjects import CHECKPOINT_KEY, hostname_of_kv_key, kv_key

log = logging.getLogger("certplane.projector.router_config")
_SEAL = msgspec.json.Encoder()
_SEAL_DECODER = msgspec.json.Decoder(RouterKeySeal)
ENTRY_ENCODER = msgspec.json.Encoder()
ENTRY_DECODER = msgspec.json.Decoder(RouterConfigEntry)

Host = tuple[str, str, str, str, str, str]  # app, endpoint, type, fingerprint, policy, key id
Bundle = tuple[str, str | None, str]  # chain PEM, sealed key (None: destroyed), problem


def _entry(hostname: str, host: Host, bundle: Bundle, position: int) -> bytes:
    """The KV value routers read for one hostname."""
    app, endpoint, kind, fingerprint, policy, _ = host
    chain, sealed, problem = bundle
    return ENTRY_ENCODER.encode(
        RouterConfigEntry(
            hostname=hostname, app=app, endpoint=endpoint, endpoint_type=EndpointType(kind),
            chain_pem=chain, fingerprint_sha256=fingerprint,
            key=_SEAL_DECODER.decode(sealed) if sealed else None,
            tls_policy=policy, problem=problem, position=position,
        )
    )  # fmt: skip


def _checkpoint(position: int) -> bytes:
    return ENTRY_ENCODER.encode(ConfigCheckpoint(position=position))


# Hostnames a rebuild remembers having written (see `rebuild_started`).
REMEMBERED = 1_000_000
_HOST_COLUMNS = ["hostname", "app", "endpoint", "endpoint_type", "fingerprint", "tls_policy",
                 "key_id", "position"]  # fmt: skip
# One row per hostname, as routers get it (and as before bundles were stored apart).
_JOINED = (
    "select h.hostname, h.app, h.endpoint, h.endpoint_type, b.chain_pem, h.fingerprint,"
    ' b.sealed_key, h.tls_policy, b.problem, h.position from "{schema}".router_hosts h'
    ' join "{schema}".router_bundles b on b.key_id = h.key_id'
)


@dataclass(frozen=True)
class Changes:
    """What a batch changes: hostname -> (row, position), or None to delete; which of those
    hostnames had a row before it (upserted; the others are inserted); the bundles the
    changed rows point at; and (key id, app) of bundles they stopped pointing at."""

    rows: dict[str, tuple[Host, int] | None]
    stored: set[str]
    bundles: dict[str, Bundle]
    released: set[tuple[str, str]]


class RouterConfigProjection:
    name = "router_config"
    tables = ("router_config",)  # the view; the rows are in router_hosts and router_bundles
    # Routers serve a domain's certificate whether or not its DNS points here yet (as Heroku
    # does), so verification results are neither read nor folded (a property test holds it).
    event_types = APP_EVENT_TYPES - {tag_of(DnsVerified)}
    envelope: frozenset[str] = frozenset()  # who, why, when: the audit's
    # 2: a removed endpoint's hostnames are served by the endpoints its event names
    # (`reassigned`); an older release would stop serving them, so it must not lead.
    # 3: chains and sealed keys stored once per certificate (router_bundles)
    version = 3

    def __init__(self, master: MasterKey, router_public: bytes, kv: KeyValue | None) -> None:
        self.master = master
        self.router_public = router_public
        self.sealer = RouterSealer.for_master(master, router_public)
        self.kv = kv
        self.states = AppStates()
        self._data_keys: dict[str, DataKey | None] = {}
        self._seals: dict[str, tuple[str | None, str]] = {}
        # hostname -> (row, bundle, position) to publish, None to delete; encoded when published
        self._dirty: dict[str, tuple[Host, Bundle, int] | None] = {}
        self._rebuilding = False  # from the first `forget_publications` to `reset`
        self._needs_reconcile = False
        self._applied_to = 0  # the last position `apply` saw: the checkpoint routers are told
        # what the last prepared batch changed, until it is surely committed (see `prepare`)
        self._overlay: dict[str, tuple[Host, int] | None] = {}
        # during a rebuild, the hostnames it has written rows for (see `rebuild_started`)
        self._written: set[str] | None = None

    def reset(self) -> None:
        self.states.reset()
        self._dirty.clear()
        self._rebuilding = False
        self._overlay.clear()
        self._data_keys.clear()  # a key shredded since must not be served from memory
        self._seals.clear()
        self._written = None

    def rebuild_started(self, head: int) -> None:
        """The rebuild writes into empty tables from here: a hostname it has not written
        has no row, so `prepare` need not ask PostgreSQL for it. It asked for every hostname of
        every batch: 385,000 in the benchmark's log, none found (1.3 s of a 14.6 s rebuild
        waited on those answers; PostgreSQL now spends ~0.7 s less). The names are
        remembered up to `REMEMBERED` (~80 MB); past that every hostname is asked for again."""
        self._written = set()

    def rebuild_finished(self) -> None:
        """The rebuilt tables serve now, from the position the fold reached: the app states,
        data keys and seals folded on the way hold there and stay (freeing ~77,000 app
        states took 195 ms of the benchmark's 6 s rebuild, and the first live batches read
        each app's stream again); what only a rebuild uses goes."""
        self._dirty.clear()
        self._rebuilding = False
        self._overlay = {}
        self._written = None

    def forget_publications(self) -> None:
        """During a rebuild: nothing is published until the swap (then `reconcile` is)."""
        self._dirty.clear()
        self._rebuilding = True  # (the runner resets after the swap or a failure)

    async def configure(self, conn: asyncpg.Connection) -> None:
        """A fresh plan for each statement. The look-up of a batch's hostnames is prepared
        once (asyncpg) while `router_hosts` is still small; after five runs PostgreSQL may
        keep a generic plan, a sequential scan then as cheap as the index, and scan the
        whole table for every batch ever after. Measured with the lag benchmark at 1,000
        commands/s: PostgreSQL at 1,000-1,070 µs a command and p99 1.8-2.0 s, against ~630
        µs and ~30 ms with fresh plans (it had kept them only by chance: batches without
        hostnames still ran the look-up, with an empty array, cheap enough to keep the
        average custom plan under the generic one)."""
        await conn.execute("set plan_cache_mode = force_custom_plan")

    def ddl(self, schema: str) -> list[str]:
        return [
            f'create table "{schema}".router_bundles (key_id text primary key,'
            " chain_pem text not null, sealed_key text, problem text not null)"
            " with (toast_tuple_target = 8160)",
            f'create table "{schema}".router_hosts (hostname text primary key, app text not null,'
            " endpoint text not null, endpoint_type text not null, fingerprint text not null,"
            " tls_policy text not null, key_id text not null, position bigint not null)",
            f'create index on "{schema}".router_hosts (app)',
        ]

    def views(self, schema: str) -> dict[str, str]:
        """The stable view's query (see `store.point_views`)."""
        return {"router_config": _JOINED.format(schema=schema)}

    async def _data_key(self, conn: asyncpg.Connection, key_id: str) -> DataKey | None:
        if key_id not in self._data_keys:
            wrapped = await conn.fetchval(
                "select wrapped from data_keys where key_id = $1::uuid", key_id
            )
            self._data_keys[key_id] = (
                DataKey.unwrap(key_id, bytes(wrapped), self.master) if wrapped is not None else None
            )
        return self._data_keys[key_id]

    async def _prefetch_data_keys(
        self, conn: asyncpg.Connection, endpoints: list[EndpointState]
    ) -> None:
        """One query for the data keys of the certificates a batch seals."""
        wanted = {
            e.key_id
            for e in endpoints
            if e.key_id not in self._seals and e.key_id not in self._data_keys
        }
        if not wanted:
            return
        rows = await conn.fetch(
            "select key_id::text, wrapped from data_keys where key_id = any($1::uuid[])",
            list(wanted),
        )
        found = {r[0]: bytes(r[1]) for r in rows}
        for key_id in wanted:
            wrapped = found.get(key_id)
            self._data_keys[key_id] = (
                DataKey.unwrap(key_id, wrapped, self.master) if wrapped else None
            )

    async def _bundle(self, conn: asyncpg.Connection, e: EndpointState) -> Bundle:
        sealed, problem = await self._sealed(conn, e)
        return e.chain_pem, sealed, problem

    async def _sealed(self, conn: asyncpg.Connection, e: EndpointState) -> tuple[str | None, str]:
        """The key sealed for routers (once per certificate, shared by its hostnames)."""
        if e.key_id in self._seals:
            return self._seals[e.key_id]
        data_key = await self._data_key(conn, e.key_id) if e.key is not None else None
        if data_key is None or e.key is None:
            result: tuple[str | None, str] = (
                None,
                "the private key was destroyed (crypto-shredded) or is missing",
            )
        else:
            seal = self.sealer.seal(
                data_key.decrypt(e.key), key_id=e.key_id, derivation_secret=data_key.secret
            )
            result = (_SEAL.encode(seal).decode(), "")
        self._seals[e.key_id] = result
        if len(self._seals) > 50_000:
            self._seals.clear()
        return result

    async def apply(
        self, conn: asyncpg.Connection, schema: str, events: list[StoredEvent], through: int
    ) -> None:
        staged = await self.prepare(conn, schema, events)
        self._overlay = {}  # written in this same transaction: what the table shows next
        await self.write(conn, schema, staged, through)

    async def prepare(
        self, conn: asyncpg.Connection, schema: str, events: list[StoredEvent]
    ) -> Changes:
        """Fold a batch into the rows it changes (see `write`).

        Reads the rows its hostnames have now; during a rebuild the batch before may still be
        being written (see the runner), so what that batch changed is laid over them.
        """
        rows: dict[str, tuple[Host, int] | None] = {}  # hostname -> (row, position) or deleted
        changed: set[str] = set()
        if not events:
            self._overlay = {}
            return Changes({}, set(), {}, set())
        # Pass 1: fold, noting per event which hostnames it may change and to what endpoint.
        steps: list[tuple[str, str, EndpointState | None, int]] = []
        for app, before, after, event in await self.states.transitions(conn, events):
            change = event.event
            if before.endpoints is after.endpoints and isinstance(change, ONE_DOMAIN_EVENTS):
                host = change.hostname  # `hosts_changed`'s answer, without building its set
                steps.append((app, host, after.endpoint_for(host), event.position))
                continue
            for host in hosts_changed(before, after, change):
                steps.append((app, host, after.endpoint_for(host), event.position))
        # Pass 2: read only the rows those hostnames have now (not every row of their apps).
        hosts = {host for _, host, _, _ in steps}
        written = self._written
        asked = hosts if written is None else written.intersection(hosts)
        if asked:
            for r in await conn.fetch(  # one string, not an array of thousands to encode
                f"select hostname, app, endpoint, endpoint_type, fingerprint, tls_policy, key_id,"
                f' position from "{schema}".router_hosts'
                " where hostname = any(string_to_array($1, E'\\n'))",
                "\n".join(asked),
            ):
                rows[r[0]] = (tuple(r[1:7]), r[7])
        for host in hosts:
            if host in self._overlay:
                rows[host] = self._overlay[host]
        rows = {h: v for h, v in rows.items() if v is not None}
        stored = set(rows)  # hostnames with a row then: the others are inserted, not upserted
        stored_rows = dict(rows)
        serving: dict[str, EndpointState] = {}  # key id -> an endpoint with its certificate
        for app, host, endpoint, position in steps:
            current = rows.get(host)
            if endpoint is None:
                if current is not None and current[0][0] == app:
                    rows[host] = None
                    changed.add(host)
                continue
            row = (app, endpoint.name, endpoint.endpoint_type.value,
                   endpoint.certificate.fingerprint_sha256, "modern", endpoint.key_id)  # fmt: skip
            if endpoint.key_id not in serving:
                serving[endpoint.key_id] = endpoint
            if current is None or current[0] != row:
                rows[host] = (row, position)
                changed.add(host)
        self._overlay = {h: rows[h] for h in changed}
        if written is not None:
            written.update(changed)
            if len(written) > REMEMBERED:
                self._written = None
        changes = {h: rows[h] for h in changed}
        kept = {v[0][5] for v in changes.values() if v is not None}
        await self._prefetch_data_keys(conn, [serving[k] for k in kept])
        bundles = {k: await self._bundle(conn, serving[k]) for k in kept}
        released = {(v[0][5], v[0][0]) for h in changed if (v := stored_rows.get(h)) is not None}
        return Changes(
            changes,
            stored,
            bundles,
            {(key, app) for key, app in released if key not in kept},
        )

    async def write(
        self, conn: asyncpg.Connection, schema: str, changes: Changes, through: int
    ) -> None:
        """Write what `prepare` folded (inside the runner's transaction)."""
        hosts_table = f'"{schema}".router_hosts'
        bundles_table = f'"{schema}".router_bundles'
        self._applied_to = through
        if changes.bundles:  # a bundle already there stays
            keys, chains, seals, problems = zip(
                *((k, c, s or "", p) for k, (c, s, p) in changes.bundles.items()), strict=True
            )
            columns = ", ".join(packed.text_array(n) for n in range(1, 5))
            await conn.execute(
                f"insert into {bundles_table} select k, c, nullif(s, ''), p"
                f" from unnest({columns}) r(k, c, s, p) on conflict (key_id) do nothing",
                *(packed.units(column) for column in (keys, chains, seals, problems)),
            )
        deleted = [h for h, v in changes.rows.items() if v is None]
        if deleted:
            await conn.execute(f"delete from {hosts_table} where hostname = any($1)", deleted)
        written = [(h, *v[0], v[1]) for h, v in changes.rows.items() if v is not None]
        # New hostnames (all of them in a rebuild, most when apps are added) go by binary
        # COPY: asyncpg encodes an array parameter element by element in Python, and the
        # upsert's arrays were a sixth of a rebuild; the rest need the upsert.
        fresh = [r for r in written if r[0] not in changes.stored]
        if fresh:
            await conn.copy_records_to_table(
                "router_hosts", schema_name=schema, records=fresh, columns=_HOST_COLUMNS
            )
        upserts = [r for r in written if r[0] in changes.stored]
        if upserts:
            await conn.execute(  # one statement per batch: one array per column
                f"insert into {hosts_table} (hostname, app, endpoint, endpoint_type, fingerprint,"
                " tls_policy, key_id, position) select * from unnest($1::text[], $2::text[],"
                " $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[])"
                " on conflict (hostname) do update set app = excluded.app, endpoint = excluded.endpoint,"
                " endpoint_type = excluded.endpoint_type, fingerprint = excluded.fingerprint,"
                " tls_policy = excluded.tls_policy, key_id = excluded.key_id,"
                " position = excluded.position",
                *[list(column) for column in zip(*upserts, strict=True)],
            )
        if changes.released:  # bundles no row points at any more go with their last row
            keys, apps = zip(*sorted(changes.released), strict=True)
            await conn.execute(
                f"delete from {bundles_table} b using unnest($1::text[], $2::text[]) r(key_id, app)"
                f" where b.key_id = r.key_id and not exists (select from {hosts_table} h"
                "  where h.app = r.app and h.key_id = r.key_id)",  # an app's own certificates
                list(keys),
                list(apps),
            )
        if self._rebuilding:
            return  # reconcile sends the differences after the swap
        self._dirty.update(
            (h, None if v is None else (v[0], changes.bundles[v[0][5]], v[1]))
            for h, v in changes.rows.items()
        )

    async def _entries(
        self, conn: asyncpg.Connection, schema: str, hosts: list[str] | None
    ) -> dict[str, bytes]:
        query = _JOINED.format(schema=schema)
        rows = await (
            conn.fetch(query + " where h.hostname = any($1)", hosts)
            if hosts is not None
            else conn.fetch(query)
        )
        return {
            r[0]: _entry(r[0], (r[1], r[2], r[3], r[5], r[7], ""), (r[4], r[6], r[8]), r[9])
            for r in rows
        }

    async def after_commit(self, conn: asyncpg.Connection, schema: str) -> None:
        if self.kv is None:
            self._dirty.clear()
            return
        if self._needs_reconcile:
            # An earlier publish failed (NATS away): publishing just this batch and then a
            # newer `_checkpoint` would tell routers they converged while missing it. Repair
            # the whole bucket first; the checkpoint follows only once it matches the table.
            self._dirty.clear()
            await self.reconcile(conn, schema)
            return
        dirty, self._dirty = self._dirty, {}
        entries = {h: None if v is None else _entry(h, *v) for h, v in dirty.items()}
        hosts = sorted(entries)
        kv = self.kv
        try:
            # concurrently: each put waits for its JetStream ack, and acks can overlap
            await asyncio.gather(
                *(
                    kv.put(kv_key(h), value)
                    if (value := entries[h]) is not None
                    else kv.delete(kv_key(h))
                    for h in hosts
                )
            )
            # only after every entry is acked: the stream orders it after them
            await kv.put(CHECKPOINT_KEY, _checkpoint(self._applied_to))
        except Exception as e:  # the table is the truth; reconcile repairs the bucket
            log.warning("publishing to the KV bucket failed (%s); will reconcile", e)
            self._needs_reconcile = True

    async def reconcile(self, conn: asyncpg.Connection, schema: str) -> None:
        """Make the bucket equal the table: put what differs, delete what should not be there."""
        if self.kv is None:
            return
        wanted = await self._entries(conn, schema, None)
        try:
            try:
                present = [hostname_of_kv_key(k) for k in await self.kv.keys()]
            except NoKeysError:
                present = []
            puts = deletes = 0
            for host in present:
                if kv_key(host) != CHECKPOINT_KEY and host not in wanted:
                    await self.kv.delete(kv_key(host))
                    deletes += 1
            for host, value in wanted.items():
                try:
                    current = (await self.kv.get(kv_key(host))).value
                except KeyNotFoundError:
                    current = None
                if current != value:
                    await self.kv.put(kv_key(host), value)
                    puts += 1
            checkpoint = await conn.fetchval(
                "select position from projector_checkpoints where name = $1", self.name
            )
            try:
                published = (await self.kv.get(CHECKPOINT_KEY)).value
            except KeyNotFoundError:
                published = None
            if published != (value := _checkpoint(checkpoint or 0)):
                await self.kv.put(CHECKPOINT_KEY, value)
            self._needs_reconcile = False
            if puts or deletes:
                log.info("reconciled the KV bucket: %d put, %d deleted", puts, deletes)
        except Exception as e:
            log.warning("reconciling the KV bucket failed (%s); will retry", e)
            self._needs_reconcile = True

    @property
    def needs_reconcile(self) -> bool:
        return self._needs_reconcile
