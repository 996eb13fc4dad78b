"""Signing and checking tree heads (Ed25519). Pure computation: keys come in as arguments."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from events.audit import TreeHead

_PREFIX = "certplane-tree-head/v1"


def _stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def message(size: int, root: bytes, signed_at: dt.datetime) -> bytes:
    return f"{_PREFIX}\n{size}\n{root.hex()}\n{_stamp(signed_at)}\n".encode()


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def sign(key: Ed25519PrivateKey, size: int, root: bytes, signed_at: dt.datetime) -> TreeHead:
    signed_at = dt.datetime.fromisoformat(_stamp(signed_at))  # what the message says, exactly
    raw = public_raw(key)
    return TreeHead(
        size=size,
        root_hash=root.hex(),
        signed_at=signed_at,
        key_id=key_id(raw),
        public_key=base64.b64encode(raw).decode(),
        signature=base64.b64encode(key.sign(message(size, root, signed_at))).decode(),
    )


def signature_problem(head: TreeHead, trusted: bytes | None = None) -> str | None:
    """Why `head` cannot be trusted (None: it can). `trusted` pins the public key; without
    it the key the head names is used (check its `key_id` against the published one)."""
    try:
        raw = base64.b64decode(head.public_key, validate=True)
        signature = base64.b64decode(head.signature, validate=True)
        root = bytes.fromhex(head.root_hash)
    except ValueError:
        return "it is not well formed (base64/hex)"
    if trusted is not None and raw != trusted:
        return f"it is signed by key {head.key_id}, not by the trusted key {key_id(trusted)}"
    if key_id(raw) != head.key_id:
        return "its key_id does not name its public key"
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(
            signature, message(head.size, root, head.signed_at)
        )
    except (InvalidSignature, ValueError):
        return "its signature does not verify (forged or altered)"
    return None
