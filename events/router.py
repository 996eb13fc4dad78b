"""What routers read (ROUTER_CONFIG KV bucket) and what they report (`<prefix>.router.<id>.status`).

Router authors in other languages read schemas/json/RouterConfigEntry.json. The private key
is sealed to the routers' X25519 key (`RouterKeySeal`): ephemeral X25519 + HKDF-SHA256 +
AES-256-GCM, with info `certplane/seal-to-router/v1`, salt ephemeral_public ‖ router_public,
and `key_id` as associated data.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated

import msgspec
from msgspec import Meta

from events.endpoint import EndpointType


def _doc(text: str) -> Meta:
    """A field's description in the JSON Schemas router authors read."""
    return Meta(description=text)


class RouterKeySeal(msgspec.Struct, frozen=True, kw_only=True):
    """A certificate's private key (PEM) sealed to the routers' X25519 key.

    To open: shared = X25519(router private key, ephemeral_public); key = HKDF-SHA256(shared,
    salt = ephemeral_public || router public key, info = "certplane/seal-to-router/v1", 32
    bytes); PEM = AES-256-GCM(key).decrypt(nonce, ciphertext, associated data = key_id).
    `ephemeral_public` is the sender's key: the projector uses one for all seals, so routers
    may cache the derived key per (ephemeral_public, router_key_id).
    """

    router_key_id: Annotated[
        str,
        _doc(
            "Which router key this is sealed to: the first 16 hex digits of SHA-256 of "
            '"router:" followed by its raw X25519 public key. A router holding another key '
            "cannot open it and NACKs the entry."
        ),
    ]
    key_id: Annotated[
        str,
        _doc("The certificate's data key id; also the associated data of the AEAD."),
    ]
    ephemeral_public: Annotated[bytes, _doc("The sender's raw X25519 public key.")]
    nonce: Annotated[bytes, _doc("The AES-256-GCM nonce (12 bytes).")]
    ciphertext: Annotated[
        bytes,
        _doc("The PKCS#8 PEM private key, encrypted, with the 16-byte GCM tag at its end."),
    ]


class RouterConfigEntry(msgspec.Struct, frozen=True, kw_only=True):
    """Serve `hostname` with this chain (leaf first) and key; `position` is its config version."""

    hostname: Annotated[
        str,
        _doc(
            "The name to serve by SNI: lower case, internationalized names as A-labels "
            "(xn--...). `*.example.com` matches exactly one label in place of the `*`; an exact "
            "name wins over a wildcard. The KV key is this name with `*` written as `_`."
        ),
    ]
    app: Annotated[str, _doc("The app whose upstream gets the requests.")]
    endpoint: Annotated[str, _doc("The certificate's endpoint name in the app.")]
    endpoint_type: Annotated[
        EndpointType,
        _doc(
            "`sni`, or `endpoint` for a legacy SSL Endpoint (it serves the app's domains that no "
            "SNI endpoint claims); routers serve both the same way."
        ),
    ]
    chain_pem: Annotated[
        str,
        _doc("PEM certificates, leaf first, then each issuer; no root (clients have their own)."),
    ]
    fingerprint_sha256: Annotated[str, _doc("SHA-256 of the leaf's DER, hex.")]
    key: Annotated[
        RouterKeySeal | None,
        _doc(
            "The private key, sealed to the routers. null: it could not be released (`problem` "
            "says why); keep serving what was there before for this hostname."
        ),
    ]
    tls_policy: Annotated[
        str,
        _doc("`modern`, the only policy so far: TLS 1.2 and 1.3, ECDHE with AEAD ciphers."),
    ] = "modern"
    position: Annotated[
        int,
        _doc("The log position of the event that last changed this entry: its config version."),
    ] = 0
    problem: Annotated[str, _doc("Why `key` is null; empty otherwise.")] = ""


class ConfigCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """The KV key `_checkpoint`: every entry before it in the bucket's stream reflects the log
    up to `position`. Written after each projected batch, so a router that has applied it
    serves the config of that position (`certplane wait` compares against it)."""

    position: Annotated[
        int, _doc("Every entry stored before this key reflects the log up to here.")
    ]


class Nack(msgspec.Struct, frozen=True, kw_only=True):
    """An entry a router refused (bad PEM, a key it cannot unseal); it keeps the previous one."""

    hostname: Annotated[str, _doc("The entry's hostname.")]
    position: Annotated[int, _doc("The entry's `position` (its version).")]
    reason: Annotated[str, _doc("Why it was refused, for operators.")]


class RouterState(enum.Enum):
    STARTING = "starting"  # loading the initial snapshot
    SERVING = "serving"
    STOPPING = "stopping"  # draining after SIGTERM; no longer counted as live


class RouterStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.router.<router_id>.status` after every config change it applied
    and as a heartbeat; like an xDS ACK, `position` is the config version it now serves."""

    router_id: Annotated[
        str,
        _doc("Stable per router process; also the `<router_id>` token of the subject."),
    ]
    addresses: Annotated[list[str], _doc("URLs it listens on, for operators.")]
    state: Annotated[
        RouterState,
        _doc("`starting` until the first full config is applied; `stopping` while draining."),
    ]
    position: Annotated[int, _doc("The ConfigCheckpoint it has applied (0: none yet).")]
    hostnames: Annotated[int, _doc("How many hostnames it serves.")]
    nacks: Annotated[
        list[Nack],
        _doc("Entries it refused and keeps refusing; empty when all were applied."),
    ] = []
    started_at: Annotated[dt.datetime, _doc("When the process started (UTC).")]
    sent_at: Annotated[dt.datetime, _doc("When this report was sent (UTC).")]
    heartbeat_seconds: Annotated[
        float,
        _doc("It reports at least this often; one silent for three of these is no longer live."),
    ] = 5.0
