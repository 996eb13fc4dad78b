"""`certplane audit:export`: a self-contained bundle that `audit:verify --bundle` checks with
no database: events (every hashed column, exactly as stored), the signed tree heads that
cover them, and the public key."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import msgspec

from services.audit.verify import (
    EVENTS_FILE,
    HEADS_FILE,
    KEY_FILE,
    ROW_ENCODER,
    BundleRow,
    db_heads,
    db_rows,
)

README = """A certplane audit bundle.

events.jsonl      every event of positions 1..{size}, each with the exact stored bytes that
                  were hashed, its prev_hash and hash (the chain)
checkpoints.json  the signed tree heads (RFC 9162 Merkle roots, Ed25519) covering them
public_key.txt    the signing key (base64, raw Ed25519; key id {key_id}): compare it with the
                  one the operator publishes

Check it offline:  certplane audit:verify --bundle .  [--public-key KEY]
"""


@dataclass(frozen=True)
class Exported:
    size: int
    heads: int
    left_out: int  # events up to --until that no checkpoint covers yet


async def export(conn: asyncpg.Connection, directory: Path, until: dt.datetime | None) -> Exported:
    last = await conn.fetchval(
        "select coalesce(max(position), 0) from events where $1::timestamptz is null"
        " or recorded_at <= $1",
        until,
    )
    heads = [h for h in await db_heads(conn) if h.size <= last]
    if not heads:
        raise ValueError(
            "no signed checkpoint covers the log up to then yet: is `certplane projector` "
            "(the sealer) running? It signs within seconds."
        )
    size = heads[-1].size
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / EVENTS_FILE, "wb") as f:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            async for row in db_rows(conn, upto=size):
                f.write(ROW_ENCODER.encode(BundleRow.of(row)) + b"\n")
    (directory / HEADS_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(heads)))
    (directory / KEY_FILE).write_text(heads[-1].public_key + "\n")
    (directory / "README.txt").write_text(README.format(size=size, key_id=heads[-1].key_id))
    return Exported(size=size, heads=len(heads), left_out=last - size)
