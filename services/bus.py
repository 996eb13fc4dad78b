"""Connecting to NATS the way every long-running certplane service must."""

from __future__ import annotations

import logging
from typing import Any

import nats
from nats.aio.client import Client as NATS

log = logging.getLogger("certplane.bus")


async def connect_nats(url: str, name: str, **kwargs: Any) -> NATS:
    """Connect with endless reconnects: a NATS restart must not end a long-running service."""

    async def on_error(e: Exception) -> None:
        log.warning("nats: %s", e)

    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        **kwargs,
    )
