"""Command handling: load state, decide (pure), append with expected versions, reply.

The happy path reads nothing from the database: stream states are cached per version, and
the append's version check catches a stale cache (another gateway wrote), after which the
stream is re-read and the command decided again, a bounded number of times. Commands on
one app are serialized within a gateway so they do not conflict with each other.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from events.app import AppDestroyed
from events.base import Metadata
from events.codec import CommandEnvelope
from events.endpoint import (
    AddCert,
    CertAdded,
    CertRemoved,
    CertUpdated,
    EndpointDestroyed,
    UpdateCert,
)
from events.projection import SkipProjection
from events.replies import (
    Accepted,
    Rejected,
)
from services.domain import app as app_aggregate
from services.domain.app import AppState, Decision, HostnameState
from services.domain.errors import Rejected as RejectedError
from services.domain.ids import TimeOrderedIds, canonical_uuid
from services.domain.projection_ops import DeadLetter, decide_skip
from services.domain.streams import (
    APP,
    app_stream,
    category,
    hostname_stream,
    projection_stream,
    stream_key,
)
from services.gateway.affinity import Affinity
from services.gateway.bundle_workers import BundleWorkers
from services.gateway.group_commit import GroupCommitter
from services.storage.event_log import (
    AppendRequest,
    AppendResult,
    AppendStatus,
    NewDataKey,
    NewEvent,
    PostgresEventLog,
    StoredEvent,
)

log = logging.getLogger("certplane.gateway")

# Re-decide after a version conflict (another gateway wrote the stream). The pause lets a
# gateway that keeps winning the race drain its burst; jitter breaks lock-step retries.
CONFLICT_BACKOFF_S = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
MAX_ATTEMPTS = len(CONFLICT_BACKOFF_S) + 1
Clock = Callable[[], dt.datetime]


_SHREDDING = (AppDestroyed, CertUpdated, CertRemoved, EndpointDestroyed)


# Event ids: unique, not secret (no system call per id: os.urandom per event showed up in
# profiles), and time-ordered, so that each is appended at the right edge of the log's
# unique index on them (bench/append_sql.py: 3-8 % less of PostgreSQL's CPU and 4 % less
# WAL a command than random ids, and a random id dirtied a random page of an index that
# only grows).
_event_id = TimeOrderedIds(random.Random())  # seeded from os.urandom


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class StreamCache:
    """Bounded LRU of folded stream states, keyed by stream id, each with its version."""

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._max = max_entries

    def get(self, stream: str) -> tuple[int, Any] | None:
        entry = self._entries.get(stream)
        if entry is not None:
            self._entries.move_to_end(stream)
        return entry

    def put(self, stream: str, version: int, state: Any) -> None:
        self._entries[stream] = (version, state)
        self._entries.move_to_end(stream)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def advance(self, stream: str, expected: int, version: int, state: Any) -> None:
        """Store `state` at `version` only if the cache still holds `expected`, else forget it."""
        entry = self._entries.get(stream)
        if entry is not None and entry[0] == expected:
            self.put(stream, version, state)
        else:
            self._entries.pop(stream, None)

    def follow(self, stream: str, version: int, event: Any) -> None:
        """Fold in an event another gateway appended, if it is the next one for a cached state
        (or a new stream's first); after a gap the entry is forgotten (read again when needed)."""
        entry = self._entries.get(stream)
        if entry is None:
            if version == 1:
                self.put(stream, 1, _evolve(stream, _initial(stream), event))
        elif entry[0] == version - 1:
            self.put(stream, version, _evolve(stream, entry[1], event))
        elif entry[0] < version:
            del self._entries[stream]


class _KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def __call__(self, key: str) -> _Held:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        await lock.acquire()
        return _Held(self, key, lock)

    def busy(self, key: str) -> bool:
        """Whether a command holds or waits for this key's lock."""
        return key in self._locks

    def release(self, key: str, lock: asyncio.Lock) -> None:
        lock.release()
        _, users = self._locks[key]
        if users == 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)


class _Held:
    def __init__(self, owner: _KeyedLocks, key: str, lock: asyncio.Lock) -> None:
        self._owner, self._key, self._lock = owner, key, lock

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        self._owner.release(self._key, self._lock)


