"""The event log on PostgreSQL: append batches (`certplane_append_chained`), read streams back.

This is the one place that talks to the `events` table. Driver errors are translated here
(STYLE 10): connection trouble becomes `Unavailable`; everything else is a bug and propagates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import msgspec

from events.base import Event, Metadata
from events.codec import CURRENT_SCHEMA_VERSION, METADATA_DECODER, decode_event, encode
from events.union import AnyEvent, tag_of
from services.domain.errors import Unavailable
from services.domain.event_content import event_content
from services.domain.writer_mac import writer_mac
from services.storage import packed
from services.storage.hash_chain import content_hash


@dataclass(frozen=True)
class NewEvent:
    stream_id: str
    event: Event
    metadata: Metadata
    event_id: str


@dataclass(frozen=True)
class NewDataKey:
    key_id: str
    master_key_id: str
    wrapped: bytes = field(repr=False)


@dataclass(frozen=True)
class AppendRequest:
    """One command's events, with the version it expects of every stream it read."""

    command_id: str
    expected: dict[str, int]
    events: list[NewEvent]
    new_keys: list[NewDataKey] = field(default_factory=list)
    shred: list[str] = field(default_factory=list)


class BatchRefused(Exception):
    """The database refused a value of the batch (see `_REFUSED_VALUE`), or packing could not
    carry one: nothing was appended. Some request holds a value the log cannot store, which
    only a bug lets through; appended one by one, the others go in."""


class AppendStatus(enum.Enum):
    OK = "ok"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


class AppendResult(msgspec.Struct, frozen=True):
    status: AppendStatus
    positions: list[int] = []
    versions: list[int] = []
    stream: str = ""
    expected: int = 0
    actual: int = 0


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as read from the log. A Struct: every reader builds one per row, and a frozen
    dataclass's __init__ (object.__setattr__ per field) cost ~1.5 µs of it."""

    position: int
    stream_id: str
    version: int
    event_id: str
    command_id: str
    command_index: int
    event: AnyEvent
    metadata: Metadata
    recorded_at: dt.datetime


class EventLog(Protocol):
    """What the gateway needs of the log.

    `append_batch` applies each request atomically and independently, in order, in one
    transaction: a request whose expected versions do not match gets CONFLICT, one whose
    command id is already in the log gets DUPLICATE, and neither affects the others, except
    that a request also gets CONFLICT when one of the earlier requests `requires` names for it
    was not appended. Raises `Unavailable` when the store cannot be reached (nothing or everything committed).
    """

    async def append_batch(
        self, requests: list[AppendRequest], requires: list[list[int]] | None = None
    ) -> list[AppendResult]: ...

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[StoredEvent]: ...

    async def read_streams(self, stream_ids: list[str]) -> dict[str, list[StoredEvent]]: ...

    async def read_command(self, command_id: str) -> list[StoredEvent]: ...


STORED_COLUMNS = (
    "position, stream_id, stream_version, event_id::text, command_id::text, command_index,"
    " type, schema_version, data::text, metadata::text, recorded_at"
)


# The envelope: what the log records about an event besides its stream, version and data.
# A projection that never reads some of it (`Projection.envelope`) gets rows with those
# columns null: PostgreSQL sends nothing and asyncpg builds no string or timestamp for them
# (measured: a third of router_config's row parsing). The event then carries these blanks.
ENVELOPE_COLUMNS = {
    "event_id": "event_id::text",
    "command_id": "command_id::text",
    "command_index": "command_index",
    "metadata": "metadata::text",
    "recorded_at": "recorded_at",
}
NO_METADATA = Metadata(command_id="", actor="", correlation_id="", causation_id="")
UNREAD_AT = dt.datetime.min.replace(tzinfo=dt.UTC)


def stored_event(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        position=row[0],
        stream_id=row[1],
        version=row[2],
        event_id=row[3] or "",  # the blanks of fields not read (see ENVELOPE_COLUMNS)
        command_id=row[4] or "",
        command_index=row[5] or 0,
        event=decode_event(row[6], row[7], row[8]),
        metadata=METADATA_DECODER.decode(row[9]) if row[9] is not None else NO_METADATA,
        recorded_at=row[10] or UNREAD_AT,
    )


def _sealed_event(
    command_id: str, index: int, e: NewEvent, mac_key: bytes | None
) -> tuple[str, int, str, str, bytes]:
    """(type, schema version, data, metadata, content hash) as the log stores the event."""
    type_ = tag_of(type(e.event))
    version = CURRENT_SCHEMA_VERSION[type_]
    data = encode(e.event).decode()
    content = event_content(e.stream_id, e.event_id, command_id, index, type_, version, data)
    meta = e.metadata
    if mac_key is not None:  # the MAC and the chain cover the same canonical bytes
        meta = msgspec.structs.replace(meta, writer_mac=writer_mac(mac_key, content))
    metadata = encode(meta).decode()
    return type_, version, data, metadata, content_hash(content, metadata)


