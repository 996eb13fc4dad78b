"""Time travel: fold the log up to a moment with the aggregate's own `evolve`.

Rows stream through a server-side cursor and only per-app states are kept, so memory grows
with the number of apps, never with the log's length. DNS targets are re-derived exactly as
the `dns_targets` projection allocates them (the DomainAdded event id, re-drawn on a
collision with what is allocated at that point). Nothing here needs or touches a key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg

from events.app import AppDestroyed
from events.base import Metadata
from events.codec import decode_event
from events.domain import DomainAdded, DomainRemoved
from events.union import tag_of
from services.domain import app as app_aggregate
from services.domain.app import AppState, EndpointState
from services.domain.dns_target import MAX_DRAWS, TargetKey, render, target_key
from services.domain.domain_name import sni_candidates as candidates
from services.domain.streams import APP
from services.storage.event_log import STORED_COLUMNS, StoredEvent, stored_event
from services.storage.row_stream import prefetched_batches


@dataclass(frozen=True)
class Moment:
    """Up to which event: a position, a time, or (neither) the whole log."""

    position: int | None = None
    at: dt.datetime | None = None


async def stream_events(
    conn: asyncpg.Connection,
    moment: Moment,
    *,
    stream_id: str | None = None,
    apps_only: bool = False,
    with_metadata: bool = True,
) -> AsyncIterator[list[StoredEvent]]:
    """Events up to `moment`, in position order, a batch at a time (inside a transaction).
    `apps_only` decodes only app streams' events (the others are read, not decoded)."""
    # without metadata, a lighter select: the columns a fold needs (metadata is the largest)
    columns = STORED_COLUMNS if with_metadata else _FOLD_COLUMNS
    query = f"select {columns} from events where true"
    args: list[object] = []
    if moment.position is not None:
        args.append(moment.position)
        query += f" and position <= ${len(args)}"
    if moment.at is not None:
        args.append(moment.at)
        query += f" and recorded_at <= ${len(args)}"
    if stream_id is not None:
        args.append(stream_id)
        query += f" and stream_id = ${len(args)}"
    async for records in prefetched_batches(conn, query + " order by position", *args):
        decode = stored_event if with_metadata else _without_metadata
        yield [decode(r) for r in records if not apps_only or r[1].startswith(_APP_PREFIX)] or [
            _position_only(records[-1])
        ]


_APP_PREFIX = f"{APP}-"


def _position_only(record: asyncpg.Record) -> StoredEvent:
    """A batch without app events still moves the replay's position."""
    return _without_metadata(record) if record[9] is None else stored_event(record)


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
    """Allocation as the projection does it, on keys; names are rendered only when shown."""

    zone: str
    keys: dict[str, TargetKey] = field(default_factory=dict)  # hostname -> target key
    taken: set[TargetKey] = field(default_factory=set)

    def apply(self, stored: StoredEvent, state_before: AppState | None) -> None:
        event, kind = stored.event, type(stored.event)
        if kind is DomainAdded:
            for attempt in range(MAX_DRAWS):
                key = target_key(stored.event_id, attempt)
                if key not in self.taken:
                    break
            self.keys[event.hostname] = key  # type: ignore[union-attr]
            self.taken.add(key)
        elif kind is DomainRemoved:
            self._free(event.hostname)  # type: ignore[union-attr]
        elif kind is AppDestroyed:
            for host in state_before.domains if state_before else ():
                self._free(host)

    def _free(self, host: str) -> None:
        key = self.keys.pop(host, None)
        if key is not None:
            self.taken.discard(key)

    def of(self, host: str) -> str | None:
        key = self.keys.get(host)
        return render(key, self.zone) if key is not None else None


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
            self.targets.apply(stored, before)
        after = app_aggregate.evolve(before, stored.event)  # type: ignore[arg-type]
        if after.exists:
            self.apps[app] = after
        else:
            self.apps.pop(app, None)
        return app, before, after


_DNS_EVENTS = frozenset({DomainAdded, DomainRemoved, AppDestroyed})


async def replay(
    conn: asyncpg.Connection,
    moment: Moment,
    zone: str,
    *,
    progress: Callable[[int], None] | None = None,
    on_change: Callable[[Replay, StoredEvent, str, AppState, AppState], None] | None = None,
    with_metadata: bool = False,
) -> Replay:
    state = Replay(zone)
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        async for batch in stream_events(conn, moment, apps_only=True, with_metadata=with_metadata):
            for stored in batch:
                changed = state.apply(stored)
                if changed is not None and on_change is not None:
                    on_change(state, stored, *changed)
            if progress is not None:
                progress(batch[-1].position)
    return state


# -- what a reader sees --------------------------------------------------------------------


def endpoint_summary(e: EndpointState, app: AppState) -> dict[str, object]:
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
        "domains": app.served_by(e.name),
    }


def app_summary(app: AppState, targets: DnsTargets) -> dict[str, object]:
    return {
        "app": app.name,
        "domains": {
            host: {
                "dns_target": targets.of(host),
                "endpoint": (app.endpoint_for(host).name if app.endpoint_for(host) else None),  # type: ignore[union-attr]
                "dns_verified": d.dns_verified,
            }
            for host, d in sorted(app.domains.items())
        },
        "endpoints": {name: endpoint_summary(e, app) for name, e in sorted(app.endpoints.items())},
    }


def diff(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """What changed between two summaries, one line each (`+` added, `-` removed, `~` changed)."""
    lines: list[str] = []
    for section in ("domains", "endpoints"):
        old: dict[str, object] = before.get(section, {})  # type: ignore[assignment]
        new: dict[str, object] = after.get(section, {})  # type: ignore[assignment]
        singular = section[:-1]
        for key in sorted(new.keys() - old.keys()):
            lines.append(f"+ {singular} {key}: {_describe(new[key])}")
        for key in sorted(old.keys() - new.keys()):
            lines.append(f"- {singular} {key}")
        for key in sorted(old.keys() & new.keys()):
            if old[key] != new[key]:
                changes = [
                    f"{k} {_short(old[key].get(k))} → {_short(v)}"  # type: ignore[union-attr]
                    for k, v in new[key].items()  # type: ignore[union-attr]
                    if old[key].get(k) != v  # type: ignore[union-attr]
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

    state = await replay(conn, moment, zone, on_change=on_change)
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
