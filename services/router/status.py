"""Reporting what a router serves: `<prefix>.router.<id>.status`, xDS-style.

Published after every change the router applied (coalesced) and as a heartbeat, so
`certplane routers` can tell live routers from gone ones. A JetStream stream keeps the last
report of each router, so the CLI needs no service of its own to list them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from events.router import RouterState, RouterStatus
from services.subjects import Subjects

log = logging.getLogger("certplane.router.status")
_ENCODER = msgspec.json.Encoder()
STATUS_DECODER = msgspec.json.Decoder(RouterStatus)
KEEP_REPORTS_FOR = 24 * 3600.0  # a router silent for a day is forgotten


async def ensure_status_stream(nc: NATS, subjects: Subjects, name: str) -> None:
    """The stream that keeps each router's last report (idempotent)."""
    config = StreamConfig(
        name=name,
        subjects=[subjects.all_router_statuses()],
        max_msgs_per_subject=1,
        max_age=KEEP_REPORTS_FOR,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        description="certplane: the last status report of each router",
    )
    js = nc.jetstream()
    try:
        await js.add_stream(config)
    except BadRequestError:  # exists with another configuration: keep it, it still works
        await js.update_stream(config)


class StatusReporter:
    def __init__(
        self,
        nc: NATS,
        subject: str,
        snapshot: Callable[[RouterState], RouterStatus],
        *,
        heartbeat: float = 5.0,
    ) -> None:
        self.nc, self.subject, self.snapshot, self.heartbeat = nc, subject, snapshot, heartbeat
        self._changed = asyncio.Event()
        self.state = RouterState.STARTING

    def changed(self) -> None:
        self._changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.heartbeat)
            self._changed.clear()
            if not stop.is_set():
                await self.publish()

    async def publish(self, state: RouterState | None = None) -> None:
        if state is not None:
            self.state = state
        try:
            await self.nc.publish(self.subject, _ENCODER.encode(self.snapshot(self.state)))
        except Exception as e:  # NATS away: the next heartbeat reports again
            log.warning("cannot publish status (%s)", e)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
