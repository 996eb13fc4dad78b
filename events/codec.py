"""Codecs, built once (STYLE 6), and reading stored events of any schema version.

Old events stay readable forever: a stored row names its type and schema version; when the
version is older than the current class's, the registered upcasters lift the JSON step by
step before it is decoded. A breaking change is a new schema version plus an upcaster here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from events.base import Metadata
from events.replies import CommandReply, QueryReply
from events.union import COMMAND_TYPES, EVENT_TYPES, AnyCommand, AnyEvent, tag_of

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class CommandEnvelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A command on the wire: `id` makes it idempotent; correlation/causation link requests."""

    id: str
    actor: str
    command: AnyCommand
    correlation_id: str | None = None
    causation_id: str | None = None


ENCODER = msgspec.json.Encoder()
COMMAND_DECODER = msgspec.json.Decoder(CommandEnvelope)
EVENT_DECODER = msgspec.json.Decoder(AnyEvent)
METADATA_DECODER = msgspec.json.Decoder(Metadata)
COMMAND_REPLY_DECODER = msgspec.json.Decoder(CommandReply)
QUERY_REPLY_DECODER = msgspec.json.Decoder(QueryReply)

CURRENT_SCHEMA_VERSION: dict[str, int] = {tag_of(c): c.SCHEMA_VERSION for c in EVENT_TYPES}

# A command's `type` on the wire, by the name of its class (which the CLI's subjects end in).
COMMAND_TAGS: dict[str, str] = {c.__name__: tag_of(c) for c in COMMAND_TYPES}
_UNKNOWN_TYPE = re.compile(r"Invalid value '(.*)' - at `\$\.command\.type`$")


def unreadable_command(error: msgspec.DecodeError) -> str:
    """What to tell the sender of a command that could not be decoded. A wrong `type` is
    the likeliest slip of a client written by hand (a class name where the tag goes), so
    the types are listed, and the tag of a class named."""
    message = f"The command could not be read: {error}."
    if str(error).endswith("at `$.command.type`"):
        message += f" A command's type is one of {', '.join(COMMAND_TAGS.values())}"
        given = _UNKNOWN_TYPE.match(str(error))
        if given and given.group(1) in COMMAND_TAGS:
            message += f" ({given.group(1)}'s is {COMMAND_TAGS[given.group(1)]})"
        message += "."
    return message + " Check the field names and types against schemas/json/CommandEnvelope.json."


# (type, from_version) -> function lifting the JSON object to from_version + 1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def encode(obj: object) -> bytes:
    """JSON bytes of any contract Struct."""
    return ENCODER.encode(obj)


def decode_event(type_: str, schema_version: int, data: bytes | str) -> AnyEvent:
    """Decode a stored event, upcasting it first if it was written by an older schema."""
    current = CURRENT_SCHEMA_VERSION.get(type_)
    if current is None:
        raise ValueError(f"unknown event type {type_!r}")
    if schema_version == current:
        event: AnyEvent = EVENT_DECODER.decode(data)
        return event
    obj: dict[str, Any] = msgspec.json.decode(data)
    for version in range(schema_version, current):
        obj = UPCASTERS[(type_, version)](obj)
    obj["type"] = type_
    upcast: AnyEvent = msgspec.convert(obj, AnyEvent)
    return upcast
