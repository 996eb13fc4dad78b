"""Time travel: fold the log up to a moment with the aggregate's own `evolve`.

Two passes in one snapshot: DNS targets from the only events that change them, in log order;
then each app's stream in its own order, one app in memory at a time, so memory stays flat
whatever the log's length (history and served fold just the apps they need, in log order). DNS targets are re-derived exactly as
the `dns_targets` projection allocates them (the DomainAdded event id, re-drawn on a
collision with what is allocated at that point). Nothing here needs or touches a key.
"""

from __future__ import annotations

import array
import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg

from events.app import AppDestroyed
from events.base import Metadata
from events.codec import CURRENT_SCHEMA_VERSION, EVENT_DECODER, decode_event
from events.domain import DomainAdded, DomainRemoved
from events.endpoint import CertAdded, CertUpdated
from events.union import tag_of
from services.domain import app as app_aggregate
from services.domain.app import AppState, EndpointState
from services.domain.dns_target import (
    MAX_DRAWS,
    TargetKey,
    first_draw_digest_sql,
    key_of_digest,
    render,
    target_key,
)
from services.domain.domain_name import sni_candidates as candidates
from services.domain.streams import APP, app_stream, hostname_stream
from services.storage.event_log import STORED_COLUMNS, StoredEvent, stored_event
from services.storage.row_stream import prefetched_batches


@dataclass(frozen=True)
class Moment:
    """Up to which event: a position, a time, or (neither) the whole log."""

    position: int | None = None
    at: dt.datetime | None = None


def _up_to(moment: Moment, values: list[object]) -> str:
    """The SQL condition for "at or before `moment`", its values appended to `values`."""
    clause = ""
    if moment.position is not None:
        values.append(moment.position)
        clause += f" and position <= ${len(values)}"
    if moment.at is not None:
        values.append(moment.at)
        clause += f" and recorded_at <= ${len(values)}"
    return clause


async def stream_events(
    conn: asyncpg.Connection,
    moment: Moment,
    *,
    where: str = "true",
    args: tuple[object, ...] = (),
    order: str = "position",
    with_metadata: bool = False,
) -> AsyncIterator[list[StoredEvent]]:
    """Events up to `moment` matching `where` (placeholders from $1, values in `args`), a
    batch at a time (inside a transaction). Without metadata, a lighter select."""
    columns = STORED_COLUMNS if with_metadata else _FOLD_COLUMNS
    values: list[object] = list(args)
    query = f"select {columns} from events where ({where}){_up_to(moment, values)}"
    decode = stored_event if with_metadata else _without_metadata
    async for records in prefetched_batches(conn, f"{query} order by {order}", *values):
        yield [decode(r) for r in records]


_APP_PREFIX = f"{APP}-"


_NO_METADATA = Metadata(command_id="", actor="", correlation_id="", causation_id="")
_FOLD_COLUMNS = (
    "position, stream_id, stream_version, event_id::text, '', 0, type, schema_version,"
    " data::text, null, recorded_at"
)  # the same shape as STORED_COLUMNS, without what a fold never reads


def _without_metadata(r: asyncpg.Record) -> StoredEvent:
    """A replay that shows state needs no actor or trace: skip reading and decoding them."""
    return StoredEvent(
        position=r[0], stream_id=r[1], version=r[2], event_id=r[3], command_id=r[4],
        command_index=r[5], event=decode_event(r[6], r[7], r[8]), metadata=_NO_METADATA,
        recorded_at=r[10],
    )  # fmt: skip


