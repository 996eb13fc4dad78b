"""Which routers are live, and which have not applied a config position yet. Pure.

A router is live while its last report is recent (three heartbeats) and it is not stopping.
It has applied position P when its ConfigCheckpoint is at least P and it refused no entry
of P (a NACK at P means P's change is not what it serves).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from events.router import RouterState, RouterStatus

MISSED_HEARTBEATS = 3


def is_live(status: RouterStatus, seen_at: dt.datetime, now: dt.datetime) -> bool:
    """`seen_at` is when the report arrived (the server's clock, not the router's)."""
    if status.state is RouterState.STOPPING:
        return False
    return (now - seen_at).total_seconds() <= MISSED_HEARTBEATS * status.heartbeat_seconds


@dataclass(frozen=True)
class Behind:
    router_id: str
    reason: str


def not_applied(statuses: Iterable[RouterStatus], position: int) -> list[Behind]:
    """The routers among `statuses` that do not serve `position` yet, and why."""
    behind = []
    for s in sorted(statuses, key=lambda s: s.router_id):
        refused = [n for n in s.nacks if n.position == position]
        if refused:
            detail = "; ".join(f"{n.hostname}: {n.reason}" for n in refused)
            behind.append(Behind(s.router_id, f"refused it ({detail})"))
        elif s.state is RouterState.STARTING or s.position < position:
            behind.append(Behind(s.router_id, f"at position {s.position}"))
    return behind
