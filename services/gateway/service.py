"""The gateway process: NATS in, the event log out. Several gateways share a queue group."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections import deque
from typing import Any, Literal

import msgspec
from nats.aio.msg import Msg

from events.codec import COMMAND_DECODER, CommandEnvelope, encode, unreadable_command
from events.replies import Accepted, GatewayKey, QueryParams, Rejected
from events.union import tag_of
from services.bus import connect_nats
from services.config import Settings, redact
from services.domain.errors import Rejected as RejectedError
from services.domain.writer_mac import writer_key
from services.gateway.affinity import Affinity
from services.gateway.bundle_workers import BundleWorkers, WorkerLost, default_count
from services.gateway.coherence import announcements, appended_events, read_announcement
from services.gateway.group_commit import GroupCommitter
from services.gateway.handler import CommandHandler, Forward, Submitted, rejected_reply
from services.gateway.key_custody import KeyCustody, load_master_key
from services.gateway.queries import ReadModels
from services.gateway.trust import load_trust_store
from services.health import add_readiness_check
from services.reply_parts import respond_in_parts
from services.storage.database import require_schema, service_pool
from services.storage.event_log import AppendRequest, AppendResult, PostgresEventLog
from services.subjects import GATEWAY_QUEUE, NON_APP, Subjects
from services.telemetry import command_span, gateway_metrics, new_traceparent, tracing_enabled

log = logging.getLogger("certplane.gateway")
_PARAMS = msgspec.json.Decoder(QueryParams)

# A command another gateway handed over (see `affinity`); its value is that gateway's id.
FORWARDED_HEADER = "Certplane-Forwarded-By"
# How long a forwarded command may take before this gateway decides it itself (the log's
# command ids make that safe if the owner did append it after all): well inside the CLI's
# 10 s request timeout, so that the client still hears from this gateway.
FORWARD_TIMEOUT_S = 5.0


class Gateway:
    """Decides commands and answers reads; `async with Gateway(settings) as gw: await gw.serve()`."""

    def __init__(self, settings: Settings, *, max_in_flight: int = 512) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.prefix)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stack = contextlib.AsyncExitStack()
        self.id = secrets.token_hex(8)  # tells its own announcements from the others'
        self.nc: Any = None
        self.metrics = gateway_metrics()  # None unless CERTPLANE_METRICS_EXPORT is set
        # Commands on the fast path (see `_fast_command`) whose appends have settled, with
        # their replies (None: it goes the slow way after all), answered by `_answer`.
        self._answers: deque[tuple[Msg, CommandEnvelope, Accepted | None, float]] = deque()
        self._answering = asyncio.Event()
        self.fast_in_flight = 0
        self.fast_commands = 0

    async def __aenter__(self) -> Gateway:
        s = self.settings
        master = load_master_key(s)
        self.custody = KeyCustody(master, load_trust_store(s))
        count = default_count() if s.bundle_workers < 0 else s.bundle_workers
        self.bundles = BundleWorkers(self.custody, master, count)
        self._stack.push_async_callback(self.bundles.close)
        self.pool = await service_pool(s.database_url, s.service_role, min_size=2, max_size=6)
        self._stack.push_async_callback(self.pool.close)
        async with self.pool.acquire() as conn:
            await require_schema(conn, s.database_url)
        self.event_log = PostgresEventLog(
            self.pool, url=s.database_url, writer_key=writer_key(master.secret)
        )
        self._stack.push_async_callback(self.event_log.close)  # before the pool's close
        self.committer = await self._stack.enter_async_context(
            GroupCommitter(
                self.event_log,
                upstream=lambda: self.bundles.in_flight,
                announce=self._announce,
            )
        )
        self.affinity = Affinity(self.id)
        self.forwarded = 0  # commands handed to the gateway that owned their app
        self.handler = CommandHandler(
            self.event_log, self.committer, self.bundles, affinity=self.affinity
        )
        if self.metrics is not None:
            self.metrics.count_conflicts(lambda: self.handler.conflicts)
        answering = asyncio.create_task(self._answer(), name="gateway-answers")
        self._stack.push_async_callback(_cancelled, answering)
        self.read_models = ReadModels(self.pool)
        # no_echo: its own announcements would only cost this gateway a decode per batch
        self.nc = await connect_nats(s.nats_url, "certplane-gateway", no_echo=True)
        await self.nc.subscribe(self.subjects.gateway_appended(), cb=self._on_announcement)
        await self.nc.subscribe(
            self.subjects.all_commands(), queue=GATEWAY_QUEUE, cb=self._spawn_command
        )
        await self.nc.subscribe(
            self.subjects.gateway_commands(self.id), cb=self._spawn_forwarded_command
        )
        await self.nc.subscribe(
            self.subjects.all_queries(), queue=GATEWAY_QUEUE, cb=self._spawn_query
        )
        await self.nc.flush()
        add_readiness_check(self._not_ready)
        log.info("gateway ready on %s (prefix %s)", redact(s.nats_url), s.prefix)
        return self

    def _not_ready(self) -> str | None:
        if self.nc is None or not self.nc.is_connected:
            return "the gateway is not connected to NATS: commands cannot reach it"
        return None

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.nc.drain()  # stop taking messages, finish the ones in hand
        deadline = time.monotonic() + 10
        while (self._tasks or self.fast_in_flight) and time.monotonic() < deadline:
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=deadline - time.monotonic())
            else:  # fast-path commands are not tasks: their appends settle, then `_answer`
                await asyncio.sleep(0.01)
        await self._stack.aclose()

    async def _spawn_command(self, msg: Msg) -> None:
        await self._slots.acquire()
        started = time.perf_counter()
        try:
            envelope = self._fast_command(msg, started)
        except Exception:  # a bug: the slow path answers it (internal_error if it meets it too)
            # Raised into nats-py, it left the client unanswered and the slot taken for good.
            log.exception("deciding a command on the fast path failed (%s)", msg.subject)
            envelope = None
        if envelope is not True:  # not taken: the slow path (True: taken)
            self._spawn_slow(msg, envelope)

    def _spawn_slow(self, msg: Msg, envelope: CommandEnvelope | None) -> None:
        """The slow path: a task per command (the slot taken is released when it ends)."""
        task = asyncio.create_task(self._on_command(msg, envelope))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _fast_command(self, msg: Msg, started: float) -> CommandEnvelope | Literal[True] | None:
        """Decide the command here, in the message callback, if the handler can
        (`CommandHandler.submit_known`): True if it did; else the envelope if it was read
        (None if not), for the slow path. Its reply is sent by `_answer` once its append
        settles. Not with spans to record (they wrap the slow path's steps), nor for a
        command another gateway forwarded or that belongs to one (see `affinity`)."""
        headers = msg.headers
        if tracing_enabled() or (headers and FORWARDED_HEADER in headers):
            return None
        subject = msg.subject
        if subject.count(".") < 3:
            return None
        app = subject.rsplit(".", 2)[-2]
        if self.affinity.owner(app) is not None:
            return None
        try:
            envelope = COMMAND_DECODER.decode(msg.data)
        except msgspec.DecodeError:
            return None  # the slow path says what is wrong with it
        if getattr(envelope.command, "app", NON_APP) != app:
            return envelope
        traceparent = (headers.get("traceparent") if headers else None) or new_traceparent()
        step = self.handler.submit_known(envelope, traceparent)
        if step is None:
            return envelope
        self.fast_in_flight += 1
        step[4].add_done_callback(
            functools.partial(self._fast_settled, msg, envelope, step, started)
        )
        return True

    def _fast_settled(
        self, msg: Msg, envelope: CommandEnvelope, step: Submitted, started: float, _: object
    ) -> None:
        # Settled at once, not when `_answer` runs: the app's next command decides on it.
        try:
            reply = self.handler.finish_known(step)
        except Exception:  # never leave a command unanswered: the slow path takes it
            log.exception("command %s: settling its append failed", envelope.id)
            reply = None
        self._answers.append((msg, envelope, reply, started))
        self._answering.set()

    async def _answer(self) -> None:
        """Reply to the fast path's commands as their appends settle; hand the ones that
        failed (a conflict, a repeated id, an error) to the slow path, slot and all."""
        answers = self._answers
        while True:
            await self._answering.wait()
            self._answering.clear()
            while answers:
                msg, envelope, reply, started = answers.popleft()
                self.fast_in_flight -= 1
                if reply is None:
                    self._spawn_slow(msg, envelope)
                    continue
                self.fast_commands += 1
                try:
                    if self.metrics is not None:
                        tag = tag_of(type(envelope.command))
                        self.metrics.command(tag, "accepted", time.perf_counter() - started)
                    log.debug(
                        "command %s for %s accepted at position %d",
                        envelope.id, msg.subject, reply.position,
                    )  # fmt: skip
                except Exception:  # must cost neither the reply nor this task (all replies)
                    log.exception("recording command %s failed", envelope.id)
                try:
                    await self._respond(msg, reply)
                finally:
                    self._slots.release()

    async def _spawn_forwarded_command(self, msg: Msg) -> None:
        """Handed over by another gateway (see `affinity`): no slot of this one's, since
        gateways that forward to each other with every slot taken would wait on each other
        (the sender's slot bounds these)."""
        task = asyncio.create_task(self._on_command(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def _spawn_query(self, msg: Msg) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._on_query(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        _log_failure(task)

    async def _on_command(self, msg: Msg, envelope: CommandEnvelope | None = None) -> None:
        started = time.perf_counter()
        forwarded_by = (msg.headers or {}).get(FORWARDED_HEADER)
        app = msg.subject.rsplit(".", 2)[-2] if msg.subject.count(".") >= 3 else ""
        if forwarded_by:
            self.affinity.handed_over(app, forwarded_by)
        owner = None if forwarded_by else self.affinity.owner(app)
        if owner is not None and await self._forward(msg, app, owner):
            return
        try:
            tag, reply = await self._decide(msg, envelope, forwardable=not forwarded_by)
        except Forward as handover:  # contended while deciding: the owner takes it
            log.info(
                "app %s is contended: handing its commands to gateway %s", app, handover.gateway
            )
            if await self._forward(msg, app, handover.gateway):
                return
            tag, reply = await self._decide(msg, envelope, forwardable=False)
        if self.metrics is not None:
            outcome = reply.code if isinstance(reply, Rejected) else "accepted"
            self.metrics.command(tag, outcome, time.perf_counter() - started)
        await self._respond(msg, reply)

    async def _forward(self, msg: Msg, app: str, owner: str) -> bool:
        """Hand the command to the gateway that owns its app and relay its reply; False if
        that gateway did not answer (then this one decides the command)."""
        command = msg.subject.rsplit(".", 1)[-1]
        headers = {**(msg.headers or {}), FORWARDED_HEADER: self.id}
        try:
            answer = await self.nc.request(
                self.subjects.gateway_commands(owner, app, command),
                msg.data,
                timeout=FORWARD_TIMEOUT_S,
                headers=headers,
            )
        except Exception as e:  # no responders, a timeout, a lost connection
            log.warning("gateway %s did not take a command for %s (%s)", owner, app, e)
            self.affinity.forget(app, owner)
            return False
        self.forwarded += 1
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(answer.data)
        return True

    async def _decide(
        self, msg: Msg, envelope: CommandEnvelope | None = None, *, forwardable: bool = False
    ) -> tuple[str, Any]:
        """The command's type (`unreadable` if it could not be decoded) and its reply
        (`envelope`: the message's, if already decoded)."""
        headers = msg.headers or {}
        try:
            if envelope is None:
                envelope = COMMAND_DECODER.decode(msg.data)
        except msgspec.DecodeError as e:  # ValidationError is a DecodeError
            return "unreadable", Rejected(code="bad_command", message=unreadable_command(e))
        tag = tag_of(type(envelope.command))
        subject_app = msg.subject.split(".")[-2] if msg.subject.count(".") >= 3 else ""
        app = getattr(envelope.command, "app", NON_APP)
        if subject_app != app:
            return tag, Rejected(
                code="bad_command",
                message=f"The subject names app {subject_app!r} but the command is for "
                f"{app!r}: publish to {self.subjects.command(app, '<Command>')}.",
            )
        attributes = {"certplane.app": app, "certplane.command_id": envelope.id}
        handover: Forward | None = None
        with command_span(tag, headers, attributes) as traceparent:
            try:
                reply = await self.handler.handle(envelope, traceparent, forwardable=forwardable)
            except RejectedError as e:
                reply = rejected_reply(e)
            except Forward as e:  # not a failure (the span must not say so): see `_on_command`
                handover = e
            except WorkerLost as e:
                log.warning("command %s (%s): %s", envelope.id, tag, e)
                reply = Rejected(code="bundle_worker_lost", message=str(e))
            except Exception:
                log.exception("command %s (%s) failed", envelope.id, tag)
                reply = Rejected(
                    code="internal_error",
                    message="The gateway failed while handling this command; nothing was appended "
                    "unless a retry with the same command id says otherwise. Try again.",
                )
        if handover is not None:
            raise handover
        if isinstance(reply, Rejected):
            log.info(
                "command %s %s for %s rejected: %s",
                envelope.id,
                tag,
                app,
                reply.code,
            )
        else:
            log.debug(
                "command %s %s for %s accepted at position %d",
                envelope.id,
                tag,
                app,
                reply.position,
            )
        return tag, reply

    async def _on_query(self, msg: Msg) -> None:
        parts = msg.subject[len(self.settings.prefix) + 1 :].split(".")
        app, view = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
        try:
            params = _PARAMS.decode(msg.data) if msg.data else QueryParams()
            if app == NON_APP and view == "apps":
                reply: Any = await self.read_models.apps()
            elif app == NON_APP and view == "gateway-key":
                reply = GatewayKey(key_id=self.custody.key_id, public_key=self.custody.public_key)
            elif app == NON_APP and view == "checkpoints":
                reply = await self.read_models.checkpoints()
            elif app == NON_APP and view == "projections":
                reply = await self.read_models.projections()
            elif view == "app":
                reply = await self.read_models.app(app)
            elif view == "audit":
                reply = await self.read_models.audit(app, params)
            else:
                reply = Rejected(
                    code="unknown_query", message=f"There is no query {msg.subject!r}."
                )
        except msgspec.DecodeError as e:
            reply = Rejected(
                code="bad_query", message=f"The query parameters could not be read: {e}."
            )
        except Exception:
            log.exception("query %s failed", msg.subject)
            reply = Rejected(
                code="internal_error", message="The gateway failed to answer; try again."
            )
        if msg.reply:
            # A listing can outgrow one NATS message; clients of queries collect the parts.
            with contextlib.suppress(Exception):
                await respond_in_parts(self.nc, msg.reply, encode(reply))

    async def _announce(self, requests: list[AppendRequest], results: list[AppendResult]) -> None:
        """Tell the other gateways what this batch appended (see `coherence`)."""
        if self.metrics is not None:
            self.metrics.batch(len(requests))
        if self.nc is None or not self.nc.is_connected:
            return
        subject = self.subjects.gateway_appended()
        for payload in announcements(
            self.id, appended_events(requests, results), self.nc.max_payload
        ):
            await self.nc.publish(subject, payload)

    async def _on_announcement(self, msg: Msg) -> None:
        sender, events = read_announcement(msg.data, self.id)
        if sender:
            self.affinity.wrote(sender, {stream for stream, _, _ in events})
            self.handler.observe(events)

    async def _respond(self, msg: Msg, reply: object) -> None:
        if not msg.reply:
            return
        payload = encode(reply)
        limit = self.nc.max_payload
        if len(payload) > limit and isinstance(reply, Accepted):
            # Destroying an app of ~15,000 domains releases as many hostnames: a reply that
            # carried every event would not fit in a NATS message, and the client would
            # hear nothing of a command that happened.
            log.warning(
                "reply to %s left out its %d events (%d bytes, over NATS's %d)",
                msg.subject, len(reply.events), len(payload), limit,
            )  # fmt: skip
            payload = encode(
                msgspec.structs.replace(
                    reply,
                    events=[],
                    warnings=[
                        *reply.warnings,
                        f"This reply leaves out the command's {len(reply.events):,} events: "
                        f"together they exceed the bus's message limit ({limit:,} bytes). "
                        "The log has them all (certplane audit:log).",
                    ],
                )
            )
        with contextlib.suppress(Exception):
            await msg.respond(payload)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("unexpected error handling a message", exc_info=task.exception())


async def run_gateway(settings: Settings, stop: asyncio.Event) -> None:
    """Serve until `stop` is set (SIGTERM/SIGINT in `certplane gateway`)."""
    async with Gateway(settings):
        await stop.wait()
