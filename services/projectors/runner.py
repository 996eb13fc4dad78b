"""Running one projection: leadership, catch-up, exactly-once effect, dead letters.

- Leadership: a session-level advisory lock on the runner's own connection. The instance
  holding it runs; others wait as hot standbys and take over within a poll interval of the
  leader's death (its connection closes, the lock goes with it).
- Exactly once in effect: each batch is applied and the checkpoint advanced in one
  transaction; the checkpoint update names the position it expects, so an instance that
  lost the lead without noticing cannot write.
- Order: events are read after the checkpoint in position order, and must arrive dense
  (`next == checkpoint + 1`); a gap stops the runner loudly.
- Poison: a failing batch is replayed event by event; the failing event is retried on a
  backoff schedule, then recorded as a dead letter and the runner stops — visibly, in
  `projector_status` — until an operator skips it (`certplane projections:skip`).
- Wake-ups: LISTEN certplane_events, with a timed poll as the fallback.
- Reading: on a second connection, the next batch prefetched while one is applied
  (services/projectors/reader.py); events of types the projection does not read arrive
  as bare positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
import traceback

import asyncpg

from events.union import tag_of
from services.projectors import store
from services.projectors.projection import Projection
from services.projectors.reader import BatchReader
from services.storage.event_log import StoredEvent
from services.telemetry import metrics_enabled, metrics_interval, projector_metrics

log = logging.getLogger("certplane.projector")

RETRY_SCHEDULE_S = (0.05, 0.25, 1.0)  # then it is a dead letter
REBUILD_BATCH = 5000  # a rebuild reads ahead of nobody: larger batches, fewer commits
REBUILD_REPORT_S = 1.0  # how often a rebuild's progress is written to projector_status
UPGRADE_RETRY_S = 30.0  # a failed rebuild of rows an older version built is tried again
CHANNEL = "certplane_events"


class State(enum.Enum):
    STANDBY = "standby"
    RUNNING = "running"
    STOPPED = "stopped"  # on a dead letter, until skipped
    REBUILDING = "rebuilding"
    FAILED = "failed"  # a gap or a lost lead: needs attention


class GapError(RuntimeError):
    pass


class LostLead(RuntimeError):
    pass


class OlderCode(RuntimeError):
    """The live tables were built by a newer version of the projection than this one."""


class ProjectorRunner:
    def __init__(
        self,
        projection: Projection,
        database_url: str,
        *,
        role: str = "certplane_service",
        batch_size: int = 1000,
        rebuild_batch: int = REBUILD_BATCH,
        poll_interval: float = 1.0,
        instance: str | None = None,
        reconcile_every: float = 30.0,
        linger: float = 0.0,
    ) -> None:
        self.projection = projection
        self.url = database_url
        self.role = role
        self.batch_size = batch_size
        self.rebuild_batch = rebuild_batch
        self.poll_interval = poll_interval
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.reconcile_every = reconcile_every
        self.linger = linger
        self._metrics = projector_metrics(projection.name, tuple(s.value for s in State))
        self.state = State.STANDBY
        self.position = 0
        self.applied = 0
        self._reader: BatchReader  # on the session's second connection
        self._wake = asyncio.Event()
        self._rebuild = asyncio.Event()

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, state: State) -> None:
        self._state = state
        self._metrics.set_state(state.value)

    @property
    def _envelope(self) -> frozenset[str] | None:
        """The envelope fields the projection reads (None: all of them)."""
        return getattr(self.projection, "envelope", None)

    @property
    def name(self) -> str:
        return self.projection.name

    @property
    def version(self) -> int:
        return int(getattr(self.projection, "version", 1))

    def request_rebuild(self) -> bool:
        """Ask the leader to rebuild from position 0; False when this instance does not lead."""
        if self.state is not State.RUNNING:
            return False
        self._rebuild.set()
        self._wake.set()
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop`; reconnects and re-elects after a lost connection."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as e:
                log.warning("%s: connection lost (%s); reconnecting", self.name, e)
            except (GapError, LostLead) as e:
                log.error("%s: %s", self.name, e)
            except OlderCode as e:  # another instance (the newer release) is to lead
                log.error("%s: %s", self.name, e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 10.0)
            except Exception:  # a bug or a privilege problem: say so, back off, try again
                log.exception("%s: projector failed; restarting it in 5s", self.name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 4.0)
            self.projection.reset()
            self.state = State.STANDBY
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def _connect(self, purpose: str = "") -> asyncpg.Connection:
        settings = {
            "role": self.role,
            "application_name": f"certplane-projector-{self.name}"
            + (f"-{purpose}" if purpose else ""),
            # Read models are derived: a commit lost in a server crash is lost together with
            # its checkpoint and re-applied identically, so waiting for each flush buys nothing
            # (other sessions see the commit at once either way).
            "synchronous_commit": "off",
        }
        return await asyncpg.connect(self.url, server_settings=settings)

    async def _writer(self, purpose: str = "") -> asyncpg.Connection:
        """A connection to the projection's tables, set up as the projection wants it: the
        one they are written on, or (`purpose` "fold") the one `prepare` reads them on."""
        conn = await self._connect(purpose)
        configure = getattr(self.projection, "configure", None)
        if configure is not None:
            try:
                await configure(conn)
            except BaseException:
                await _close(conn)
                raise
        return conn

    async def _session(self, stop: asyncio.Event) -> None:
        conn = await self._writer()
        try:
            reader = await self._connect("reader")
            try:
                self._reader = BatchReader(
                    reader, self.batch_size, self.projection.event_types, envelope=self._envelope
                )
                await self._lead(conn, stop)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader.close(), 5)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    async def _lead(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        self.state = State.STANDBY
        while not stop.is_set():
            if await conn.fetchval(
                "select pg_try_advisory_lock(hashtext($1))", f"projector:{self.name}"
            ):
                break
            await store.set_status(conn, self.name, self.instance, State.STANDBY.value)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval / 2)
        if stop.is_set():
            return
        generation = await store.live_generation(conn, self.name, self.version)
        built = await store.built_version(conn, self.name)
        if built > self.version:
            detail = (
                f"not leading: the tables were built by version {built} of this projection and "
                f"this instance runs version {self.version}; upgrade it"
            )
            await store.set_status(conn, self.name, self.instance, State.STANDBY.value, detail)
            raise OlderCode(detail)  # leaving the session releases the lock
        self.state = State.RUNNING
        log.info("%s: leading (instance %s)", self.name, self.instance)
        # Rows an older version built may have other tables too: this code neither points
        # views at them nor writes or reconciles them; it rebuilds, and they serve meanwhile.
        outdated = built < self.version
        if outdated:
            log.warning(
                "%s: the live rows were built by version %d of this projection, this is version"
                " %d: rebuilding them from position 0 (the current rows serve until the swap)",
                self.name, built, self.version,
            )  # fmt: skip
            self._rebuild.set()
            schema = store.generation_schema(self.name, generation)
        else:
            schema = await store.ensure_tables(conn, self.projection, generation)
            async with conn.transaction():
                await store.point_views(conn, self.projection, generation)
        await conn.add_listener(CHANNEL, self._notified)
        self.position = await store.checkpoint(conn, self.name)
        if not outdated:
            await self.projection.reconcile(conn, schema)
        last_reconcile = last_status = time.monotonic()
        observe = getattr(self.projection, "observe", None) if metrics_enabled() else None
        observe_every, last_observe = metrics_interval(), 0.0
        await store.set_status(conn, self.name, self.instance, State.RUNNING.value)
        self._metrics.lag(*await store.lag(conn, self.position))
        while not stop.is_set():
            self._wake.clear()
            if self._rebuild.is_set():
                self._rebuild.clear()
                schema = await self._rebuild_generation(conn, schema)
                if outdated and await store.built_version(conn, self.name) < self.version:
                    with contextlib.suppress(TimeoutError):  # it said why in its status
                        await asyncio.wait_for(stop.wait(), UPGRADE_RETRY_S)
                    self._rebuild.set()
                outdated = await store.built_version(conn, self.name) < self.version
                continue
            caught_up = await self._step(conn, schema, stop)
            now = time.monotonic()
            if now - last_status > 2.0:
                await store.set_status(conn, self.name, self.instance, self.state.value)
                self._metrics.lag(*await store.lag(conn, self.position))
                last_status = now
            if observe is not None and now - last_observe > observe_every:
                await observe(conn, schema)  # e.g. certificates counts what expires soon
                last_observe = now
            if now - last_reconcile > self.reconcile_every and getattr(
                self.projection, "needs_reconcile", False
            ):
                await self.projection.reconcile(conn, schema)
                last_reconcile = now
            idle = getattr(self.projection, "idle", None)
            if caught_up and idle is not None:  # e.g. the sealer signs a waiting tail
                async with conn.transaction():
                    await idle(conn, schema)
                await self.projection.after_commit(conn, schema)
            if caught_up:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait(stop), self.poll_interval)
                if self.linger:  # trade latency for fewer, larger batches
                    await asyncio.sleep(self.linger)
        # Gone, not "stopped" (which says a dead letter waits for an operator): for ten
        # seconds `projections` would have shown a restarted projector as stopped.
        await store.clear_status(conn, self.name, self.instance)

    async def _wait(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _step(self, conn: asyncpg.Connection, schema: str, stop: asyncio.Event) -> bool:
        """Apply the next batch; True when there was nothing to read."""
        rows = await self._reader.after(self.position)
        if not rows:
            return True
        _check_dense(rows, self.position)
        events, through = [], rows[-1][0]
        undecodable: tuple[asyncpg.Record, str] | None = None
        for row in rows:
            if not store.wanted(row):
                continue
            try:
                events.append(store.decode(row))
            except Exception as e:  # an event this code cannot read is a poison event
                undecodable = (row, "".join(traceback.format_exception_only(e)).strip())
                through = row[0] - 1
                break
        started = time.perf_counter()
        if through > self.position:
            try:
                await self._apply(conn, schema, events, through)
            except LostLead:
                raise
            except Exception:
                await self._isolate(conn, schema, events, through, stop)
                return False
            self._metrics.batch(through - (rows[0][0] - 1), time.perf_counter() - started)
        if undecodable is not None:
            row, error = undecodable
            await self._dead_letter(
                conn, row["position"], row["type"], f"cannot decode: {error}", stop
            )
        return False

    async def _rebuild_generation(self, conn: asyncpg.Connection, live_schema: str) -> str:
        """Rebuild from position 0 into the next generation, then swap the views atomically.

        Readers keep reading the live generation until the swap; the live checkpoint waits
        meanwhile. Nothing is published during the rebuild: after the swap, `reconcile`
        compares the new rows with what was published and sends only differences.
        """
        live = await store.live_generation(conn, self.name)
        generation = live + 1
        scratch = f"{self.name}#g{generation}"
        target = store.generation_schema(self.name, generation)
        await conn.execute(f'drop schema if exists "{target}" cascade')  # a crashed attempt
        await store.ensure_tables(conn, self.projection, generation)
        await conn.execute(
            "insert into projector_checkpoints (name, generation, position) values ($1, $2, 0)"
            " on conflict (name) do update set position = 0, generation = $2",
            scratch,
            generation,
        )
        self.state = State.REBUILDING
        detail = f"into generation {generation}"
        built = await store.built_version(conn, self.name)
        if built != self.version:
            detail += f" (rows of version {built} -> {self.version})"
        await store.set_status(conn, self.name, self.instance, self.state.value, detail)
        self.projection.reset()
        position, started = 0, time.perf_counter()
        head, reported = await store.head(conn), started
        begin = getattr(self.projection, "rebuild_started", None)
        if begin is not None:  # e.g. router_config stops asking for rows it has not written
            begin(head)
        await self._reader.discard()
        types = self.projection.event_types
        reader = BatchReader(self._reader.conn, self.rebuild_batch, types, envelope=self._envelope)
        # What a batch would publish is dropped: reconcile sends the differences after the swap,
        # and keeping it would grow with every hostname of the log.
        forget = getattr(self.projection, "forget_publications", None)
        # A projection that folds without reading its own tables (`prepare`, then `write`)
        # folds batch N+1 while batch N is written; it reads the log on a connection of its own.
        prepare = getattr(self.projection, "prepare", None)
        folding = await self._writer("fold") if prepare is not None else None
        staged: object = None
        try:
            rows = await reader.after(position)
            events = await _decoded(rows, position)
            if prepare is not None:
                staged = await prepare(folding, target, events)
            while rows:
                through = rows[-1][0]
                # Batch N's writes run in PostgreSQL while batch N+1 is read and decoded
                # here: the two alternated before, each waiting a third of the time.
                applying = asyncio.ensure_future(
                    self._apply_rebuild_batch(
                        conn, target, scratch, position, events, through, staged
                    )
                )
                try:
                    rows = await reader.after(through)
                    upcoming = await _decoded(rows, through)
                    if prepare is not None:
                        staged = await prepare(folding, target, upcoming)
                except BaseException:
                    await asyncio.gather(applying, return_exceptions=True)
                    if applying.done() and not applying.cancelled() and applying.exception():
                        raise applying.exception() from None  # type: ignore[misc]
                    position = through  # the batch before the bad one is in
                    raise
                await applying
                position, events = through, upcoming
                if forget is not None:
                    forget()
                if time.perf_counter() - reported >= REBUILD_REPORT_S:  # for `projections`
                    reported = time.perf_counter()
                    progress = _progress(position, head, reported - started)
                    await store.set_status(
                        conn, self.name, self.instance, self.state.value, f"{detail}: {progress}"
                    )
        except LostLead:
            raise
        except Exception as e:
            await reader.discard()
            log.error(
                "%s: rebuild failed at position %d (%s); keeping generation %d",
                self.name, position + 1, e, live,
            )  # fmt: skip
            self.projection.reset()
            await conn.execute(f'drop schema if exists "{target}" cascade')
            await conn.execute("delete from projector_checkpoints where name = $1", scratch)
            self.state = State.RUNNING
            detail = f"rebuild failed: {e}"[:300]
            await store.set_status(conn, self.name, self.instance, self.state.value, detail)
            return live_schema
        finally:
            await _close(folding)  # on every way out, shutdown's cancellation included
        async with conn.transaction():
            await store.point_views(conn, self.projection, generation)
            await conn.execute(
                "update projector_checkpoints set generation = $2, position = $3, version = $4,"
                " updated_at = now() where name = $1",
                self.name,
                generation,
                position,
                self.version,
            )
            await conn.execute("delete from projector_checkpoints where name = $1", scratch)
            await conn.execute(f'drop schema "{live_schema}" cascade')
        seconds = time.perf_counter() - started
        log.info(
            "%s: rebuilt %d events into generation %d in %.1fs (%.0f events/s) and swapped",
            self.name, position, generation, seconds, position / seconds if seconds else 0.0,
        )  # fmt: skip
        self.position = position
        finished = getattr(self.projection, "rebuild_finished", None)
        if finished is not None:  # what it folded holds at `position`: it goes on from there
            finished()
        else:
            self.projection.reset()
        self.state = State.RUNNING
        detail = f"generation {generation}"
        await store.set_status(conn, self.name, self.instance, self.state.value, detail)
        await self.projection.reconcile(conn, target)
        return target

    async def _apply_rebuild_batch(
        self,
        conn: asyncpg.Connection,
        schema: str,
        scratch: str,
        position: int,
        events: list[StoredEvent],
        through: int,
        staged: object = None,
    ) -> None:
        async with conn.transaction():
            # Not waiting for the flush is safe here: a batch lost in a crash is lost with
            # its checkpoint, and nobody reads this generation yet.
            await conn.execute("set local synchronous_commit = off")
            if staged is not None:  # folded already (`prepare`)
                await self.projection.write(conn, schema, staged, through)  # type: ignore[attr-defined]
            else:
                await self.projection.apply(conn, schema, events, through)
            if not await store.advance(conn, scratch, position, through):
                raise LostLead("the rebuild checkpoint moved under us")

    async def _apply(
        self, conn: asyncpg.Connection, schema: str, events: list[StoredEvent], through: int
    ) -> None:
        async with conn.transaction():
            await self.projection.apply(conn, schema, events, through)
            if not await store.advance(conn, self.name, self.position, through):
                raise LostLead("the checkpoint moved under us: another instance is writing")
        self.applied += through - self.position
        self.position = through
        await self.projection.after_commit(conn, schema)

    async def _isolate(
        self,
        conn: asyncpg.Connection,
        schema: str,
        events: list[StoredEvent],
        through: int,
        stop: asyncio.Event,
    ) -> None:
        """Replay a failed batch one event at a time; a persistent failure is a dead letter."""
        self.projection.reset()  # the failed transaction may have left caches ahead of the table
        for event in events:
            error = ""
            for attempt, pause in enumerate((0.0, *RETRY_SCHEDULE_S), start=1):
                if pause:
                    log.warning(
                        "%s: event %d failed (attempt %d), retrying in %.2fs",
                        self.name, event.position, attempt - 1, pause,
                    )  # fmt: skip
                    await asyncio.sleep(pause)
                try:
                    await self._apply(conn, schema, [event], event.position)
                    error = ""
                    break
                except LostLead:
                    raise
                except Exception as e:
                    self.projection.reset()
                    error = "".join(traceback.format_exception_only(e)).strip()
            if error:
                kind = tag_of(type(event.event))
                await self._dead_letter(conn, event.position, kind, error, stop)
                return
        if through > self.position:  # positions after the last event this projection reads
            await self._apply(conn, schema, [], through)

    async def _dead_letter(
        self, conn: asyncpg.Connection, position: int, kind: str, error: str, stop: asyncio.Event
    ) -> None:
        """Record the poison event and stop — visibly — until an operator skips it."""
        attempts = len(RETRY_SCHEDULE_S) + 1
        await store.record_dead_letter(conn, self.name, position, kind, error, attempts)
        self.state = State.STOPPED
        detail = f"dead letter at position {position} ({kind}): {error[:200]}"
        await store.set_status(conn, self.name, self.instance, self.state.value, detail)
        log.error("%s: stopped on %s (see `certplane projections:skip`)", self.name, detail)
        while not stop.is_set():
            if await store.skip_requested(conn, self.name, position):
                async with conn.transaction():
                    if not await store.advance(conn, self.name, self.position, position):
                        raise LostLead("the checkpoint moved while stopped on a dead letter")
                self.position = position
                self.state = State.RUNNING
                await store.set_status(conn, self.name, self.instance, self.state.value)
                log.warning("%s: skipped position %d by operator request", self.name, position)
                return
            await store.set_status(conn, self.name, self.instance, self.state.value, detail)
            self._metrics.lag(*await store.lag(conn, self.position))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


def _progress(position: int, head: int, seconds: float) -> str:
    """'412,000 of 1,000,012 events (41%), 9s left' for an operator watching a rebuild."""
    rate = position / seconds if seconds > 0 else 0.0
    head = max(head, position)  # events appended since the rebuild began
    text = f"{position:,} of {head:,} events ({100 * position // max(head, 1)}%)"
    if rate > 0 and head > position:
        text += f", {(head - position) / rate:.0f}s left"
    return text


async def _decoded(rows: list[asyncpg.Record], after: int) -> list[StoredEvent]:
    """The batch's events (dense positions checked), decoded a slice at a time, yielding to
    the event loop between slices so a batch being applied meanwhile is never kept waiting."""
    _check_dense(rows, after)
    events: list[StoredEvent] = []
    for start in range(0, len(rows), _DECODE_SLICE):
        # `store.wanted`, inlined: this runs per row of a rebuild
        events += [store.decode(r) for r in rows[start : start + _DECODE_SLICE] if r[8] is not None]
        await asyncio.sleep(0)
    return events


_DECODE_SLICE = 250


def _check_dense(rows: list[asyncpg.Record], after: int) -> None:
    """Positions are unique and read in order (strictly increasing), so n of them from
    after + 1 to after + n are exactly those: two comparisons, not one per row."""
    if not rows or (rows[0][0] == after + 1 and rows[-1][0] == after + len(rows)):
        return
    for offset, row in enumerate(rows):
        if row[0] != after + 1 + offset:
            raise GapError(
                f"positions are not dense: expected {after + 1 + offset}, read {row[0]};"
                " stopping rather than skipping"
            )


async def _close(conn: asyncpg.Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)