def _initial(stream: str) -> Any:
    key = stream_key(stream)
    match category(stream):
        case "app":
            return AppState(name=key)
        case "hostname":
            return HostnameState(hostname=key)
    return None  # projection streams: only their version matters


def _evolve(stream: str, state: Any, event: Any) -> Any:
    match category(stream):
        case "app":
            return app_aggregate.evolve(state, event)
        case "hostname":
            return app_aggregate.evolve_hostname(state, event)
    return state


MAX_LABEL = 256  # characters of an actor, a correlation or a causation id: names, not documents


def _label_problem(what: str, value: str) -> str:
    """What is wrong with an envelope's actor or correlation/causation id ("" if nothing)."""
    if not value:
        return (
            f"The command's {what} is empty: send who makes the change (the certplane command"
            " sends user@host, or $CERTPLANE_ACTOR)."
        )
    if len(value) > MAX_LABEL:
        return (
            f"The command's {what} ({value[:32]!r}...) is {len(value):,} characters long:"
            f" at most {MAX_LABEL} are recorded; send a short name or id."
        )
    if not value.isprintable():
        return (
            f"The command's {what} {value!r} contains control characters (a newline, say):"
            " send it as plain text on one line."
        )
    return ""


def _metadata(
    envelope: CommandEnvelope, traceparent: str, warnings: list[str] | None = None
) -> Metadata:
    """What every event of a command records about it (the id also correlates by default)."""
    return Metadata(
        command_id=envelope.id,
        actor=envelope.actor,
        correlation_id=envelope.correlation_id or envelope.id,
        causation_id=envelope.causation_id or envelope.id,
        traceparent=traceparent,
        warnings=warnings or [],
    )


def accepted_from_stored(events: list[StoredEvent]) -> Accepted:
    """The reply a command got, rebuilt from its events in the log (for repeats)."""
    app_events = [e for e in events if category(e.stream_id) == APP] or events
    return Accepted(
        stream=app_events[-1].stream_id,
        version=app_events[-1].version,
        position=max(e.position for e in events),
        events=[e.event for e in events],
        warnings=list(events[0].metadata.warnings),
    )


def rejected_reply(error: RejectedError) -> Rejected:
    return Rejected(code=error.code, message=error.message, details=dict(error.details))


# (request, decision, expected versions, states after it by stream, its append)
Submitted = tuple[
    AppendRequest,
    Decision,
    dict[str, int],
    dict[str, tuple[int, Any]],
    "asyncio.Future[AppendResult]",
]


@dataclass
class _Unsettled:
    """A refusal decided on a pending state: wait for these appends and decide again."""

    appends: list[asyncio.Future[AppendResult]]


class Forward(Exception):
    """The app is contended and another gateway owns it (see `affinity`): hand it this
    command. Nothing of the command was appended here."""

    def __init__(self, gateway: str) -> None:
        super().__init__(gateway)
        self.gateway = gateway


class _Behind:
    """Accepted on appended facts while later commands of its streams are pending: their
    appends come first, so this one must be decided again on the state they make."""


_BEHIND = _Behind()