@dataclass
class DnsTargets:
    """Allocation as the projection does it, on keys (one int per live hostname); names are
    rendered only when shown."""

    zone: str
    keys: dict[str, TargetKey] = field(default_factory=dict)  # hostname -> target key
    taken: set[TargetKey] = field(default_factory=set)
    hosts_of: dict[str, set[str]] = field(default_factory=dict)  # app -> its hostnames

    def apply(self, stored: StoredEvent) -> None:
        event = stored.event
        tag = _DNS_TAGS.get(type(event))
        if tag is not None:
            self.apply_raw(tag, stored.event_id, event.app, getattr(event, "hostname", None))  # type: ignore[union-attr]

    def apply_raw(self, type_: str, event_id: str, app: str, hostname: str | None) -> None:
        """The same, from the three fields the database can extract (no decoding)."""
        if type_ == "domain.added" and hostname is not None:
            for attempt in range(MAX_DRAWS):
                key = target_key(event_id, attempt)
                if key not in self.taken:
                    break
            self.keys[hostname] = key
            self.taken.add(key)
            self.hosts_of.setdefault(app, set()).add(hostname)
        elif type_ == "domain.removed" and hostname is not None:
            self._free(hostname)
            self.hosts_of.get(app, set()).discard(hostname)
        elif type_ == "app.destroyed":
            for host in self.hosts_of.pop(app, set()):
                self._free(host)

    def _free(self, host: str) -> None:
        key = self.keys.pop(host, None)
        if key is not None:
            self.taken.discard(key)

    def of(self, host: str) -> str | None:
        key = self.keys.get(host)
        return render(key, self.zone) if key is not None else None


DNS_TYPES = ("domain.added", "domain.removed", "app.destroyed")
_DNS_TAGS = {
    DomainAdded: "domain.added",
    DomainRemoved: "domain.removed",
    AppDestroyed: "app.destroyed",
}


@dataclass
class Replay:
    """The state of every app after the events seen so far."""

    zone: str
    apps: dict[str, AppState] = field(default_factory=dict)
    targets: DnsTargets = field(init=False)
    position: int = 0
    recorded_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        self.targets = DnsTargets(self.zone)

    def apply(self, stored: StoredEvent) -> tuple[str, AppState, AppState] | None:
        """Fold one event; for an app event, (app, before, after)."""
        self.position, self.recorded_at = stored.position, stored.recorded_at
        stream = stored.stream_id
        if not stream.startswith(_APP_PREFIX):
            return None
        app = stream[len(_APP_PREFIX) :]
        before = self.apps.get(app) or AppState(name=app)
        if type(stored.event) in _DNS_EVENTS:
            self.targets.apply(stored)
        after = app_aggregate.evolve(before, stored.event)  # type: ignore[arg-type]
        if type(stored.event) in _CERT_EVENTS:
            after = _without_key_material(after)
        if after.exists:
            self.apps[app] = after
        else:
            self.apps.pop(app, None)
        return app, before, after


_DNS_EVENTS = frozenset({DomainAdded, DomainRemoved, AppDestroyed})
_CERT_EVENTS = frozenset({CertAdded, CertUpdated})


def _without_key_material(state: AppState) -> AppState:
    """A replay shows certificate facts only: drop chains and (encrypted) keys, which are
    most of an app's state, so memory stays small however many apps there were."""
    endpoints = {
        name: e if not e.chain_pem and e.key is None
        else EndpointState(e.name, e.endpoint_type, e.certificate, e.key_id)
        for name, e in state.endpoints.items()
    }  # fmt: skip
    return AppState(name=state.name, exists=state.exists, domains=state.domains,
                    endpoints=endpoints)  # fmt: skip


async def fold_in_order(
    conn: asyncpg.Connection,
    moment: Moment,
    zone: str,
    *,
    where: str = "true",
    args: tuple[object, ...] = (),
    on_change: Callable[[Replay, StoredEvent, str, AppState, AppState], None] | None = None,
    with_metadata: bool = False,
) -> Replay:
    """Fold the matching events in log order (for a few apps: history, served)."""
    state = Replay(zone)
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        async for batch in stream_events(
            conn, moment, where=where, args=args, with_metadata=with_metadata
        ):
            for stored in batch:
                changed = state.apply(stored)
                if changed is not None and on_change is not None:
                    on_change(state, stored, *changed)
    return state


