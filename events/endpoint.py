"""SSL endpoints: a certificate chain and its (encrypted) private key, serving some domains.

Private keys never travel or rest in clear (DESIGN invariant 7): a client seals the key to
the gateway's public transport key (`SealedKey`); the gateway re-encrypts it under a fresh
per-certificate data key (`EncryptedKey`) before it enters an event.
"""

from __future__ import annotations

import datetime as dt
import enum

import msgspec

from events.base import AppCommand, Event


class EndpointType(enum.Enum):
    SNI = "sni"  # many per app; the router picks by SNI
    ENDPOINT = "endpoint"  # the legacy one-per-app SSL Endpoint add-on


class SealedKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A private key sealed by the client to the gateway (X25519 + HKDF-SHA256 + AES-256-GCM)."""

    gateway_key_id: str
    ephemeral_public: bytes
    nonce: bytes
    ciphertext: bytes


class EncryptedKey(msgspec.Struct, frozen=True, kw_only=True):
    """A private key encrypted with a data key that lives outside the log (crypto-shredding)."""

    key_id: str
    nonce: bytes
    ciphertext: bytes
    algorithm: str = "AES-256-GCM"


class CertificateFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What certs:info shows: plain values parsed once from the leaf and its chain."""

    subject: str
    issuer: str
    common_name: str
    sans: list[str]
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint_sha256: str
    serial: str
    key_type: str
    key_bits: int
    trusted: bool
    self_signed: bool
    chain_fingerprints: list[str] = []


class AddCert(AppCommand, tag="cert.add"):
    """Upload a chain (files as given: PEM, DER or mixed) and the sealed private key."""

    certificates: list[bytes]
    key: SealedKey
    endpoint_type: EndpointType = EndpointType.SNI
    domains: list[str] = []
    bypass: bool = False


class UpdateCert(AppCommand, tag="cert.update"):
    certificates: list[bytes]
    key: SealedKey
    name: str | None = None
    bypass: bool = False


class RemoveCert(AppCommand, tag="cert.remove"):
    name: str | None = None


class DestroyEndpoint(AppCommand, tag="endpoint.destroy"):
    name: str


class CertAdded(Event, tag="cert.added"):
    app: str
    endpoint: str
    endpoint_type: EndpointType
    certificate: CertificateFacts
    chain_pem: str
    key: EncryptedKey
    domains: list[str] = []


class CertUpdated(Event, tag="cert.updated"):
    """The endpoint serves a new chain and key; the previous data key was destroyed.
    `reassigned`: hostnames it served that the new certificate does not cover, each with the
    endpoint that serves it from now on (another whose certificate covers it); absent in
    events written before it existed."""

    app: str
    endpoint: str
    certificate: CertificateFacts
    chain_pem: str
    key: EncryptedKey
    shredded_key_ids: list[str] = []
    reassigned: dict[str, str] = {}


class CertRemoved(Event, tag="cert.removed"):
    """The endpoint is gone and its data key destroyed. `reassigned` maps each hostname it
    served to the endpoint that serves it from now on (the newest other SNI certificate that
    covers it); a hostname it does not list is left without one (a legacy SSL Endpoint, if
    the app has one, then serves it). Absent in events written before it existed."""

    app: str
    endpoint: str
    shredded_key_ids: list[str] = []
    reassigned: dict[str, str] = {}


class EndpointDestroyed(Event, tag="endpoint.destroyed"):
    """As `CertRemoved`, for the DestroyEndpoint command."""

    app: str
    endpoint: str
    shredded_key_ids: list[str] = []
    reassigned: dict[str, str] = {}