# The function's 21 array parameters (schemas/sql/010, its body now 012), each sent packed (storage/packed.py).
_APPEND_PARAMETERS = (
    "uuid", "integer", "text", "integer",
    "integer", "integer", "text", "uuid", "text", "integer", "text", "text", "hex",
    "integer", "uuid", "text", "bytea", "integer", "uuid", "integer", "integer",
)  # fmt: skip


def _append_argument(n: int, kind: str) -> str:
    if kind == "integer":
        return packed.integer_array(n)
    if kind == "hex":  # content hashes: one per event
        return packed.bytea_array(n)
    if kind == "bytea":
        return f"${n}::bytea[]"  # wrapped data keys: AddCert only, a few a batch
    return packed.text_array(n, kind)


_APPEND = (
    "select * from certplane_append_chained("
    + ", ".join(_append_argument(n, kind) for n, kind in enumerate(_APPEND_PARAMETERS, 1))
    + ")"
)


def _packed(arrays: list[list[Any]]) -> list[Any]:
    """`_batch_arrays` as `_APPEND` takes them."""
    values: list[Any] = []
    for kind, column in zip(_APPEND_PARAMETERS, arrays, strict=True):
        if kind == "integer":
            values.append(packed.integers(column))
        elif kind == "hex":
            values.append(packed.hex_values(column))
        elif kind == "bytea":
            values.append(column)
        else:
            values.append(packed.units(column))  # uuids too: as text, like the ids given
    return values


def _batch_arrays(
    requests: list[AppendRequest],
    mac_key: bytes | None = None,
    requires: list[list[int]] | None = None,
) -> list[list[Any]]:
    """The arguments of `certplane_append_chained` (schemas/sql/010): one array per column,
    commands numbered from 1 in batch order; `requires[k]` lists the 1-based numbers of the
    earlier commands command k+1 may only be appended with."""
    cmd_ids: list[str] = []
    exp_cmd: list[int] = []
    exp_stream: list[str] = []
    exp_version: list[int] = []
    ev_cmd: list[int] = []
    ev_index: list[int] = []
    ev_stream: list[str] = []
    ev_id: list[str] = []
    ev_type: list[str] = []
    ev_schema: list[int] = []
    ev_data: list[str] = []
    ev_meta: list[str] = []
    ev_content: list[bytes] = []
    key_cmd: list[int] = []
    key_ids: list[str] = []
    key_master: list[str] = []
    key_wrapped: list[bytes] = []
    shred_cmd: list[int] = []
    shred_ids: list[str] = []
    for k, r in enumerate(requests, 1):
        cmd_ids.append(r.command_id)
        for stream, version in r.expected.items():
            exp_cmd.append(k)
            exp_stream.append(stream)
            exp_version.append(version)
        for index, e in enumerate(r.events):
            type_, version, data, metadata, digest = _sealed_event(r.command_id, index, e, mac_key)
            ev_cmd.append(k)
            ev_index.append(index)
            ev_stream.append(e.stream_id)
            ev_id.append(e.event_id)
            ev_type.append(type_)
            ev_schema.append(version)
            ev_data.append(data)
            ev_meta.append(metadata)
            ev_content.append(digest)
        for key in r.new_keys:
            key_cmd.append(k)
            key_ids.append(key.key_id)
            key_master.append(key.master_key_id)
            key_wrapped.append(key.wrapped)
        shred_cmd.extend(k for _ in r.shred)
        shred_ids.extend(r.shred)
    req_cmd: list[int] = []
    req_on: list[int] = []
    for k, earlier in enumerate(requires or (), 1):
        req_cmd.extend(k for _ in earlier)
        req_on.extend(earlier)
    return [
        cmd_ids, exp_cmd, exp_stream, exp_version,
        ev_cmd, ev_index, ev_stream, ev_id, ev_type, ev_schema, ev_data, ev_meta, ev_content,
        key_cmd, key_ids, key_master, key_wrapped, shred_cmd, shred_ids, req_cmd, req_on,
    ]  # fmt: skip


def _results(row: asyncpg.Record, requests: list[AppendRequest]) -> list[AppendResult]:
    status, bad_stream, bad_expected, bad_actual, positions, versions = row
    results = []
    e = 0
    for k, r in enumerate(requests):
        n = len(r.events)
        if status[k] == "ok":
            results.append(AppendResult(AppendStatus.OK, positions[e : e + n], versions[e : e + n]))
        elif status[k] == "conflict":
            results.append(
                AppendResult(
                    AppendStatus.CONFLICT,
                    stream=bad_stream[k],
                    expected=bad_expected[k],
                    actual=bad_actual[k],
                )
            )
        else:
            results.append(AppendResult(AppendStatus.DUPLICATE))
        e += n
    return results


# What PostgreSQL says of a value, not of itself or the session: a data exception (22), an
# integrity violation the function does not resolve itself (23), a program limit such as an
# index row too large (54). One request's value then fails its whole batch.
_REFUSED_VALUE = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)

