"""Base classes of the contract: every command, event and reply derives from one of these.

Settings live here once (STYLE 4): frozen, keyword-only, tagged by a stable `type` string
that never comes from a Python import path. Commands forbid unknown fields (a typo in a
client is an error); events tolerate them (an old reader meets a newer writer).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec


class Command(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True
):
    """An imperative request."""


class AppCommand(Command):
    """A request about one app; `app` names it (and the command's NATS subject)."""

    app: str


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A past-tense fact in the log. `SCHEMA_VERSION` grows when the shape changes."""

    SCHEMA_VERSION: ClassVar[int] = 1


class Reply(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """What the control plane answers to a command or a query."""


class Metadata(msgspec.Struct, frozen=True, kw_only=True):
    """Stored beside every event: who asked, why, and the trace it belongs to."""

    command_id: str
    actor: str
    correlation_id: str
    causation_id: str
    traceparent: str = ""
    warnings: list[str] = []  # what the reply warned of, so a repeated command answers the same
    writer_mac: str = (
        ""  # hex HMAC by the gateway (services/domain/writer_mac.py); the sealer checks it
    )
