"""The error families (STYLE 10): one root; `Rejected` for bad input, the rest transient.

A `Rejected` carries a stable `code` clients can branch on and a `message` a person can act
on: it names what was wrong and how to fix it. Messages never contain key material.
"""

from __future__ import annotations


class CertplaneError(Exception):
    """Root of every error certplane raises on purpose."""


class Rejected(CertplaneError):
    """Bad input or a refused request: nothing was appended."""

    def __init__(self, code: str, message: str, **details: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class KeyMismatch(Rejected):
    def __init__(self, message: str, **details: str) -> None:
        super().__init__("key_mismatch", message, **details)


class ChainIncomplete(Rejected):
    def __init__(self, message: str, **details: str) -> None:
        super().__init__("chain_broken", message, **details)


class ConcurrencyConflict(CertplaneError):
    """A stream moved on since it was read; the caller re-reads and decides again."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream} is at version {actual}, expected {expected}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class Unavailable(CertplaneError):
    """A dependency (Postgres, NATS) cannot be reached right now; retrying may help."""

    def __init__(self, message: str, *, url: str = "") -> None:
        super().__init__(message)
        self.url = url