async def history_of(
    conn: asyncpg.Connection,
    app: str,
    moment: Moment,
    zone: str,
    on_change: Callable[[Replay, StoredEvent, str, AppState, AppState], None],
) -> Replay:
    """One app's stream in log order, with every app's DNS-changing events (for targets)."""
    state = Replay(zone)
    stream = app_stream(app)
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        async for batch in stream_events(
            conn, moment, where="stream_id = $1 or type = any($2)",
            args=(stream, list(DNS_TYPES)), with_metadata=True,
        ):  # fmt: skip
            for stored in batch:
                if stored.stream_id != stream:
                    state.targets.apply(stored)
                    continue
                changed = state.apply(stored)
                if changed is not None:
                    on_change(state, stored, *changed)
    return state


@dataclass
class Snapshot:
    """Where a replay stands: the last event up to the moment, and the DNS targets then."""

    position: int
    recorded_at: dt.datetime | None
    targets: DnsTargets


async def snapshot(
    conn: asyncpg.Connection, moment: Moment, zone: str, *, dns: bool = True
) -> Snapshot:
    """The head at `moment` (inside the replay's transaction) and, with `dns`, DNS targets
    allocated in log order from the only events that change them (the exact way; a replay
    first tries `FirstDraws`, which needs no such pass)."""
    head = await conn.fetchrow(
        "select position, recorded_at from events where ($1::bigint is null or position <= $1)"
        " and ($2::timestamptz is null or recorded_at <= $2) order by position desc limit 1",
        moment.position,
        moment.at,
    )
    targets = DnsTargets(zone)
    if not dns:
        return Snapshot(head[0] if head else 0, head[1] if head else None, targets)
    query = (
        "select type, event_id::text, data->>'app', data->>'hostname' from events"
        " where type = any($1) and ($2::bigint is null or position <= $2)"
        " and ($3::timestamptz is null or recorded_at <= $3) order by position"
    )
    async for records in prefetched_batches(
        conn, query, list(DNS_TYPES), moment.position, moment.at
    ):
        for type_, event_id, app, hostname in records:
            targets.apply_raw(type_, event_id, app, hostname)
    return Snapshot(head[0] if head else 0, head[1] if head else None, targets)


class FirstDraws:
    """DNS targets without a pass of their own. A re-draw happens only when a target is taken;
    if no first draw of any DomainAdded ever equals another, none happened, and every
    hostname's target is its first draw. Keeps 8 bytes per DomainAdded to check that."""

    def __init__(self) -> None:
        self.drawn = array.array("Q")

    def key(self, digest: bytes) -> TargetKey:
        """The first draw's key, from its digest (`first_draw_digest_sql`)."""
        key = key_of_digest(digest)
        self.drawn.append(key & 0xFFFFFFFFFFFFFFFF)
        return key

    @property
    def exact(self) -> bool:
        """False when two draws coincide: then only the log-order allocation is exact."""
        return len(set(self.drawn)) == len(self.drawn)


