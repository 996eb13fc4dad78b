"""The canonical bytes of what the writer decides about an event, shared by the hash chain
(`services/storage/hash_chain.py`, which adds the metadata) and the writer MAC
(`services/domain/writer_mac.py`). Both cover the same fields in the same layout, so the
gateway builds them once per event and the sealer once per row it checks.

Fields are length-prefixed or fixed-width, so no two different events share canonical bytes.
"""

from __future__ import annotations

import struct
import uuid

from services.domain.ids import uuid_bytes

_INT = struct.Struct(">i").pack  # signed 4-byte big-endian
_LEN = struct.Struct(">I").pack  # a length prefix


def event_content(
    stream_id: str,
    event_id: str | uuid.UUID,
    command_id: str | uuid.UUID,
    command_index: int,
    type_: str,
    schema_version: int,
    data: str,
) -> bytes:
    """stream ‖ event id (16) ‖ command id (16) ‖ command index (4) ‖ type ‖ schema version (4)
    ‖ data, the texts UTF-8 and length-prefixed (4), integers signed big-endian."""
    stream, type_bytes, data_bytes = stream_id.encode(), type_.encode(), data.encode()
    return b"".join((
        _LEN(len(stream)), stream, uuid_bytes(event_id), uuid_bytes(command_id),
        _INT(command_index), _LEN(len(type_bytes)), type_bytes, _INT(schema_version),
        _LEN(len(data_bytes)), data_bytes,
    ))  # fmt: skip
