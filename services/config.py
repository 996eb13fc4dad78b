"""Settings from the environment, read once at a service's start."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/certplane"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class ConfigError(ValueError):
    """A CERTPLANE_* variable (or a file it names) is wrong; the message names it and the fix.

    Services and the CLI report it as a usage error (exit 2), never as a traceback."""


class MissingKeyFile(ConfigError, FileNotFoundError):
    """A key file this process needs is absent and must not be created here."""


def redact(url: str) -> str:
    """The URL as messages, logs and banners show it: without its password, and without a
    NATS token (`nats://TOKEN@host`, the user part when there is no password)."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    name, colon, _ = userinfo.partition(":")
    if colon:
        user = f"{name}:***"
    else:
        user = "***" if parts.scheme in ("nats", "tls", "ws", "wss") else name
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def state_dir() -> Path:
    """Where certplane keeps local state: $XDG_STATE_HOME/certplane (~/.local/state/certplane)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(os.environ.get("CERTPLANE_STATE_DIR") or Path(base) / "certplane")


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    nats_url: str = DEFAULT_NATS_URL
    prefix: str = "certplane"
    service_role: str = "certplane_service"
    master_key: str = field(default="", repr=False)
    master_key_file: Path = field(default_factory=lambda: state_dir() / "master.key")
    extra_ca_file: str = ""
    trust_system_store: bool = True
    router_bucket: str = "ROUTER_CONFIG"
    router_status_stream: str = "ROUTER_STATUS"  # keeps each router's last status report
    dns_zone: str = "certplanedns.example"
    router_public_key: str = ""  # base64 X25519; else derived from router_key_file
    router_key_file: Path = field(default_factory=lambda: state_dir() / "router.key")
    audit_key_file: Path = field(default_factory=lambda: state_dir() / "audit-signing.key")
    audit_public_key: str = ""  # base64 Ed25519: the key auditors trust (pinning)
    audit_seal_every: int = 1000  # the sealer signs a tree head every N events...
    audit_seal_seconds: float = 2.0  # ...or when this long has passed with events unsealed
    bundle_workers: int = -1  # processes a gateway validates bundles in; -1: one per spare core

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        return cls(
            database_url=e.get("CERTPLANE_DATABASE_URL", DEFAULT_DATABASE_URL),
            nats_url=e.get("CERTPLANE_NATS_URL", DEFAULT_NATS_URL),
            prefix=e.get("CERTPLANE_PREFIX", "certplane"),
            service_role=e.get("CERTPLANE_SERVICE_ROLE", "certplane_service"),
            master_key=e.get("CERTPLANE_MASTER_KEY", ""),
            master_key_file=Path(e.get("CERTPLANE_MASTER_KEY_FILE") or state_dir() / "master.key"),
            extra_ca_file=e.get("CERTPLANE_EXTRA_CA_FILE", ""),
            trust_system_store=_flag(e, "CERTPLANE_TRUST_SYSTEM_STORE", True),
            router_bucket=e.get("CERTPLANE_ROUTER_BUCKET", "ROUTER_CONFIG"),
            router_status_stream=e.get("CERTPLANE_ROUTER_STATUS_STREAM", "ROUTER_STATUS"),
            dns_zone=e.get("CERTPLANE_DNS_ZONE", "certplanedns.example"),
            router_public_key=e.get("CERTPLANE_ROUTER_PUBLIC_KEY", ""),
            router_key_file=Path(e.get("CERTPLANE_ROUTER_KEY_FILE") or state_dir() / "router.key"),
            audit_key_file=Path(
                e.get("CERTPLANE_AUDIT_KEY_FILE") or state_dir() / "audit-signing.key"
            ),
            audit_public_key=e.get("CERTPLANE_AUDIT_PUBLIC_KEY", ""),
            audit_seal_every=int(_number(e, "CERTPLANE_AUDIT_SEAL_EVERY", "1000", int, 1)),
            audit_seal_seconds=_number(e, "CERTPLANE_AUDIT_SEAL_SECONDS", "2", float, 0.01),
            bundle_workers=_workers(e.get("CERTPLANE_BUNDLE_WORKERS", "auto")),
        )

    def environment(self) -> dict[str, str]:
        """These settings as the CERTPLANE_* variables `from_env` reads (for child processes)."""
        return {
            "CERTPLANE_DATABASE_URL": self.database_url,
            "CERTPLANE_NATS_URL": self.nats_url,
            "CERTPLANE_PREFIX": self.prefix,
            "CERTPLANE_SERVICE_ROLE": self.service_role,
            "CERTPLANE_MASTER_KEY": self.master_key,
            "CERTPLANE_MASTER_KEY_FILE": str(self.master_key_file),
            "CERTPLANE_EXTRA_CA_FILE": self.extra_ca_file,
            "CERTPLANE_TRUST_SYSTEM_STORE": "1" if self.trust_system_store else "0",
            "CERTPLANE_ROUTER_BUCKET": self.router_bucket,
            "CERTPLANE_ROUTER_STATUS_STREAM": self.router_status_stream,
            "CERTPLANE_DNS_ZONE": self.dns_zone,
            "CERTPLANE_ROUTER_PUBLIC_KEY": self.router_public_key,
            "CERTPLANE_ROUTER_KEY_FILE": str(self.router_key_file),
            "CERTPLANE_AUDIT_KEY_FILE": str(self.audit_key_file),
            "CERTPLANE_AUDIT_PUBLIC_KEY": self.audit_public_key,
            "CERTPLANE_AUDIT_SEAL_EVERY": str(self.audit_seal_every),
            "CERTPLANE_AUDIT_SEAL_SECONDS": str(self.audit_seal_seconds),
            "CERTPLANE_BUNDLE_WORKERS": "auto"
            if self.bundle_workers < 0
            else str(self.bundle_workers),
        }


def _number(
    env: Mapping[str, str],
    name: str,
    default: str,
    kind: type[int] | type[float],
    minimum: float,
) -> float:
    text = env.get(name, default)
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name}={text!r}: give {what} of at least {minimum} (default {default})")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    text = env.get(name, "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={text!r}: give 1 or 0 (also true/false, yes/no, on/off)")


def _workers(text: str) -> int:
    if text.strip().lower() in ("", "auto"):
        return -1
    try:
        count = int(text)
    except ValueError:
        count = -2
    if count < 0:
        raise ConfigError(
            f"CERTPLANE_BUNDLE_WORKERS={text!r}: give a number of processes (0 validates "
            "bundles in the gateway process itself) or `auto` (one per core beyond the first)"
        )
    return count
