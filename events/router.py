"""What routers read (ROUTER_CONFIG KV bucket) and what they report (`<prefix>.router.<id>.status`).

Router authors in other languages read schemas/json/RouterConfigEntry.json. The private key
is sealed to the routers' X25519 key (`RouterKeySeal`): ephemeral X25519 + HKDF-SHA256 +
AES-256-GCM, with info `certplane/seal-to-router/v1`, salt ephemeral_public ‖ router_public,
and `key_id` as associated data.
"""

from __future__ import annotations

import datetime as dt
import enum

import msgspec

from events.endpoint import EndpointType


class RouterKeySeal(msgspec.Struct, frozen=True, kw_only=True):
    """A certificate's private key (PEM) sealed to the routers' X25519 key.

    To open: shared = X25519(router private key, ephemeral_public); key = HKDF-SHA256(shared,
    salt = ephemeral_public || router public key, info = "certplane/seal-to-router/v1", 32
    bytes); PEM = AES-256-GCM(key).decrypt(nonce, ciphertext, associated data = key_id).
    `ephemeral_public` is the sender's key: the projector uses one for all seals, so routers
    may cache the derived key per (ephemeral_public, router_key_id).
    """

    router_key_id: str
    key_id: str  # the certificate's data key id; also the associated data of the AEAD
    ephemeral_public: bytes
    nonce: bytes
    ciphertext: bytes


class RouterConfigEntry(msgspec.Struct, frozen=True, kw_only=True):
    """Serve `hostname` with this chain (leaf first) and key; `position` is its config version."""

    hostname: str
    app: str
    endpoint: str
    endpoint_type: EndpointType
    chain_pem: str
    fingerprint_sha256: str
    key: RouterKeySeal | None  # None: the key could not be released (see `problem`)
    tls_policy: str = "modern"  # TLS 1.2 and 1.3 only, curated ciphers, same for every app
    position: int = 0
    problem: str = ""


class ConfigCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """The KV key `_checkpoint`: every entry before it in the bucket's stream reflects the log
    up to `position`. Written after each projected batch, so a router that has applied it
    serves the config of that position (`certplane wait` compares against it)."""

    position: int


class Nack(msgspec.Struct, frozen=True, kw_only=True):
    """An entry a router refused (bad PEM, a key it cannot unseal); it keeps the previous one."""

    hostname: str
    position: int
    reason: str


class RouterState(enum.Enum):
    STARTING = "starting"  # loading the initial snapshot
    SERVING = "serving"
    STOPPING = "stopping"  # draining after SIGTERM; no longer counted as live


class RouterStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.router.<router_id>.status` after every config change it applied
    and as a heartbeat; like an xDS ACK, `position` is the config version it now serves."""

    router_id: str
    addresses: list[str]
    state: RouterState
    position: int  # the ConfigCheckpoint it has applied (0: none yet)
    hostnames: int
    nacks: list[Nack] = []
    started_at: dt.datetime
    sent_at: dt.datetime
    heartbeat_seconds: float = 5.0
