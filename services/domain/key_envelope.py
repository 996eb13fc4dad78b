"""Envelope encryption of private keys (DESIGN invariant 7). Pure computation, no I/O.

Three layers:
- transport: a client seals a key to the gateway's X25519 public key (ECIES: ephemeral
  X25519, HKDF-SHA256, AES-256-GCM), so no command ever carries a key in clear;
- rest: the gateway encrypts the key under a fresh 256-bit data key per certificate
  (AES-256-GCM, the data key id as associated data) and only that ciphertext enters the log;
- custody: data keys are stored wrapped by the master key, outside the log. Deleting a
  wrapped data key (crypto-shredding) leaves the log's ciphertext undecryptable forever.
The master key never reaches the database; the gateway's transport key is derived from it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from events.endpoint import EncryptedKey, SealedKey
from events.router import RouterKeySeal
from services.domain.errors import Rejected

_SEAL_INFO = b"certplane/seal-to-gateway/v1"
_TRANSPORT_INFO = b"certplane/gateway-transport-key/v1"
_WRAP_AAD = b"certplane/data-key/v1:"
_ROUTER_INFO = b"certplane/seal-to-router/v1"
_ROUTER_SENDER_INFO = b"certplane/seal-to-router/sender/v1"


@dataclass(frozen=True)
class MasterKey:
    """32 secret bytes that never enter the database; `key_id` names it without revealing it."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("a master key is exactly 32 bytes (44 characters of base64)")

    @classmethod
    def from_text(cls, text: str) -> MasterKey:
        """Parse the base64 form kept in a file or an environment variable."""
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except ValueError as e:
            raise ValueError("the master key must be 32 bytes encoded as base64") from e

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(32))

    def to_text(self) -> str:
        return base64.b64encode(self.secret).decode()

    @functools.cached_property
    def aead(self) -> AESGCM:
        """AES-GCM under the master key, built once: a rebuild unwraps every data key."""
        return AESGCM(self.secret)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"certplane/master-key-id:" + self.secret).hexdigest()[:16]

    def transport_private_key(self) -> X25519PrivateKey:
        """The gateway's X25519 key, derived so that every gateway with this master agrees."""
        seed = HKDF(hashes.SHA256(), 32, salt=None, info=_TRANSPORT_INFO).derive(self.secret)
        return X25519PrivateKey.from_private_bytes(seed)


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def gateway_key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:16]


def _seal_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=ephemeral + recipient, info=_SEAL_INFO).derive(shared)


def seal_for_gateway(private_key: bytes, gateway_public: bytes) -> SealedKey:
    """Client side: encrypt key bytes so that only the gateway can read them."""
    ephemeral = X25519PrivateKey.generate()
    eph_pub = public_bytes(ephemeral.public_key())
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(gateway_public))
    nonce = os.urandom(12)
    ciphertext = AESGCM(_seal_key(shared, eph_pub, gateway_public)).encrypt(
        nonce, private_key, _SEAL_INFO
    )
    return SealedKey(
        gateway_key_id=gateway_key_id(gateway_public),
        ephemeral_public=eph_pub,
        nonce=nonce,
        ciphertext=ciphertext,
    )


def unseal(sealed: SealedKey, gateway_private: X25519PrivateKey) -> bytes:
    """Gateway side: recover the key bytes, or reject if sealed to another key or altered."""
    recipient = public_bytes(gateway_private.public_key())
    if sealed.gateway_key_id != gateway_key_id(recipient):
        raise Rejected(
            "sealed_key_invalid",
            "The private key was sealed to a different gateway key (the master key changed?): "
            "run the command again so the client fetches the current key.",
        )
    try:
        shared = gateway_private.exchange(
            X25519PublicKey.from_public_bytes(sealed.ephemeral_public)
        )
        key = _seal_key(shared, sealed.ephemeral_public, recipient)
        return AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, _SEAL_INFO)
    except (ValueError, InvalidTag) as e:
        raise Rejected(
            "sealed_key_invalid",
            "The sealed private key could not be opened (corrupted in transit?): send it again.",
        ) from e


