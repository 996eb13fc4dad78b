"""Writer authentication: each event carries an HMAC only a gateway can compute.

The hash chain proves nothing against someone who can write to the database and recompute
hashes. So the writer (the gateway, which holds the master key) MACs every event's content
with a key derived from the master key, and puts the MAC in the event's metadata (which the
chain then covers). The sealer, before it signs a tree head over an event, checks the MAC:
an event appended behind the control plane's back is refused, never signed. Auditors do not
need this key: they check signed tree heads.
"""

from __future__ import annotations

import functools
import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"certplane/writer-mac/v1"
_BLOCK = 64  # SHA-256's block size


def writer_key(master_secret: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=_INFO).derive(master_secret)


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256 (RFC 2104) with its two keyed states hashed once per key, the constant
    `_INFO` prefix of every message already in the inner one. `hmac.new` redoes both per
    message, which cost twice the rest of the MAC for every event a gateway appends and every
    row the sealer checks; the result is the same bytes (a unit test compares with `hmac`)."""
    block = (hashlib.sha256(key).digest() if len(key) > _BLOCK else key).ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block) + _INFO)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    return inner, outer


def writer_mac(key: bytes, content: bytes) -> str:
    """Hex HMAC-SHA256 of `_INFO ‖ content`: everything the writer decides
    (`event_content`) except the metadata the MAC goes into."""
    inner, outer = _keyed(key)
    h = inner.copy()
    h.update(content)
    o = outer.copy()
    o.update(h.digest())
    return o.hexdigest()
