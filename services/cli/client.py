"""The CLI's only connection to certplane: NATS request/reply to the gateway."""

from __future__ import annotations

import asyncio
import getpass
import os
import random
import socket
import urllib.parse
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS

from events.base import Command
from events.codec import COMMAND_REPLY_DECODER, QUERY_REPLY_DECODER, CommandEnvelope, encode
from events.replies import Accepted, GatewayKey, QueryParams, Rejected
from services.config import redact
from services.domain.errors import Unavailable
from services.domain.ids import TimeOrderedIds
from services.reply_parts import request_in_parts
from services.subjects import NON_APP, Subjects
from services.telemetry import new_traceparent

# Command ids are time-ordered (the log's unique index on them grows at its right edge, as
# for event ids) and their random part comes from the system's CSPRNG: another client must
# not guess an id and be answered a repeat of this command's reply.
_command_id = TimeOrderedIds(random.SystemRandom())

REQUEST_TIMEOUT = 10.0
RETRIES = 3  # safe: a retried command carries the same id, so it appends at most once


def default_actor() -> str:
    return os.environ.get("CERTPLANE_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


_WHERE = (
    ". Is the control plane running (`certplane dev` starts one), and is CERTPLANE_NATS_URL"
    " its address?"
)


class ControlPlane:
    """`async with ControlPlane(url, prefix) as cp: await cp.command(...)`."""

    def __init__(
        self,
        url: str,
        prefix: str = "certplane",
        *,
        actor: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
        retries: int = RETRIES,
    ) -> None:
        self.url = url
        self.shown = redact(url)  # what messages name: no password or token
        self.timeout, self.retries = timeout, retries
        self.subjects = Subjects(prefix)
        self.actor = actor or default_actor()
        self._nc: NATS = None  # type: ignore[assignment]  # connected in __aenter__

    async def __aenter__(self) -> ControlPlane:
        async def quiet(_: Exception) -> None:
            return None

        await self._probe()
        try:
            # nats-py keeps retrying a refused first connection whatever the options: bound it.
            self._nc = await asyncio.wait_for(
                nats.connect(
                    self.url,
                    connect_timeout=2,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    error_cb=quiet,
                ),
                timeout=5,
            )
        except Exception as e:
            raise Unavailable(
                f"cannot reach NATS at {self.shown}: {e or type(e).__name__}{_WHERE}",
                url=self.shown,
            ) from e
        return self

    async def _probe(self) -> None:
        """Fail fast, with the reason, when nothing listens at the URL."""
        parts = urllib.parse.urlsplit(self.url if "://" in self.url else f"nats://{self.url}")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222),
                timeout=3,
            )
        except (OSError, TimeoutError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise Unavailable(
                f"cannot reach NATS at {self.shown}: {reason}{_WHERE}", url=self.shown
            ) from e
        writer.close()

    @property
    def nc(self) -> NATS:
        """The connection, for what is read straight from NATS (router reports)."""
        return self._nc

    async def __aexit__(self, *exc: object) -> None:
        if self._nc is not None:
            await self._nc.close()

    async def _request(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None = None,
        *,
        in_parts: bool = False,
    ) -> bytes:
        last: Exception | None = None
        for _ in range(self.retries):
            try:
                if in_parts:  # a query's reply may outgrow one message (see reply_parts)
                    return await request_in_parts(self._nc, subject, payload, self.timeout)
                msg = await self._nc.request(
                    subject, payload, timeout=self.timeout, headers=headers
                )
                return bytes(msg.data)
            except nats.errors.NoRespondersError as e:
                raise Unavailable(
                    f"no certplane gateway is answering on {self.shown} (prefix "
                    f"{self.subjects.prefix!r}): start one with `certplane gateway` or `certplane dev`",
                    url=self.shown,
                ) from e
            except (nats.errors.TimeoutError, TimeoutError) as e:
                last = e
        raise Unavailable(
            f"the gateway at {self.shown} did not answer in time", url=self.shown
        ) from last

    async def command(
        self, command: Command, *, command_id: str | None = None
    ) -> Accepted | Rejected:
        envelope = CommandEnvelope(
            id=command_id or _command_id(),
            actor=self.actor,
            command=command,  # type: ignore[arg-type]
        )
        subject = self.subjects.command(getattr(command, "app", NON_APP), type(command).__name__)
        raw = await self._request(subject, encode(envelope), {"traceparent": new_traceparent()})
        reply: Accepted | Rejected = COMMAND_REPLY_DECODER.decode(raw)
        return reply

    async def query(self, app: str | None, view: str, params: QueryParams | None = None) -> Any:
        body = encode(params) if params is not None else b""
        raw = await self._request(self.subjects.query(app or NON_APP, view), body, in_parts=True)
        return QUERY_REPLY_DECODER.decode(raw)

    async def raw_request(self, subject: str, payload: bytes = b"", wait: float = 3.0) -> bytes:
        """One request, no retries (for operator requests answered by a single leader)."""
        try:
            msg = await self._nc.request(subject, payload, timeout=wait)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError) as e:
            raise Unavailable(f"nothing answered on {subject}", url=self.shown) from e
        return bytes(msg.data)

    async def gateway_key(self) -> GatewayKey:
        reply = await self.query(None, "gateway-key")
        assert isinstance(reply, GatewayKey)
        return reply
