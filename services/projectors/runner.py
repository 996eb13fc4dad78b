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

from services.projectors import store
from services.projectors.projection import Projection
from services.storage.event_log import StoredEvent
from services.telemetry import projector_metrics

log = logging.getLogger("certplane.projector")

RETRY_SCHEDULE_S = (0.05, 0.25, 1.0)  # then it is a dead letter
CHANNEL = "certplane_events"


class State(enum.Enum):
    STANDBY = "standby"
    RUNNING = "running"
    STOPPED = "stopped"  # on a dead letter, until skipped
    FAILED = "failed"  # a gap or a lost lead: needs attention


class GapError(RuntimeError):
    pass


class LostLead(RuntimeError):
    pass


class ProjectorRunner:
    def __init__(
        self,
        projection: Projection,
        database_url: str,
        *,
        role: str = "certplane_service",
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        instance: str | None = None,
        reconcile_every: float = 30.0,
    ) -> None:
        self.projection = projection
        self.url = database_url
        self.role = role
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.reconcile_every = reconcile_every
        self.state = State.STANDBY
        self.position = 0
        self.applied = 0
        self._wake = asyncio.Event()
        self._metrics = projector_metrics(projection.name)

    @property
    def name(self) -> str:
        return self.projection.name

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop`; reconnects and re-elects after a lost connection."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as e:
                log.warning("%s: connection lost (%s); reconnecting", self.name, e)
            except (GapError, LostLead) as e:
                log.error("%s: %s", self.name, e)
            self.projection.reset()
            self.state = State.STANDBY
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def _session(self, stop: asyncio.Event) -> None:
        settings = {"role": self.role, "application_name": f"certplane-projector-{self.name}"}
        conn = await asyncpg.connect(self.url, server_settings=settings)
        try:
            await self._lead(conn, stop)
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
        self.state = State.RUNNING
        log.info("%s: leading (instance %s)", self.name, self.instance)
        generation = await store.live_generation(conn, self.name)
        schema = await store.ensure_tables(conn, self.projection, generation)
        async with conn.transaction():
            await store.point_views(conn, self.projection, generation)
        await conn.add_listener(CHANNEL, self._notified)
        self.position = await store.checkpoint(conn, self.name)
        await self.projection.reconcile(conn, schema)
        last_reconcile = last_status = time.monotonic()
        await store.set_status(conn, self.name, self.instance, State.RUNNING.value)
        while not stop.is_set():
            self._wake.clear()
            caught_up = await self._step(conn, schema, stop)
            now = time.monotonic()
            if now - last_status > 2.0:
                await store.set_status(conn, self.name, self.instance, self.state.value)
                last_status = now
            if now - last_reconcile > self.reconcile_every and getattr(
                self.projection, "needs_reconcile", False
            ):
                await self.projection.reconcile(conn, schema)
                last_reconcile = now
            if caught_up:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait(stop), self.poll_interval)
        await store.set_status(conn, self.name, self.instance, "stopped", "shut down")

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
        events = await store.read_after(conn, self.position, self.batch_size)
        if not events:
            return True
        for offset, event in enumerate(events):
            if event.position != self.position + 1 + offset:
                raise GapError(
                    f"positions are not dense: expected {self.position + 1 + offset}, read "
                    f"{event.position}; stopping rather than skipping"
                )
        started = time.perf_counter()
        try:
            await self._apply(conn, schema, events)
        except LostLead:
            raise
        except Exception:
            await self._isolate(conn, schema, events, stop)
            return False
        self._metrics.batch(len(events), time.perf_counter() - started)
        return False

    async def _apply(
        self, conn: asyncpg.Connection, schema: str, events: list[StoredEvent]
    ) -> None:
        new = events[-1].position
        async with conn.transaction():
            await self.projection.apply(conn, schema, events)
            if not await store.advance(conn, self.name, self.position, new):
                raise LostLead("the checkpoint moved under us: another instance is writing")
        self.position = new
        self.applied += len(events)
        await self.projection.after_commit(conn, schema)

    async def _isolate(
        self, conn: asyncpg.Connection, schema: str, events: list[StoredEvent], stop: asyncio.Event
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
                    await self._apply(conn, schema, [event])
                    error = ""
                    break
                except LostLead:
                    raise
                except Exception as e:
                    self.projection.reset()
                    error = "".join(traceback.format_exception_only(e)).strip()
            if error:
                await self._dead_letter(conn, schema, event, error, stop)
                return

    async def _dead_letter(
        self,
        conn: asyncpg.Connection,
        schema: str,
        event: StoredEvent,
        error: str,
        stop: asyncio.Event,
    ) -> None:
        attempts = len(RETRY_SCHEDULE_S) + 1
        await store.record_dead_letter(conn, self.name, event, error, attempts)
        self.state = State.STOPPED
        detail = f"dead letter at position {event.position}: {error[:200]}"
        await store.set_status(conn, self.name, self.instance, self.state.value, detail)
        log.error(
            "%s: stopped on %s (skip it with `certplane projections:skip`)", self.name, detail
        )
        while not stop.is_set():
            if await store.skip_requested(conn, self.name, event.position):
                async with conn.transaction():
                    if not await store.advance(conn, self.name, event.position - 1, event.position):
                        raise LostLead("the checkpoint moved while stopped on a dead letter")
                self.position = event.position
                self.state = State.RUNNING
                await store.set_status(conn, self.name, self.instance, self.state.value)
                log.warning(
                    "%s: skipped position %d by operator request", self.name, event.position
                )
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
