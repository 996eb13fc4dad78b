"""The sealer's Ed25519 signing key: kept in a file outside the database (0600)."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.config import Settings
from services.key_files import read_or_create


def load_signing_key(settings: Settings, *, create: bool = False) -> Ed25519PrivateKey:
    path = Path(settings.audit_key_file)
    missing = (
        f"no audit signing key at {path}: set CERTPLANE_AUDIT_KEY_FILE to the sealer's key "
        "(`certplane dev` creates one)"
    )
    return Ed25519PrivateKey.from_private_bytes(
        read_or_create(path, create=create, missing=missing)
    )


def trusted_public_key(settings: Settings, given: str | None = None) -> bytes | None:
    """The public key an auditor pins: --public-key, else CERTPLANE_AUDIT_PUBLIC_KEY (base64
    or a file holding it); None trusts the key the checkpoints name (say its id)."""
    text = given or settings.audit_public_key
    if not text:
        return None
    if Path(text).exists():
        text = Path(text).read_text().strip()
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 32:
        raise ValueError("an audit public key is 32 bytes of base64 (Ed25519)")
    return raw
