"""The routers' X25519 key: the operator gives the private half to every router; projectors
need only the public half (CERTPLANE_ROUTER_PUBLIC_KEY) to seal private keys to it."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.config import Settings
from services.domain.key_envelope import public_bytes


def load_router_private_key(settings: Settings, *, create: bool = False) -> X25519PrivateKey:
    """Read CERTPLANE_ROUTER_KEY_FILE (base64, 32 bytes); created 0600 when `create`."""
    path = Path(settings.router_key_file)
    if not path.exists():
        if not create:
            raise FileNotFoundError(
                f"no router key at {path}: give the router the key file the operator created "
                "(`certplane dev` creates one) with CERTPLANE_ROUTER_KEY_FILE"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        key = X25519PrivateKey.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(key.private_bytes_raw()).decode() + "\n")
        return key
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
        return X25519PrivateKey.from_private_bytes(raw)
    except ValueError as e:
        raise ValueError(f"{path} does not hold a router key (32 bytes of base64)") from e


def router_public_key(settings: Settings) -> bytes:
    if settings.router_public_key:
        return base64.b64decode(settings.router_public_key)
    return public_bytes(load_router_private_key(settings).public_key())