class CommandHandler:
    def __init__(
        self,
        event_log: PostgresEventLog,
        committer: GroupCommitter,
        bundles: BundleWorkers,
        *,
        clock: Clock = utcnow,
        cache_size: int = 10_000,
        affinity: Affinity | None = None,
    ) -> None:
        self._log = event_log
        self._affinity = affinity
        self._committer = committer
        self._bundles = bundles
        self._clock = clock
        self._cache = StreamCache(cache_size)
        self._app_locks = _KeyedLocks()
        # stream -> (version, state, append) after appends handed to the group commit and not
        # yet settled: what the app's next command decides on
        self._pending: dict[str, tuple[int, Any, asyncio.Future[AppendResult]]] = {}
        self.conflicts = 0

    def observe(self, events: list[tuple[str, int, Any]]) -> None:
        """Events other gateways appended (see `coherence`), folded into the cached states."""
        for stream, version, event in events:
            self._cache.follow(stream, version, event)

    async def handle(
        self, envelope: CommandEnvelope, traceparent: str, *, forwardable: bool = False
    ) -> Accepted | Rejected:
        """Carry out one command; a repeat of an accepted command id answers the original reply.

        `forwardable`: raise `Forward` rather than retry when another gateway owns the app."""
        try:
            envelope = self._checked_envelope(envelope)
        except RejectedError as error:
            return rejected_reply(error)
        command = envelope.command
        try:
            if isinstance(command, SkipProjection):
                async with await self._app_locks(projection_stream(command.projection)):
                    return await self._skip_projection(envelope, command, traceparent)
            return await self._decide_and_append(envelope, traceparent, forwardable)
        except RejectedError as error:
            # A retried command may be refused now (e.g. "app exists") although its first
            # delivery succeeded: the log is the judge of whether it already happened.
            original = await self._log.read_command(envelope.id)
            return accepted_from_stored(original) if original else rejected_reply(error)

    def _known(self, stream: str, settled: bool) -> tuple[int, Any] | None:
        """A stream's state as the next command should see it: after the commands still being
        appended (unless only `settled` facts will do), else as cached."""
        pending = None if settled else self._pending.get(stream)
        return pending[:2] if pending is not None else self._cache.get(stream)

    async def _load(
        self, stream: str, *, refresh: bool = False, settled: bool = False
    ) -> tuple[int, Any]:
        known = self._known(stream, settled)
        if known is not None and not refresh:
            return known
        cached = self._cache.get(stream)
        version, state = cached if cached is not None else (0, _initial(stream))
        for stored in await self._log.read_stream(stream, after_version=version):
            state = _evolve(stream, state, stored.event)
            version = stored.version
        self._cache.put(stream, version, state)
        return version, state

    async def _load_many(self, streams: list[str]) -> dict[str, tuple[int, Any]]:
        """Streams the cache lacks, read in one query; each is cached too."""
        if not streams:
            return {}
        found = await self._log.read_streams(streams)
        loaded = {}
        for stream in streams:
            version, state = 0, _initial(stream)
            for stored in found.get(stream, ()):
                state = _evolve(stream, state, stored.event)
                version = stored.version
            self._cache.put(stream, version, state)
            loaded[stream] = (version, state)
        return loaded

    async def _decide_and_append(
        self, envelope: CommandEnvelope, traceparent: str, forwardable: bool = False
    ) -> Accepted | Rejected:
        """Decide under the app's lock, append after releasing it.

        The lock is held while deciding and handing the events to the group commit, not
        while they are appended: the app's next command decides on the state those events
        make (`_pending`), so one app's commands share batches instead of waiting one append
        each (750 a second with 64 clients on one app, before). The log's version check keeps
        this honest: if a command's append fails, those decided after it on its state fail
        too, and decide again on what the log holds. A refusal is only given on appended
        facts (`settled`), never on a state that may not come to be.
        """
        command = envelope.command
        assert not isinstance(command, SkipProjection)  # `handle` takes those elsewhere
        now = self._clock()
        new_keys: list[NewDataKey] = []
        cert = None
        if isinstance(command, AddCert | UpdateCert):
            prepared = await self._bundles.prepare(command.certificates, command.key, now)
            cert, new_keys = prepared.cert, [prepared.new_key]
        app_id = app_stream(command.app)
        started = time.monotonic()
        settled = False  # decide on the appended state only (after a refusal on a pending one)
        for _attempt in range(MAX_ATTEMPTS):
            async with await self._app_locks(app_id):
                step = await self._decide(envelope, traceparent, now, cert, new_keys, settled)
            if isinstance(step, _Unsettled):
                # Refused on a state still being appended: wait for it, then decide again.
                await asyncio.gather(*step.appends, return_exceptions=True)
                settled = True
                continue
            if isinstance(step, _Behind):
                settled = False
                continue
            if step is None:  # refused on an assumption, now replaced by facts
                continue
            try:
                result = await step[4]
            finally:
                self._settle(step[0], step[4])
            if result.status is AppendStatus.OK:
                return self._accepted(app_id, step, result)
            if result.status is AppendStatus.DUPLICATE:
                return accepted_from_stored(await self._log.read_command(envelope.id))
            self.conflicts += 1
            if forwardable and self._affinity is not None and result.stream == app_id:
                owner = self._affinity.contended(command.app)
                if owner is not None:
                    raise Forward(owner)
            if _attempt < len(CONFLICT_BACKOFF_S):
                pause = CONFLICT_BACKOFF_S[_attempt] * (0.5 + random.random())
                log.debug(
                    "conflict on %s (attempt %d, %.0f ms elapsed): retrying in %.1f ms",
                    result.stream,
                    _attempt + 1,
                    (time.monotonic() - started) * 1000,
                    pause * 1000,
                )
                await asyncio.sleep(pause)
            await self._load(result.stream, refresh=True)
        raise RejectedError(
            "busy",
            f"{command.app} was changed by other commands {MAX_ATTEMPTS} times while this one was "
            "being decided: send the same command again (with the same id).",
        )

    async def _decide(
        self,
        envelope: CommandEnvelope,
        traceparent: str,
        now: dt.datetime,
        cert: app_aggregate.PreparedCert | None,
        new_keys: list[NewDataKey],
        settled: bool,
    ) -> Submitted | _Unsettled | _Behind | None:
        """Under the app's lock: decide, and hand the events to the group commit."""
        command = envelope.command
        assert not isinstance(command, SkipProjection)
        app_id = app_stream(command.app)
        # The appends this decision rests on, read where the states are read: it may only be
        # appended with them (`submit(..., requires)`).
        requires: list[asyncio.Future[AppendResult]] = []
        entry = None if settled else self._pending.get(app_id)
        if entry is not None:
            requires.append(entry[2])
        app_version, app_state = await self._load(app_id, settled=settled)  # no await if pending
        versions = {app_id: app_version}
        hostnames: dict[str, HostnameState] = {}
        assumed: list[str] = []
        related = app_aggregate.related_hostnames(app_state, command)
        known: dict[str, tuple[int, Any] | None] = {}
        for host in related:
            entry = None if settled else self._pending.get(hostname_stream(host))
            if entry is not None:
                requires.append(entry[2])
            known[host] = self._known(hostname_stream(host), settled)
        # The app's own hostnames are claimed, so their streams exist: read the ones the
        # cache lacks, all at once (a destroy releases every one of them).
        claimed = await self._load_many(
            [hostname_stream(h) for h, c in known.items() if c is None and h in app_state.domains]
        )
        for host in related:
            stream = hostname_stream(host)
            cached = known[host] or claimed.get(stream)
            if cached is None:
                # Other hostnames are mostly new: assume so rather than read. The append's
                # version check proves it; a refusal based on the assumption is re-decided
                # on facts.
                cached = (0, _initial(stream))
                assumed.append(stream)
            versions[stream], hostnames[host] = cached
        try:
            decision = app_aggregate.decide(
                app_state, hostnames, command, now=now, seed=envelope.id, cert=cert
            )
        except RejectedError:
            appends = [self._pending[s][2] for s in versions if s in self._pending]
            if appends and not settled:
                return _Unsettled(appends)
            if not assumed:
                raise
            for stream in assumed:
                await self._load(stream, refresh=True)
            return None
        if settled and any(stream in self._pending for stream in versions):
            # Appended at the settled versions it would conflict with those pending appends
            # and, being pending itself, misguide the commands decided after it.
            return _BEHIND
        return self._submit(
            envelope, traceparent, decision, versions, app_state, hostnames, new_keys, requires
        )

    def _submit(
        self,
        envelope: CommandEnvelope,
        traceparent: str,
        decision: Decision,
        versions: dict[str, int],
        app_state: AppState,
        hostnames: dict[str, HostnameState],
        new_keys: list[NewDataKey],
        requires: list[asyncio.Future[AppendResult]],
    ) -> Submitted:
        """Hand a decision's events to the group commit; what the streams become is pending
        until the append settles. Synchronous: nothing may change the states in between."""
        app_id = next(iter(versions))  # the app's stream comes first
        app_version = versions[app_id]
        metadata = _metadata(envelope, traceparent, decision.warnings)
        shred = [
            key_id
            for _, event in decision.events
            if isinstance(event, _SHREDDING)
            for key_id in event.shredded_key_ids
        ]
        request = AppendRequest(
            command_id=envelope.id,
            expected=versions,
            events=[NewEvent(s, e, metadata, _event_id()) for s, e in decision.events],
            new_keys=new_keys
            if any(isinstance(e, CertAdded | CertUpdated) for _, e in decision.events)
            else [],
            shred=shred,
        )
        submitted = self._committer.submit(request, dict.fromkeys(requires))
        # What the app's next command sees, until this append settles (see `_settle`).
        after: dict[str, tuple[int, Any]] = {app_id: (app_version, app_state)}
        for host, state in hostnames.items():
            after[hostname_stream(host)] = (versions[hostname_stream(host)], state)
        for stream, event in decision.events:
            version, state = after[stream]
            after[stream] = (version + 1, _evolve(stream, state, event))
        for stream, (version, state) in after.items():
            if version != versions[stream]:
                self._pending[stream] = (version, state, submitted)
        return request, decision, versions, after, submitted

    def _accepted(self, app_id: str, step: Submitted, result: AppendResult) -> Accepted:
        """The reply to an appended command; its streams' states become the cached ones."""
        _, decision, versions, after, _ = step
        for stream, (version, state) in after.items():
            if version != versions[stream]:
                self._cache.advance(stream, versions[stream], version, state)
        app_positions = [
            v for (s, _), v in zip(decision.events, result.versions, strict=True) if s == app_id
        ]
        return Accepted(
            stream=app_id,
            version=app_positions[-1] if app_positions else versions[app_id],
            position=max(result.positions),
            events=[e for _, e in decision.events],  # type: ignore[misc]
            warnings=decision.warnings,
        )

    def submit_known(self, envelope: CommandEnvelope, traceparent: str) -> Submitted | None:
        """The fast path: decide a command on states already in hand and hand its events to
        the group commit, synchronously; None if it needs `handle` (the slow path).

        Most commands under load are small ones on apps whose states are cached or pending,
        and are accepted. For them the slow path's task, per-app lock and chain of
        coroutines cost a third of the gateway's CPU (bench/lean_gateway.py). Deciding in
        the message callback itself keeps the order the app's lock keeps: commands are
        decided one after another, each on the state the last one makes. Everything else
        goes the slow way, which reads, waits and retries: a command that needs a bundle
        worker, reads the log or is refused (a refusal is only given on appended facts, and
        a retried command's may be answered by the log), and any app a slow command is
        deciding (its lock is taken or awaited).
        """
        command = envelope.command
        if isinstance(command, SkipProjection | AddCert | UpdateCert):
            return None
        app_id = app_stream(command.app)
        if self._app_locks.busy(app_id):
            return None
        try:
            envelope = self._checked_envelope(envelope)
        except RejectedError:
            return None
        app = self._known(app_id, settled=False)
        if app is None:
            return None
        app_version, app_state = app
        requires: list[asyncio.Future[AppendResult]] = []
        entry = self._pending.get(app_id)
        if entry is not None:
            requires.append(entry[2])
        versions = {app_id: app_version}
        hostnames: dict[str, HostnameState] = {}
        for host in app_aggregate.related_hostnames(app_state, command):
            stream = hostname_stream(host)
            entry = self._pending.get(stream)
            if entry is not None:
                requires.append(entry[2])
            known = self._known(stream, settled=False)
            if known is None:
                if host in app_state.domains:
                    return None  # claimed, so its stream exists: the slow path reads it
                known = (0, _initial(stream))  # mostly new: the append's version check proves it
            versions[stream], hostnames[host] = known
        try:
            decision = app_aggregate.decide(
                app_state, hostnames, command, now=self._clock(), seed=envelope.id, cert=None
            )
        except RejectedError:
            return None
        return self._submit(
            envelope, traceparent, decision, versions, app_state, hostnames, [], requires
        )

    def finish_known(self, step: Submitted) -> Accepted | None:
        """A fast-path command's append settled (call it as soon as it has): the reply, or
        None if the command must go the slow way after all (a conflict, a repeated command
        id, a failed append: the slow path decides again, retries or reads the log)."""
        request, _, _, _, submitted = step
        self._settle(request, submitted)
        if submitted.cancelled() or submitted.exception() is not None:
            return None
        result = submitted.result()
        if result.status is AppendStatus.OK:
            return self._accepted(next(iter(request.expected)), step, result)
        if result.status is AppendStatus.CONFLICT:
            self.conflicts += 1
            app_id = next(iter(request.expected))
            if self._affinity is not None and result.stream == app_id:
                # Another gateway may be winning the app's stream: then the slow path hands
                # this command, and the app's next ones, to that gateway (see `affinity`).
                self._affinity.contended(stream_key(app_id))
        return None

    def _settle(self, request: AppendRequest, submitted: asyncio.Future[AppendResult]) -> None:
        """Forget what this append made pending. If it failed, forget what later commands
        decided on top of it too: their appends will fail the same way and decide again."""
        failed = submitted.cancelled() or submitted.exception() is not None
        failed = failed or submitted.result().status is not AppendStatus.OK
        for stream in request.expected:
            entry = self._pending.get(stream)
            if entry is not None and (failed or entry[2] is submitted):
                del self._pending[stream]

    async def _skip_projection(
        self, envelope: CommandEnvelope, command: SkipProjection, traceparent: str
    ) -> Accepted | Rejected:
        """Audit the skip in the log, then mark the dead letter so the projector moves on."""
        row = await self._log.pool.fetchrow(
            "select event_type, error, skipped_at is not null from projector_dead_letters"
            " where name = $1 and position = $2",
            command.projection,
            command.position,
        )
        dead = (
            DeadLetter(command.projection, command.position, row[0], row[1], row[2])
            if row
            else None
        )
        event = decide_skip(dead, command)
        stream = projection_stream(command.projection)
        version, _ = await self._load(stream, refresh=True)
        metadata = _metadata(envelope, traceparent)
        result = await self._committer.append(
            AppendRequest(
                command_id=envelope.id,
                expected={stream: version},
                events=[NewEvent(stream, event, metadata, _event_id())],
            )
        )
        if result.status is AppendStatus.CONFLICT:
            raise RejectedError("busy", "Another skip was recorded at the same time: try again.")
        if result.status is AppendStatus.DUPLICATE:
            reply = accepted_from_stored(await self._log.read_command(envelope.id))
        else:
            reply = Accepted(
                stream=stream,
                version=result.versions[0],
                position=result.positions[0],
                events=[event],
            )
        await self._log.pool.execute(
            "update projector_dead_letters set skipped_at = now(), skipped_by = $3,"
            " skip_position = $4 where name = $1 and position = $2 and skipped_at is null",
            command.projection,
            command.position,
            envelope.actor,
            reply.position,
        )
        return reply

    @classmethod
    def _checked_envelope(cls, envelope: CommandEnvelope) -> CommandEnvelope:
        """The envelope as the log records it, or `Rejected` naming what is wrong with it.

        Its id in the canonical spelling: clients may send any spelling Python's `uuid`
        reads (urn:uuid:, braces, upper case), PostgreSQL's uuid type refuses some, and one
        such id in a group-committed batch failed the whole batch. Its actor and correlation
        and causation ids short printable text: they go into the metadata of every event the
        command appends and into the gateway's log lines (a newline there forges one)."""
        for what, value in (
            ("actor", envelope.actor),
            ("correlation id", envelope.correlation_id),
            ("causation id", envelope.causation_id),
        ):
            if value is None or (value == "" and what != "actor"):
                continue
            problem = _label_problem(what, value)
            if problem:
                raise RejectedError("bad_command", problem)
        canonical = cls._require_uuid(envelope.id)
        if canonical == envelope.id:
            return envelope
        return msgspec.structs.replace(envelope, id=canonical)

    @staticmethod
    def _require_uuid(command_id: str) -> str:
        try:
            return canonical_uuid(command_id)
        except ValueError as e:
            raise RejectedError(
                "bad_command",
                f"The command id {command_id!r} is not a UUID: clients must send a fresh UUID per "
                "command (and the same one when they retry it).",
            ) from e
