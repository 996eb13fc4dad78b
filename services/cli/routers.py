"""`certplane routers` and `certplane wait`: which routers serve which config position."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from dataclasses import dataclass

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from events.router import RouterStatus
from services.cli import output
from services.config import Settings
from services.domain.convergence import Behind, is_live, not_applied
from services.router.status import STATUS_DECODER
from services.subjects import Subjects


@dataclass(frozen=True)
class Seen:
    status: RouterStatus
    at: dt.datetime  # when the report reached NATS


async def last_reports(nc: NATS, settings: Settings) -> dict[str, Seen]:
    """Every router's last report, from the stream that keeps them."""
    js = nc.jetstream()
    subject = Subjects(settings.prefix).all_router_statuses()
    try:
        info = await js.stream_info(settings.router_status_stream)
    except NotFoundError:
        return {}
    if not info.state.messages:
        return {}
    sub = await js.subscribe(
        subject,
        stream=settings.router_status_stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
    )
    seen: dict[str, Seen] = {}
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except nats.errors.TimeoutError:
                break
            _record(seen, msg.data, msg.metadata.timestamp)
            if msg.metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return seen


def _record(seen: dict[str, Seen], data: bytes, at: dt.datetime) -> None:
    try:
        status = STATUS_DECODER.decode(data)
    except msgspec.DecodeError:
        return  # not a report this version understands: ignore rather than fail the listing
    seen[status.router_id] = Seen(status, at)


def live(seen: dict[str, Seen], now: dt.datetime | None = None) -> list[RouterStatus]:
    now = now or dt.datetime.now(dt.UTC)
    return [s.status for s in seen.values() if is_live(s.status, s.at, now)]


async def wait_for_routers(
    nc: NATS, settings: Settings, position: int, seconds: float
) -> tuple[list[RouterStatus], list[Behind]]:
    """Wait until every live router has applied `position`; (live routers, those behind)."""
    updates: asyncio.Queue[tuple[bytes, dt.datetime]] = asyncio.Queue()

    async def on_report(msg: Msg) -> None:
        await updates.put((msg.data, dt.datetime.now(dt.UTC)))

    sub = await nc.subscribe(Subjects(settings.prefix).all_router_statuses(), cb=on_report)
    try:
        seen = await last_reports(nc, settings)  # after subscribing: no report falls between
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            routers = live(seen)
            behind = not_applied(routers, position)
            if not behind or loop.time() >= deadline:
                return routers, behind
            with contextlib.suppress(TimeoutError):
                data, at = await asyncio.wait_for(updates.get(), deadline - loop.time())
                _record(seen, data, at)
    finally:
        await sub.unsubscribe()


def print_wait_result(
    position: int, routers: list[RouterStatus], behind: list[Behind], *, quiet: bool = False
) -> bool:
    """Say the outcome as a person reads it; True when every live router serves `position`.
    `quiet` (under --json) keeps stdout for JSON: only problems are said, on stderr."""
    if not routers:
        output.warn(
            f"No router is live, so none serves position {position} yet "
            "(start one with `certplane router`)."
        )
        return True
    if not behind:
        if not quiet:
            print(f"Position {position} is served by all {len(routers)} live router(s).")
        return True
    names = "; ".join(f"{b.router_id} {b.reason}" for b in behind)
    output.warn(
        f"{len(behind)} of {len(routers)} live router(s) do not serve position {position} yet: "
        f"{names}. See `certplane routers`."
    )
    return False


def routers_table(seen: dict[str, Seen], head: int | None, now: dt.datetime) -> str:
    rows = []
    for s in sorted(seen.values(), key=lambda s: s.status.router_id):
        st = s.status
        if not is_live(st, s.at, now):
            continue
        last = st.nacks[-1] if st.nacks else None
        rows.append(
            [
                st.router_id,
                " ".join(st.addresses),
                str(st.position),
                str(max(head - st.position, 0)) if head is not None else "?",
                str(st.hostnames),
                output.ago(s.at, now),
                f"{last.hostname} @{last.position}: {last.reason}" if last else "",
            ]
        )
    return output.table(
        ["Id", "Address", "Applied", "Lag", "Hosts", "Last seen", "Last NACK"], rows
    )
