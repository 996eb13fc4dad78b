"""Writer authentication: each event carries an HMAC only a gateway can compute.

The hash chain proves nothing against someone who can write to the database and recompute
hashes. So the writer (the gateway, which holds the master key) MACs every event's content
with a key derived from the master key, and puts the MAC in the event's metadata (which the
chain then covers). The sealer, before it signs a tree head over an event, checks the MAC:
an event appended behind the control plane's back is refused, never signed. Auditors do not
need this key: they check signed tree heads.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.domain.ids import uuid_bytes

_INFO = b"certplane/writer-mac/v1"


def writer_key(master_secret: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=_INFO).derive(master_secret)


def _lp(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(4, "big") + raw


def writer_mac(
    key: bytes, stream_id: str, event_id: str | uuid.UUID, command_id: str | uuid.UUID,
    command_index: int,
    type_: str, schema_version: int, data: str,
) -> str:  # fmt: skip
    """Hex HMAC-SHA256 over everything the writer decides except the metadata it goes into."""
    message = (
        _INFO + _lp(stream_id) + uuid_bytes(event_id) + uuid_bytes(command_id)
        + command_index.to_bytes(4, "big", signed=True) + _lp(type_)
        + schema_version.to_bytes(4, "big", signed=True) + _lp(data)
    )  # fmt: skip
    return hmac.new(key, message, hashlib.sha256).hexdigest()
