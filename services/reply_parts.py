"""Replies larger than one NATS message, sent in numbered parts.

A NATS server refuses a message over its `max_payload` (1 MB by default). Query replies grow
with the data: `certplane apps` on a platform of 20,000 apps, or `domains` for an app of
6,000, is more than that, and a refused reply reaches nobody: the client would only time
out. So the gateway sends such a reply as parts, in order, each with the header
`Certplane-Part: i/n` (NATS delivers one connection's messages to a subscriber in the order
sent), and `request_in_parts` collects them on an inbox of its own. `nc.request` cannot: it
takes the first message to a request's inbox and drops the rest. A reply that fits is one
message with no header, as any NATS client expects.
"""

from __future__ import annotations

from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

PART_HEADER = "Certplane-Part"
# Room for the header block and the PUB line, within the server's limit.
_HEADROOM = 512


def split(payload: bytes, max_payload: int) -> list[tuple[dict[str, str] | None, bytes]]:
    """(headers, data) messages that carry `payload` within `max_payload` each."""
    if len(payload) <= max_payload:
        return [(None, payload)]
    size = max(max_payload - _HEADROOM, 1)
    chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
    return [({PART_HEADER: f"{i}/{len(chunks)}"}, c) for i, c in enumerate(chunks, start=1)]


async def respond_in_parts(nc: NATS, reply_to: str, payload: bytes) -> None:
    for headers, data in split(payload, nc.max_payload):
        await nc.publish(reply_to, data, headers=headers)


async def request_in_parts(nc: NATS, subject: str, payload: bytes, wait: float) -> bytes:
    """One request whose reply may come in parts; raises nats.errors.NoRespondersError or
    nats.errors.TimeoutError as `nc.request` does."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(subject, payload, reply=inbox)
        first = await sub.next_msg(timeout=wait)
        if _no_responders(first):
            raise nats.errors.NoRespondersError
        part = (first.headers or {}).get(PART_HEADER)
        if part is None:
            return bytes(first.data)
        count = int(part.split("/", 1)[1])
        chunks = [bytes(first.data)]
        for expected in range(2, count + 1):
            msg = await sub.next_msg(timeout=wait)
            if (msg.headers or {}).get(PART_HEADER) != f"{expected}/{count}":
                # NATS keeps one connection's messages in order, but drops some for a slow
                # consumer: ask again, as after a lost reply
                raise nats.errors.TimeoutError
            chunks.append(bytes(msg.data))
        return b"".join(chunks)
    finally:
        await sub.unsubscribe()


def _no_responders(msg: Any) -> bool:
    return not msg.data and (msg.headers or {}).get("Status") == "503"