@dataclass(frozen=True)
class DataKey:
    """A per-certificate data key; `secret` is held in memory only, `wrapped` is stored."""

    key_id: str
    secret: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> DataKey:
        return cls(str(uuid.uuid4()), AESGCM.generate_key(bit_length=256))

    def wrap(self, master: MasterKey) -> bytes:
        """nonce ‖ AES-GCM(master, data key), bound to the key id."""
        nonce = os.urandom(12)
        aad = _WRAP_AAD + self.key_id.encode()
        return nonce + master.aead.encrypt(nonce, self.secret, aad)

    @classmethod
    def unwrap(cls, key_id: str, wrapped: bytes, master: MasterKey) -> DataKey:
        aad = _WRAP_AAD + key_id.encode()
        return cls(key_id, master.aead.decrypt(wrapped[:12], wrapped[12:], aad))

    def encrypt(self, private_key: bytes) -> EncryptedKey:
        nonce = os.urandom(12)
        ciphertext = AESGCM(self.secret).encrypt(nonce, private_key, self.key_id.encode())
        return EncryptedKey(key_id=self.key_id, nonce=nonce, ciphertext=ciphertext)

    def decrypt(self, encrypted: EncryptedKey) -> bytes:
        """Raises `cryptography.exceptions.InvalidTag` with any other key."""
        return AESGCM(self.secret).decrypt(
            encrypted.nonce, encrypted.ciphertext, encrypted.key_id.encode()
        )


def router_key_id(public: bytes) -> str:
    return hashlib.sha256(b"router:" + public).hexdigest()[:16]


class RouterSealer:
    """Seals certificate keys to the routers' X25519 key, deterministically and cheaply.

    The sender key is static (derived from a secret the projector holds: the master key), so
    the X25519 agreement with the routers' key happens once, not once per certificate: that
    agreement was most of a router_config rebuild. Routers open a seal exactly as an ECIES
    one (their key with the seal's `ephemeral_public`, here the sender's public key). Nothing
    is exposed that was not before: whoever holds the master key can decrypt every data key
    anyway, and whoever holds the router key can open every seal anyway.

    Every seal is then under one AES-GCM key, so a nonce must never serve two plaintexts: it
    is an HMAC of the plaintext under the certificate's data key (as SIV modes do). One
    certificate's key thus always seals to the same bytes, for every hostname it serves and
    in every rebuild (nothing is republished), and two different keys share a nonce only by
    a 96-bit chance.
    """

    def __init__(self, sender_secret: bytes, router_public: bytes) -> None:
        material = HKDF(hashes.SHA256(), 32, salt=router_public, info=_ROUTER_SENDER_INFO)
        sender = X25519PrivateKey.from_private_bytes(material.derive(sender_secret))
        self.sender_public = public_bytes(sender.public_key())
        self.router_public = router_public
        self.router_key_id = router_key_id(router_public)
        shared = sender.exchange(X25519PublicKey.from_public_bytes(router_public))
        salt = self.sender_public + router_public
        self._aead = AESGCM(HKDF(hashes.SHA256(), 32, salt=salt, info=_ROUTER_INFO).derive(shared))

    @classmethod
    def for_master(cls, master: MasterKey, router_public: bytes) -> RouterSealer:
        return cls(master.secret, router_public)

    def seal(self, private_key: bytes, *, key_id: str, derivation_secret: bytes) -> RouterKeySeal:
        """`derivation_secret`: the certificate's data key, which keys the nonce's HMAC."""
        message = key_id.encode() + b"\0" + private_key
        nonce = hmac.digest(derivation_secret, message, "sha256")[:12]  # one-shot: C all through
        return RouterKeySeal(
            router_key_id=self.router_key_id,
            key_id=key_id,
            ephemeral_public=self.sender_public,
            nonce=nonce,
            ciphertext=self._aead.encrypt(nonce, private_key, key_id.encode()),
        )


class RouterSealOpener:
    """Router side of `RouterSealer`: opens seals, one X25519 agreement per sender key.

    Projectors seal every key from one sender key, so a router loading ten thousand
    hostnames derives the AES key once instead of ten thousand times.
    """

    MAX_SENDERS = 64  # bounded: seals from an older, per-certificate-ephemeral scheme

    def __init__(self, router_private: X25519PrivateKey) -> None:
        self._private = router_private
        self._public = public_bytes(router_private.public_key())
        self._aeads: dict[bytes, AESGCM] = {}

    def open(self, sealed: RouterKeySeal) -> bytes:
        """The key bytes; raises `InvalidTag` with any other router key or a tampered seal."""
        aead = self._aeads.get(sealed.ephemeral_public)
        if aead is None:
            sender = X25519PublicKey.from_public_bytes(sealed.ephemeral_public)
            shared = self._private.exchange(sender)
            salt = sealed.ephemeral_public + self._public
            aead = AESGCM(HKDF(hashes.SHA256(), 32, salt=salt, info=_ROUTER_INFO).derive(shared))
            if len(self._aeads) >= self.MAX_SENDERS:
                self._aeads.clear()
            self._aeads[sealed.ephemeral_public] = aead
        return aead.decrypt(sealed.nonce, sealed.ciphertext, sealed.key_id.encode())


def open_router_seal(sealed: RouterKeySeal, router_private: X25519PrivateKey) -> bytes:
    """Open one seal (tests, tools); a router keeps a `RouterSealOpener`."""
    return RouterSealOpener(router_private).open(sealed)