async def apps_at(
    conn: asyncpg.Connection,
    moment: Moment,
    *,
    app: str | None = None,
    progress: Callable[[int], None] | None = None,
    draws: FirstDraws | None = None,
    spare: asyncpg.Connection | None = None,
    chunks: int = 8,
) -> AsyncIterator[tuple[AppState, dict[str, TargetKey]]]:
    """Each app's stream folded in its own order, one app in memory at a time, yielded if it
    exists at the moment (inside a transaction). Memory stays flat whatever the log's length
    and however many apps there were. With a `spare` connection (in a transaction too), the
    apps are read in `chunks` partitions, the next one sorted by PostgreSQL on the other core
    while this one is folded; give a `moment` with a position so both see the same events."""
    values: list[object] = [app_stream(app) if app else f"{APP}-%"]
    query = (
        "select stream_id, type, schema_version, data::text, case when type = 'domain.added'"
        f" then {first_draw_digest_sql('event_id::text')} end from events where "
    ) + (
        "stream_id = $1" if app else "stream_id like $1"
    )  # only what a fold reads: every column less is less to send and parse
    query += _up_to(moment, values)
    current: AppState | None = None
    keys: dict[str, TargetKey] = {}  # this app's hostnames' first-draw targets
    draws = draws or FirstDraws()
    stream: str | None = None
    done = 0
    evolve, draw = app_aggregate.evolve, draws.key
    decode, versions = EVENT_DECODER.decode, CURRENT_SCHEMA_VERSION
    conns = [conn] if spare is None or app else [conn, spare]
    async for records in _chunked(conns, query, values, chunks if len(conns) > 1 else 1):
        for stream_id, type_, version, data, first_draw in records:
            if stream_id != stream:
                if current is not None and current.exists:
                    yield current, keys
                stream = stream_id
                current = AppState(name=stream_id[len(_APP_PREFIX) :])
                keys = {}
            event = (  # `decode_event`, its common case inlined: this loop runs per event
                decode(data)
                if versions.get(type_) == version
                else decode_event(type_, version, data)
            )
            if first_draw is not None:
                keys[event.hostname] = draw(first_draw)  # type: ignore[union-attr]
            elif type(event) is DomainRemoved:
                keys.pop(event.hostname, None)
            current = evolve(current, event)  # type: ignore[arg-type]
            if type(event) in _CERT_EVENTS:
                current = _without_key_material(current)
        done += len(records)
        if progress is not None:
            progress(done)
    if current is not None and current.exists:
        yield current, keys


async def _chunked(
    conns: list[asyncpg.Connection], query: str, values: list[object], chunks: int
) -> AsyncIterator[list[asyncpg.Record]]:
    """The query's rows partitioned by stream, partition k on connection k mod 2; the next
    partition's first batch (and so its sort) is requested before this one is read."""

    def part(k: int) -> AsyncIterator[list[asyncpg.Record]]:
        where = f" and (hashtext(stream_id) & 2147483647) % {chunks} = {k}" if chunks > 1 else ""
        order = " order by stream_id, stream_version"
        return prefetched_batches(conns[k % len(conns)], query + where + order, *values)

    parts = [part(k) for k in range(chunks)]
    upcoming = asyncio.ensure_future(anext(parts[0], None))
    for k in range(chunks):
        first = await upcoming
        if k + 1 < chunks and len(conns) > 1:
            upcoming = asyncio.ensure_future(anext(parts[k + 1], None))
        if first is not None:
            yield first
            async for batch in parts[k]:
                yield batch
        if k + 1 < chunks and len(conns) == 1:
            upcoming = asyncio.ensure_future(anext(parts[k + 1], None))


# -- what a reader sees --------------------------------------------------------------------


def endpoint_summary(
    e: EndpointState, app: AppState, served: list[str] | None = None
) -> dict[str, object]:
    """`served`: the hostnames naming this endpoint, sorted, if the caller has them."""
    c = e.certificate
    return {
        "name": e.name,
        "type": e.endpoint_type.value,
        "fingerprint_sha256": c.fingerprint_sha256,
        "subject": c.subject,
        "issuer": c.issuer,
        "sans": list(c.sans),
        "not_before": c.not_before,
        "not_after": c.not_after,
        "domains": app.served_by(e.name) if served is None else served,
    }


def app_summary(
    app: AppState, targets: DnsTargets | Callable[[str], str | None]
) -> dict[str, object]:
    target_of = targets.of if isinstance(targets, DnsTargets) else targets
    # one pass over the domains (a replay summarises every app): what `endpoint_for` and
    # `served_by` would give, without a look-up per domain and a sort per endpoint
    endpoints, legacy = app.endpoints, app.legacy()
    domains: dict[str, object] = {}
    served: dict[str, list[str]] = {}
    for host, d in sorted(app.domains.items()):
        name = d.endpoint
        e = endpoints.get(name) if name else legacy
        domains[host] = {
            "dns_target": target_of(host),
            "endpoint": e.name if e else None,
            "dns_verified": d.dns_verified,
        }
        if e is not None:  # a legacy SSL Endpoint serves what no SNI endpoint claims
            served.setdefault(e.name, []).append(host)
    return {
        "app": app.name,
        "domains": domains,
        "endpoints": {
            name: endpoint_summary(e, app, served.get(name, []))
            for name, e in sorted(endpoints.items())
        },
    }


