"""What routers read: one entry per hostname in the ROUTER_CONFIG KV bucket.

Router authors in other languages read schemas/json/RouterConfigEntry.json. The private key
is sealed to the routers' X25519 key (`RouterKeySeal`): ephemeral X25519 + HKDF-SHA256 +
AES-256-GCM, with info `certplane/seal-to-router/v1`, salt ephemeral_public ‖ router_public,
and `key_id` as associated data.
"""

from __future__ import annotations

import msgspec

from events.endpoint import EndpointType


class RouterKeySeal(msgspec.Struct, frozen=True, kw_only=True):
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
