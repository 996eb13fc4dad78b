"""UUIDs on the command path, without building `uuid.UUID` objects for every event.

Each appended event hashes and MACs its event id and command id; parsing them with
`uuid.UUID` and formatting fresh ids through it showed up at a few percent of the gateway's
time in profiles. The results are the same bytes and the same text.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable

_V4_MASK = ~(0xF000 << 64 | 0xC000 << 48) & (1 << 128) - 1
_V4_BITS = 0x4000 << 64 | 0x8000 << 48


def uuid_bytes(value: str | uuid.UUID) -> bytes:
    """The 16 bytes of a UUID given as text (any form `uuid.UUID` accepts) or as a UUID."""
    if isinstance(value, uuid.UUID):
        return value.bytes
    compact = value.replace("-", "")
    if len(value) == 36 and len(compact) == 32:  # the canonical form, hyphens anywhere as in UUID
        try:
            raw = bytes.fromhex(compact)
        except ValueError:
            raw = b""
        if len(raw) == 16:  # 16 bytes from 32 characters: no whitespace slipped through
            return raw
    return uuid.UUID(value).bytes


def canonical_uuid(value: str) -> str:
    """`str(uuid.UUID(value))`; raises ValueError on anything that is not a UUID."""
    raw = uuid_bytes(value)
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def random_uuid(rng: random.Random) -> str:
    """A version 4 UUID as text from `rng`: unique, not secret (event ids)."""
    h = f"{rng.getrandbits(128) & _V4_MASK | _V4_BITS:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class TimeOrderedIds:
    """Version 7 UUIDs (RFC 9562) as text, increasing within this process: the Unix time
    in milliseconds, then a 12-bit counter for ids of the same millisecond (method 1 of
    section 6.2), then 62 random bits. Event ids are unique, not secret; ordered ones are
    appended at the right edge of the log's unique index on them, where random ones landed
    on a random page of it for every event (Marten gives events sequential ids for the
    same reason)."""

    def __init__(self, rng: random.Random, clock: Callable[[], int] = time.time_ns) -> None:
        self._rng = rng
        self._clock = clock
        self._ms = 0
        self._counter = 0

    def __call__(self) -> str:
        ms = self._clock() // 1_000_000
        if ms <= self._ms:  # the same millisecond, or the clock stepped back: count on
            ms, self._counter = self._ms, self._counter + 1
            if self._counter > 0xFFF:  # 4,096 ids in one millisecond: borrow the next one
                ms, self._counter = ms + 1, 0
        else:
            self._counter = 0
        self._ms = ms
        value = ms << 80 | 0x7 << 76 | self._counter << 64 | 0b10 << 62
        h = f"{value | self._rng.getrandbits(62):032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
