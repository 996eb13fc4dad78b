"""Signed tree heads: what the sealer publishes on `<prefix>.audit.checkpoints` and what
`certplane audit:prove` / `audit:consistency` read from files.

The signed message is the UTF-8 text `certplane-tree-head/v1\n{size}\n{root_hash}\n{signed_at}\n`
(root_hash in lower-case hex, signed_at as `YYYY-MM-DDTHH:MM:SS.ffffffZ`), signed with
Ed25519. The tree is RFC 9162's over the log: leaf i is the chain hash of position i + 1.
"""

from __future__ import annotations

import datetime as dt

import msgspec


class TreeHead(msgspec.Struct, frozen=True, kw_only=True):
    size: int  # the tree covers positions 1..size
    root_hash: str  # hex
    signed_at: dt.datetime
    key_id: str  # hex SHA-256 of the raw public key, first 16 characters
    public_key: str  # base64 of the raw 32-byte Ed25519 public key
    signature: str  # base64


class InclusionProof(msgspec.Struct, frozen=True, kw_only=True):
    """`audit:prove`: position `position` is leaf `position - 1` of the tree of `checkpoint`."""

    position: int
    event_hash: str  # hex: the chain hash of that position (the leaf's data)
    leaf_hash: str  # hex: H(0x00 ‖ event_hash)
    proof: list[str]  # hex, RFC 9162 order
    checkpoint: TreeHead