def diff(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """What changed between two summaries, one line each (`+` added, `-` removed, `~` changed)."""
    lines: list[str] = []
    for section in ("domains", "endpoints"):
        old: dict[str, dict[str, object]] = before.get(section, {})  # type: ignore[assignment]
        new: dict[str, dict[str, object]] = after.get(section, {})  # type: ignore[assignment]
        singular = section[:-1]
        for key in sorted(new.keys() - old.keys()):
            lines.append(f"+ {singular} {key}: {_describe(new[key])}")
        for key in sorted(old.keys() - new.keys()):
            lines.append(f"- {singular} {key}")
        for key in sorted(old.keys() & new.keys()):
            if old[key] != new[key]:
                changes = [
                    f"{k} {_short(old[key].get(k))} → {_short(v)}"
                    for k, v in new[key].items()
                    if old[key].get(k) != v
                ]
                lines.append(f"~ {singular} {key}: {'; '.join(changes)}")
    return lines


def _short(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, str) and len(value) == 64:
        return value[:16] + "…"  # a fingerprint
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _describe(value: object) -> str:
    if not isinstance(value, dict):
        return str(value)
    return ", ".join(f"{k} {_short(v)}" for k, v in value.items() if v not in (None, [], ""))


@dataclass(frozen=True)
class Served:
    """What routers were configured to serve for a hostname, and since which event."""

    hostname: str  # the name asked about
    entry: str  # the configured name that matched it (itself, or a wildcard one label up)
    app: str
    endpoint: dict[str, object]
    since_position: int
    since_at: dt.datetime
    since_event: str


async def served_at(
    conn: asyncpg.Connection, hostname: str, moment: Moment, zone: str
) -> tuple[Served | None, Replay]:
    """Replay to `moment`, tracking each candidate name's serving endpoint as it changes."""
    names = candidates(hostname)
    current: dict[str, tuple[str, str, str] | None] = dict.fromkeys(names)
    since: dict[str, tuple[int, dt.datetime, str]] = {}

    def on_change(
        state: Replay, stored: StoredEvent, app: str, before: AppState, after: AppState
    ) -> None:
        for name in names:
            if name not in before.domains and name not in after.domains:
                continue
            e = after.endpoint_for(name) if after.exists and name in after.domains else None
            identity = (app, e.name, e.certificate.fingerprint_sha256) if e else None
            if identity != current[name] and (identity is not None or current[name] is not None):
                if current[name] is not None and current[name][0] != app and identity is None:  # type: ignore[index]
                    continue  # another app's event cannot take this app's hostname away
                current[name] = identity
                since[name] = (stored.position, stored.recorded_at, tag_of(type(stored.event)))

    claims = [hostname_stream(n) for n in names]
    apps = [
        r[0]
        for r in await conn.fetch(
            "select distinct data->>'app' from events where stream_id = any($1)", claims
        )
        if r[0]
    ]
    state = await fold_in_order(
        conn, moment, zone, where="stream_id = any($1)",
        args=([app_stream(a) for a in apps],), on_change=on_change,
    )  # fmt: skip
    for name in names:
        identity = current[name]
        if identity is None:
            continue
        app = state.apps[identity[0]]
        endpoint = app.endpoints[identity[1]]
        position, at, event = since[name]
        return Served(
            hostname, name, app.name, endpoint_summary(endpoint, app), position, at, event
        ), state
    return None, state