_CONNECTION_LOST = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
)
# A session the server ended while it sat idle (a restart, pg_terminate_backend): the
# client reads the server's goodbye only on its next statement, and refuses that one.
_SESSION_BROKEN = (asyncpg.InternalClientError, asyncpg.InterfaceError)


def _alive(con: asyncpg.pool.PoolConnectionProxy) -> bool:
    try:
        return not con.is_closed()
    except asyncpg.InterfaceError:  # the pool detached it when its connection was lost
        return False


class PostgresEventLog:
    """`EventLog` on an asyncpg pool whose connections run as the service role."""

    def __init__(
        self, pool: asyncpg.Pool, *, url: str = "", writer_key: bytes | None = None
    ) -> None:
        self._pool = pool
        self.pool = pool
        self._url = url
        self._writer_key = writer_key  # MACs every event (services/domain/writer_mac.py)
        # Pool connections kept for appends between batches (see `append_batch`); `close`
        # gives them back, and must run before the pool closes (which waits for them).
        self._appending: list[asyncpg.pool.PoolConnectionProxy] = []

    async def append_batch(
        self, requests: list[AppendRequest], requires: list[list[int]] | None = None
    ) -> list[AppendResult]:
        try:
            arguments = _packed(_batch_arrays(requests, self._writer_key, requires))
        except ValueError as e:  # a value holding the packing's separator (storage/packed.py)
            raise BatchRefused(str(e)) from e
        # The connection is kept, not given back to the pool after each batch: asyncpg gives
        # one back in a task of its own (`asyncio.shield`), so the batch's commands learned
        # their results, and the next batch went, two turns of a busy event loop after the
        # answer came (up to a millisecond each at 64 clients). Measured with
        # bench/cpu_per_command.py, alternated: AddDomain @64 faster in 7 of 8 pairs (+3-13 %).
        con = None
        while self._appending and con is None:
            con = self._appending.pop()
            if not _alive(con):  # the database closed it since: the pool opens another
                await self._give_back(con)
                con = None
        try:
            con = con or await self._pool.acquire()
        except (*_CONNECTION_LOST, TimeoutError) as e:
            raise Unavailable("the event log cannot be reached", url=self._url) from e
        try:
            row = await con.fetchrow(_APPEND, *arguments)
        except BaseException as e:
            if isinstance(e, asyncpg.PostgresError) and _alive(con):
                self._appending.append(con)  # the statement failed, the session is fine
                if isinstance(e, _REFUSED_VALUE):
                    raise BatchRefused(f"the database refused a value: {e}") from e
                raise
            if isinstance(e, _SESSION_BROKEN):  # out of step with the server: of no use now
                with contextlib.suppress(asyncpg.InterfaceError):  # detached already
                    con.terminate()
            # lost, broken or cancelled mid-append: the pool cleans up and reconnects
            await self._give_back(con)
            if isinstance(e, (*_CONNECTION_LOST, *_SESSION_BROKEN)):
                raise Unavailable("the event log cannot be reached", url=self._url) from e
            raise
        self._appending.append(con)
        return _results(row, requests)

    async def close(self) -> None:
        """Give the connections kept for appends back to the pool."""
        while self._appending:
            await self._give_back(self._appending.pop())

    async def _give_back(self, con: asyncpg.pool.PoolConnectionProxy) -> None:
        with contextlib.suppress(Exception):
            await self._pool.release(con)

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[StoredEvent]:
        rows = await self._pool.fetch(
            f"select {STORED_COLUMNS} from events where stream_id = $1 and stream_version > $2"
            " order by stream_version",
            stream_id,
            after_version,
        )
        return [stored_event(r) for r in rows]

    async def read_streams(self, stream_ids: list[str]) -> dict[str, list[StoredEvent]]:
        """Several whole streams in one query (a destroyed app's hostname claims), each in
        version order; a stream with no events is absent."""
        rows = await self._pool.fetch(
            f"select {STORED_COLUMNS} from events where stream_id = any($1::text[])"
            " order by stream_id, stream_version",
            stream_ids,
        )
        streams: dict[str, list[StoredEvent]] = {}
        for row in rows:
            streams.setdefault(row[1], []).append(stored_event(row))
        return streams

    async def read_command(self, command_id: str) -> list[StoredEvent]:
        rows = await self._pool.fetch(
            f"select {STORED_COLUMNS} from events where command_id = $1::uuid order by command_index",
            command_id,
        )
        return [stored_event(r) for r in rows]

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        rows = await self._pool.fetch(
            f"select {STORED_COLUMNS} from events where position > $1 order by position limit $2",
            after_position,
            limit,
        )
        return [stored_event(r) for r in rows]

    async def stream_ids(self, category: str) -> list[str]:
        rows = await self._pool.fetch(
            "select distinct stream_id from events where stream_id like $1 order by stream_id",
            category + "-%",
        )
        return [r[0] for r in rows]
