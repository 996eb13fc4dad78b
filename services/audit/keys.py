"""The sealer's Ed25519 signing key: kept in a file outside the database (0600)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.config import Settings


def load_signing_key(settings: Settings, *, create: bool = False) -> Ed25519PrivateKey:
    path = Path(settings.audit_key_file)
    if not path.exists():
        if not create:
            raise FileNotFoundError(
                f"no audit signing key at {path}: set CERTPLANE_AUDIT_KEY_FILE to the sealer's "
                "key (`certplane dev` creates one)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(key.private_bytes_raw()).decode() + "\n")
        return key
    try:
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(path.read_text().strip()))
    except ValueError as e:
        raise ValueError(f"{path} does not hold an Ed25519 key (32 bytes of base64)") from e


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
