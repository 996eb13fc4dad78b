"""Secrets kept in files outside the database: 32 random bytes, base64, mode 0600."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from services.config import ConfigError, MissingKeyFile


def read_or_create(path: Path, *, create: bool, missing: str) -> bytes:
    """The 32 bytes in `path`; when absent, create them (0600, never overwriting a file that
    appears meanwhile) if `create`, else raise MissingKeyFile (a FileNotFoundError) with `missing`."""
    if not path.exists():
        if not create:
            raise MissingKeyFile(missing)
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(secret).decode() + "\n")
        return secret
    try:
        secret = base64.b64decode(path.read_text().strip(), validate=True)
    except ValueError as e:
        raise ConfigError(f"{path} does not hold a key (32 bytes of base64)") from e
    if len(secret) != 32:
        raise ConfigError(f"{path} does not hold a key (32 bytes of base64)")
    return secret
