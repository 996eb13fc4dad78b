"""The routers' X25519 key: the operator gives the private half to every router; projectors
need only the public half (CERTPLANE_ROUTER_PUBLIC_KEY) to seal private keys to it."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.config import Settings
from services.domain.key_envelope import public_bytes
from services.key_files import read_or_create


def load_router_private_key(settings: Settings, *, create: bool = False) -> X25519PrivateKey:
    """Read CERTPLANE_ROUTER_KEY_FILE (base64, 32 bytes); created 0600 when `create`."""
    path = Path(settings.router_key_file)
    missing = (
        f"no router key at {path}: give the router the key file the operator created "
        "(`certplane dev` creates one) with CERTPLANE_ROUTER_KEY_FILE"
    )
    return X25519PrivateKey.from_private_bytes(read_or_create(path, create=create, missing=missing))


def router_public_key(settings: Settings) -> bytes:
    if settings.router_public_key:
        return base64.b64decode(settings.router_public_key)
    return public_bytes(load_router_private_key(settings).public_key())
