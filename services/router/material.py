"""Turning a ROUTER_CONFIG entry into what a router can serve, or the reason it cannot.

The checks a router makes before it replaces what it serves for a hostname: the key is
there, sealed to this router's key, opens, and matches the chain's leaf; the chain parses.
A failure is a NACK (the previous entry stays served), never a half-loaded host.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from events.endpoint import EndpointType
from events.router import RouterConfigEntry
from services.domain.key_envelope import RouterSealOpener, public_bytes, router_key_id


class Unloadable(Exception):
    """An entry this router refuses; `reason` is what the NACK says (never key material)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, eq=False)
class Material:
    """One certificate and its key, shared by every hostname that serves it."""

    fingerprint_sha256: str
    key_id: str
    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    not_after: dt.datetime

    @property
    def identity(self) -> tuple[str, str]:
        return (self.fingerprint_sha256, self.key_id)


@dataclass(frozen=True)
class Route:
    """What a router serves for one hostname."""

    hostname: str
    app: str
    endpoint: str
    endpoint_type: EndpointType
    position: int
    material: Material


class MaterialLoader:
    """Opens sealed keys with the router key; one X25519 agreement per certificate."""

    def __init__(self, router_key: X25519PrivateKey) -> None:
        self._opener = RouterSealOpener(router_key)
        self._key_id = router_key_id(public_bytes(router_key.public_key()))
        self._cache: dict[tuple[str, str], Material] = {}

    def route(self, entry: RouterConfigEntry) -> Route:
        return Route(
            hostname=entry.hostname,
            app=entry.app,
            endpoint=entry.endpoint,
            endpoint_type=entry.endpoint_type,
            position=entry.position,
            material=self.material(entry),
        )

    def material(self, entry: RouterConfigEntry) -> Material:
        seal = entry.key
        if seal is None:
            raise Unloadable(f"no private key in the entry ({entry.problem or 'none given'})")
        cached = self._cache.get((entry.fingerprint_sha256, seal.key_id))
        if cached is not None and cached.chain_pem == entry.chain_pem.encode():
            return cached
        if seal.router_key_id != self._key_id:
            raise Unloadable(
                f"the key is sealed to router key {seal.router_key_id}, this router holds "
                f"{self._key_id}: give it the operator's current router key"
            )
        try:
            key_pem = self._opener.open(seal)
        except (InvalidTag, ValueError) as e:
            raise Unloadable("the sealed key does not open with this router's key") from e
        material = _validated(entry, seal.key_id, key_pem)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[material.identity] = material
        return material

    def forget(self, keep: set[tuple[str, str]]) -> None:
        """Drop cached material no route uses any more (removed certificates)."""
        self._cache = {k: v for k, v in self._cache.items() if k in keep}


def _validated(entry: RouterConfigEntry, key_id: str, key_pem: bytes) -> Material:
    chain_pem = entry.chain_pem.encode()
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as e:
        raise Unloadable("the chain is not valid PEM certificates") from e
    leaf = chain[0]
    if leaf.fingerprint(hashes.SHA256()).hex() != entry.fingerprint_sha256.replace(":", "").lower():
        raise Unloadable("the chain's leaf does not have the entry's fingerprint")
    try:
        key = serialization.load_pem_private_key(
            key_pem, password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError) as e:
        raise Unloadable("the unsealed private key does not parse") from e
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise Unloadable("the private key does not match the chain's leaf certificate")
    return Material(
        fingerprint_sha256=entry.fingerprint_sha256,
        key_id=key_id,
        chain_pem=chain_pem,
        key_pem=key_pem,
        not_after=leaf.not_valid_after_utc,
    )


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
